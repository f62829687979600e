"""The flake8 front end: flake8's tree in, ``(line, col, "AMP0NN message", type)`` out."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, ClassVar, Iterator

from . import __version__
from .engine import PRECISIONS, LintOptions, lint_tree, mentions_torch
from .rules import ALL_RULES

AUTO = "auto"


class AmpChecker:
    name = "flake8-amp"
    version = __version__

    options: ClassVar[LintOptions] = LintOptions()
    #: False when the run's --select / --extend-select cannot report any AMP code: then there is no work
    selected: ClassVar[bool] = True

    def __init__(self, tree: ast.Module, lines: list[str]) -> None:
        self.tree = tree
        self.lines = lines

    @classmethod
    def add_options(cls, parser: Any) -> None:
        parser.add_option(
            "--amp-precision",
            default=AUTO,
            choices=(AUTO, *PRECISIONS),
            parse_from_config=True,
            help="the low-precision format the code trains in: fp16, bf16, or auto (infer it per module from "
            "its autocast dtypes and casts). In bf16 code the float16-range rules (AMP007, AMP008, "
            "AMP016) stay quiet. (Default: %(default)s)",
        )
        # Opinionated rules are reported only when selected explicitly (--extend-select AMP0NN).
        off_by_default = [rule.code for rule in ALL_RULES if not rule.default_enabled]
        if off_by_default:
            parser.extend_default_ignore(off_by_default)

    @classmethod
    def parse_options(cls, options: argparse.Namespace) -> None:
        precision = getattr(options, "amp_precision", AUTO)
        if precision not in (AUTO, *PRECISIONS):
            # argparse checks the command line's choices, but flake8 hands config-file values over unchecked.
            sys.stderr.write(
                f"flake8: error: amp-precision = {precision!r} in the flake8 configuration is not one of: "
                f"{', '.join((AUTO, *PRECISIONS))}\n"
            )
            raise SystemExit(2)
        cls.options = LintOptions(precision=None if precision == AUTO else precision)
        cls.selected = _may_select_amp(options)

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        if not self.selected or not mentions_torch(self.lines):
            return
        for finding in lint_tree(self.tree, self.options):
            yield finding.line, finding.col, finding.message, type(self)


def _may_select_amp(options: argparse.Namespace) -> bool:
    """flake8 runs every plugin whatever --select says; skip the work when no AMP code can be reported."""
    select = getattr(options, "select", None)
    if select is None:
        return True  # flake8's default selection reports every installed plugin's codes
    chosen = list(select) + list(getattr(options, "extend_select", None) or ())
    return any("AMP000".startswith(code) or code.startswith("AMP") for code in chosen if code)
