"""Expressions as source text: for messages, and as the key of a value (``self.scaler``)."""

from __future__ import annotations

import ast

_MAX_EXCERPT = 40


# A message shows at most this deep into an expression: a chain hundreds of calls long is not printed
# whole (nor unparsed whole, for every finding on it).
_MAX_SHOWN_DEPTH = 8


def excerpt(node: ast.AST, limit: int | None = _MAX_EXCERPT) -> str:
    """The node's source, shortened to ``limit`` characters to fit in a one-line message (None: whole).

    With a limit, parts nested deeper than a message could show are printed as ``...``.
    """
    shown = node if limit is None else _shallow(node, _MAX_SHOWN_DEPTH)
    try:
        text = ast.unparse(shown)
    except RecursionError:  # limit=None on an expression nested beyond what unparse can print
        text = ast.unparse(_shallow(node, _MAX_SHOWN_DEPTH))
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _shallow(node: ast.AST, depth: int) -> ast.AST:
    """A copy of ``node`` down to ``depth`` levels, deeper expressions replaced by ``...``."""
    if depth == 0 and isinstance(node, ast.expr) and not isinstance(node, (ast.Name, ast.Constant)):
        return ast.Name(id="...", ctx=ast.Load())
    copy = type(node)()
    for field, value in ast.iter_fields(node):
        if isinstance(value, ast.AST):
            value = _shallow(value, depth - 1)
        elif isinstance(value, list):
            value = [_shallow(item, depth - 1) if isinstance(item, ast.AST) else item for item in value]
        setattr(copy, field, value)
    return copy


def as_operand(node: ast.AST) -> str:
    """The excerpt, parenthesised when a method call appended to it would bind to a part of it."""
    text = excerpt(node)
    simple = isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call))
    return text if simple else f"({text})"
