"""The module a fix edits: where each ast node lies in its text, its concrete syntax tree, and the edits a
rule's :meth:`~flake8_amp.rules.base.Rule.rewrite` builds from them.

Findings come from the engine with their ast nodes, so a fix edits exactly what the analysis judged
(aliases resolved, exemptions and ``# noqa`` applied). Python's ast knows where a node starts and ends
but not its tokens: which parenthesis closes a call, whether a trailing comma follows the last argument,
where a comment sits. That is the concrete syntax tree ast-grep parses (tree-sitter's Python grammar);
a rule asks it for the node with an ast node's range. Edits are (start, end, text) in character offsets
of the module's text, applied bottom-up by :func:`~flake8_amp.fixes.edits.apply_edits`.

ast columns are UTF-8 byte offsets within a line; ast-grep's are characters: both are turned into
character offsets of the whole text here.
"""

from __future__ import annotations

import ast
import re
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..analysis.module_analysis import ModuleAnalysis
from .edits import Edit
from .torch_floor import TorchFloor

if TYPE_CHECKING:
    from ast_grep_py import SgNode

    from ..rules.base import Finding

#: the line breaks CPython's tokenizer counts (and so ast's line numbers)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: CST children of an argument list that are not arguments
_PUNCTUATION = frozenset({"(", ")", ",", "comment"})
#: CST kinds of the arguments a keyword must follow
_KEYWORD_KINDS = frozenset({"keyword_argument", "dictionary_splat"})


class FixableModule:
    """One module as a fix sees it: its text, its analysis, the findings being fixed in this pass and the
    oldest torch the project supports."""

    def __init__(self, text: str, analysis: ModuleAnalysis, floor: TorchFloor, findings: list["Finding"]) -> None:
        self.text = text
        self.analysis = analysis
        self.floor = floor
        #: the findings ``fix`` is fixing (selected, not ignored, not ``# noqa``), nodes kept
        self.findings = findings
        #: set when a fix's spelling depended on the torch floor (``fix`` then says what it assumed)
        self.floor_consulted = False

    @cached_property
    def _line_starts(self) -> list[int]:
        return [0] + [match.end() for match in _LINE_BREAK.finditer(self.text)]

    # ---------------------------------------------------------------- positions
    def offset(self, line: int, column: int) -> int:
        """The character offset of ast's (1-based line, UTF-8 byte column)."""
        start = self._line_starts[line - 1]
        prefix = self.text[start : start + column]
        if prefix.isascii():  # bytes are characters
            return start + column
        end = self._line_starts[line] if line < len(self._line_starts) else len(self.text)
        return start + len(self.text[start:end].encode("utf-8")[:column].decode("utf-8", errors="ignore"))

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def source(self, node: ast.AST) -> str:
        """The node's text exactly as written (comments and line breaks inside it included)."""
        return self.text[self.start(node) : self.end(node)]

    def line_start(self, offset: int) -> int:
        return self.text.rfind("\n", 0, offset) + 1

    def line_end(self, offset: int) -> int:
        """Where the line holding ``offset`` ends, before its line break."""
        match = _LINE_BREAK.search(self.text, offset)
        return match.start() if match else len(self.text)

    def indentation(self, node: ast.AST) -> str | None:
        """The whitespace before ``node`` on its line, or None when something else precedes it there (``a;
        b``, ``if x: b``)."""
        start = self.start(node)
        before = self.text[self.line_start(start) : start]
        return before if not before.strip() else None

    @cached_property
    def newline(self) -> str:
        """The file's line break, for inserted lines."""
        match = _LINE_BREAK.search(self.text)
        return match.group() if match else "\n"

    # ---------------------------------------------------------------- the concrete syntax tree
    @cached_property
    def cst(self) -> "SgNode":
        from ast_grep_py import SgRoot  # ast-grep is the fix extra's dependency: loaded only when fixing

        return SgRoot(self.text, "python").root()

    def cst_node(self, node: ast.AST, kind: str) -> "SgNode | None":
        """The CST node of ``kind`` with the same range as the ast node."""
        span = {"start": self._position(self.start(node)), "end": self._position(self.end(node))}
        return self.cst.find(kind=kind, range=span)

    def _position(self, offset: int) -> dict[str, int]:
        line_start = self.text.rfind("\n", 0, offset) + 1
        return {"line": self.text.count("\n", 0, offset), "column": offset - line_start}

    @staticmethod
    def cst_span(node: "SgNode") -> tuple[int, int]:
        found = node.range()
        return found.start.index, found.end.index

    def _argument_list(self, call: ast.Call) -> tuple[list[Any], list[Any]] | None:
        """(every child of the call's parenthesised argument list, the arguments among them), or None for a
        call whose only argument is a bare generator (``f(x for x in y)``), which takes no other."""
        found = self.cst_node(call, "call")
        arguments = found.field("arguments") if found is not None else None
        if arguments is None or arguments.kind() != "argument_list":
            return None
        children = arguments.children()
        return children, [child for child in children if child.kind() not in _PUNCTUATION]

    # ---------------------------------------------------------------- edits of calls
    def insert_argument(self, call: ast.Call, text: str, keyword: bool = False) -> Edit | None:
        """``text`` as the call's first argument, or, for a keyword argument, before its first keyword (at
        the end when it has none), laid out as the arguments are (one a line, or inline)."""
        found = self._argument_list(call)
        if found is None:
            return None
        children, items = found
        if keyword:
            items = items[next((i for i, item in enumerate(items) if item.kind() in _KEYWORD_KINDS), len(items)) :]
        if not items:
            return self.append_argument(call, text)
        start = self.cst_span(items[0])[0]
        before = self.text[self.line_start(start) : start]
        if before.strip():
            return Edit(start, start, f"{text}, ")
        return Edit(start, start, f"{text},{self.newline}{before}")

    def append_argument(self, call: ast.Call, text: str) -> Edit | None:
        """``text`` after the call's last argument (after a trailing comma on a line of its own when the
        arguments are one a line)."""
        found = self._argument_list(call)
        if found is None:
            return None
        children, items = found
        if not items:
            opening = self.cst_span(children[0])[1]
            return Edit(opening, opening, text)
        last_start, last_end = self.cst_span(items[-1])
        trailing = [child for child in children[children.index(items[-1]) + 1 :] if child.kind() == ","]
        before = self.text[self.line_start(last_start) : last_start]
        if trailing and not before.strip():
            comma_end = self.cst_span(trailing[0])[1]
            return Edit(comma_end, comma_end, f"{self.newline}{before}{text},")
        return Edit(last_end, last_end, f", {text}")

    def float32_dtype_argument(self, call: ast.Call) -> Edit | None:
        """``dtype=torch.float32`` after the call's last argument (``torch`` as the module spells it)."""
        float32 = self.spelling("torch.float32")
        return self.append_argument(call, f"dtype={float32}") if float32 else None

    def replace(self, node: ast.AST, text: str) -> Edit:
        return Edit(self.start(node), self.end(node), text)

    def insert_statement_before(self, statement: ast.stmt, text: str) -> Edit | None:
        """A line holding ``text`` before ``statement``, at its indentation (None when the statement does
        not start its line)."""
        indentation = self.indentation(statement)
        if indentation is None:
            return None
        start = self.start(statement)
        return Edit(start, start, f"{text}{self.newline}{indentation}")

    # ---------------------------------------------------------------- names
    @cached_property
    def _module_imports(self) -> dict[str, str]:
        """Local name -> module or object, for the imports the module's top level runs (``import torch``,
        ``import torch.nn.functional as F``, ``from torch import nn``): names every function can use."""
        found: dict[str, str] = {}
        for statement in self.analysis.tree.body:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    if alias.asname:
                        found[alias.asname] = alias.name
                    else:
                        top = alias.name.partition(".")[0]
                        found[top] = top
            elif isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                for alias in statement.names:
                    if alias.name != "*":
                        found[alias.asname or alias.name] = f"{statement.module}.{alias.name}"
        return found

    def spelling(self, qualified: str) -> str | None:
        """How this module can name ``qualified`` (``torch.nn.functional.logsigmoid``) through its top-level
        imports: ``F.logsigmoid`` after ``import torch.nn.functional as F``, else
        ``torch.nn.functional.logsigmoid`` after ``import torch``; None when no import reaches it."""
        best: tuple[int, str] | None = None
        for local, module in self._module_imports.items():
            if qualified == module or qualified.startswith(module + "."):
                if best is None or len(module) > best[0]:
                    best = (len(module), local + qualified[len(module) :])
        return best[1] if best else None

    def torch_name(self) -> str | None:
        """The local name of the torch package, where the module's top level imports it."""
        return self.spelling("torch")
