"""The flake8 front end: flake8's tree in, ``(line, col, "AMP0NN message", type)`` out."""

from __future__ import annotations

import argparse
import ast
from typing import Any, ClassVar, Iterator

from . import __version__
from .engine import LintOptions, lint_tree, mentions_torch
from .rules import Finding
from .settings import lint_options, may_select_amp, register_options


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
        register_options(parser)

    @classmethod
    def parse_options(cls, options: argparse.Namespace) -> None:
        cls.options = lint_options(options)
        cls.selected = may_select_amp(options)

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        if not self.selected:
            return
        for finding in lint_module(self.tree, self.lines, self.filename, self.options):
            yield finding.line, finding.col, finding.message, type(self)


def lint_module(tree: ast.Module, lines: list[str], filename: str, options: LintOptions) -> list[Finding]:
    """The findings of one module as flake8 hands it over (its tree, its lines, its name); shared with
    ``flake8-amp check``, which reads files the way flake8 does, so that both report the same."""
    if not mentions_torch(lines):
        return []
    path = filename if filename not in ("", "-", "stdin") else None  # stdin: lint the module alone
    return lint_tree(tree, options, path=path)
