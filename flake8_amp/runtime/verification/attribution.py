"""Which project line ran this op: the innermost frame in the project's own files, and the project lines
further out that called it.

A frame belongs to the project when its file is under the project's folder and not inside an installed
package (site-packages, dist-packages) or flake8_amp. Answers are cached per code object, so walking
the stack costs a dictionary lookup per frame, and a walk stops at runpy's frame that runs the script:
nothing below it is the script's.
"""

from __future__ import annotations

import ast
import os
import runpy
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType

_INSTALLED = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_SCRIPT_RUNNER = runpy._run_code.__code__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Span:
    """A finding on a compound statement (``with``, ``def``, ``class``) stands for all of its lines."""

    path: str
    first: int
    last: int
    site: tuple[str, int]  # the finding's (path, line)
    #: a def's code object starts at its first decorator: calls of that code are runs of the finding
    code_starts: tuple[int, ...] = ()
    #: other (first, last) ranges it stands for: an autograd.Function's forward stands for its backward too
    also: tuple[tuple[int, int], ...] = ()

    def covers(self, line: int) -> bool:
        return self.first <= line <= self.last or any(first <= line <= last for first, last in self.also)


class ProjectFrames:
    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve()) + os.sep
        self._code_is_project: dict[CodeType, bool] = {}
        self._own = str(Path(__file__).resolve().parents[2]) + os.sep  # flake8_amp itself

    def is_project_code(self, code: CodeType) -> bool:
        known = self._code_is_project.get(code)
        if known is None:
            filename = os.path.realpath(code.co_filename) if not code.co_filename.startswith("<") else ""
            known = (
                filename.startswith(self.root)
                and not any(part in filename for part in _INSTALLED)
                and not filename.startswith(self._own)
            )
            self._code_is_project[code] = known
        return known

    def innermost(self, frame: FrameType | None) -> FrameType | None:
        while frame is not None and not self.is_project_code(frame.f_code):
            if frame.f_code is _SCRIPT_RUNNER:
                return None
            frame = frame.f_back
        return frame

    def project_stack(self, frame: FrameType | None):
        """Every project frame from the innermost out: the line running the op, then the calls around it."""
        while frame is not None and frame.f_code is not _SCRIPT_RUNNER:
            if self.is_project_code(frame.f_code):
                yield frame
            frame = frame.f_back


def statement_spans(path: str, sites: list[tuple[int, int]]) -> dict[tuple[int, int], Span]:
    """For each (line, 1-based col) that starts a compound statement in the file, the statement's span."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (SyntaxError, ValueError, OSError):
        return {}
    wanted = set(sites)
    spans = {}
    partners: dict[ast.AST, tuple[tuple[int, int], ...]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # an autograd.Function: forward and backward are one op's halves
            methods = {m.name: m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if "forward" in methods and "backward" in methods:
                partners[methods["forward"]] = tuple((m.lineno, m.end_lineno or m.lineno)
                                                     for name, m in methods.items() if name in ("backward", "setup_context"))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.With, ast.AsyncWith, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        starts = {(node.lineno, node.col_offset + 1)}
        if isinstance(node, (ast.With, ast.AsyncWith)):  # AMP016 points at the autocast call in the with
            starts |= {(item.context_expr.lineno, item.context_expr.col_offset + 1) for item in node.items}
        code_starts: tuple[int, ...] = ()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            code_starts = (min([node.lineno] + [d.lineno for d in node.decorator_list]),)
        for start in starts & wanted:
            spans[start] = Span(path, node.lineno, node.end_lineno or node.lineno, (path, start[0]), code_starts,
                                partners.get(node, ()))
    return spans

