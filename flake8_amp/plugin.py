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
ON, OFF = "on", "off"


class AmpChecker:
    name = "flake8-amp"
    version = __version__

    options: ClassVar[LintOptions] = LintOptions()
    #: False when the run's --select / --extend-select cannot report any AMP code: then there is no work
    selected: ClassVar[bool] = True

    def __init__(self, tree: ast.Module, lines: list[str], filename: str = "") -> None:
        self.tree = tree
        self.lines = lines
        self.filename = filename

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
        parser.add_option(
            "--amp-project-index",
            default=ON,
            choices=(ON, OFF),
            parse_from_config=True,
            help="read the project's other modules for facts one step away (a model called under autocast "
            "in another file, a loss scaled by a helper class), with a cache in <project>/.flake8_amp_cache; "
            "off lints every file alone and reads no other file. (Default: %(default)s)",
        )
        parser.add_option(
            "--amp-preview",
            default=OFF,
            metavar="on|off",
            parse_from_config=True,
            help="on runs the preview rules too ("
            + ", ".join(rule.code for rule in ALL_RULES if rule.preview)
            + "): rules whose findings on code nobody tuned them to were right less than 75%% of the time. "
            "`flake8-amp verify` always runs them and says which held. (Default: %(default)s)",
        )
        # Opinionated rules are reported only when selected explicitly (--extend-select AMP0NN).
        off_by_default = [rule.code for rule in ALL_RULES if not rule.default_enabled]
        if off_by_default:
            parser.extend_default_ignore(off_by_default)

    @classmethod
    def parse_options(cls, options: argparse.Namespace) -> None:
        precision = _checked(options, "amp_precision", AUTO, (AUTO, *PRECISIONS))
        project_index = _checked(options, "amp_project_index", ON, (ON, OFF))
        cls.options = LintOptions(
            precision=None if precision == AUTO else precision,
            project_index=project_index == ON,
            preview=_switch(options, "amp_preview", OFF),
        )
        cls.selected = _may_select_amp(options)

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        if not self.selected or not mentions_torch(self.lines):
            return
        path = self.filename if self.filename not in ("", "-", "stdin") else None
        for finding in lint_tree(self.tree, self.options, path=path):
            yield finding.line, finding.col, finding.message, type(self)


def _checked(options: argparse.Namespace, name: str, default: str, choices: tuple[str, ...]) -> str:
    """argparse checks the command line's choices, but flake8 hands config-file values over unchecked."""
    value = getattr(options, name, default)
    if value not in choices:
        sys.stderr.write(
            f"flake8: error: {name.replace('_', '-')} = {value!r} in the flake8 configuration is not one of: "
            f"{', '.join(choices)}\n"
        )
        raise SystemExit(2)
    return value


#: what a yes/no setting may say, on the command line or in a configuration file
_SWITCH_VALUES = {
    **dict.fromkeys(("on", "true", "yes", "1"), True),
    **dict.fromkeys(("off", "false", "no", "0"), False),
}


def _switch(options: argparse.Namespace, name: str, default: str) -> bool:
    value = getattr(options, name, default)
    if isinstance(value, bool):
        return value
    try:
        return _SWITCH_VALUES[str(value).strip().lower()]
    except KeyError:
        sys.stderr.write(f"flake8: error: {name.replace('_', '-')} = {value!r} is not one of: on, off\n")
        raise SystemExit(2) from None


def _may_select_amp(options: argparse.Namespace) -> bool:
    """flake8 runs every plugin whatever --select says; skip the work when no AMP code can be reported."""
    select = getattr(options, "select", None)
    if select is None:
        return True  # flake8's default selection reports every installed plugin's codes
    chosen = list(select) + list(getattr(options, "extend_select", None) or ())
    return any("AMP000".startswith(code) or code.startswith("AMP") for code in chosen if code)
