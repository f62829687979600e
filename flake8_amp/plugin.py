"""The flake8 front end: flake8's tree in, ``(line, col, "AMP0NN message", type)`` out."""

from __future__ import annotations

import ast
from typing import Iterator

from . import __version__
from .engine import LintOptions, lint_tree, mentions_torch


class AmpChecker:
    name = "flake8-amp"
    version = __version__

    def __init__(self, tree: ast.Module, lines: list[str]) -> None:
        self.tree = tree
        self.lines = lines

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        if not mentions_torch(self.lines):
            return
        for finding in lint_tree(self.tree, LintOptions()):
            yield finding.line, finding.col, finding.message, type(self)
