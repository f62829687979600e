"""Expressions as source text: for messages, and as the key of a value (``self.scaler``)."""

from __future__ import annotations

import ast

_MAX_EXCERPT = 40


def excerpt(node: ast.AST, limit: int | None = _MAX_EXCERPT) -> str:
    """The node's source, shortened to ``limit`` characters to fit in a one-line message (None: whole).

    An expression nested deeper than ``ast.unparse`` can recurse (method chains a thousand calls long
    parse fine) is shown by its outermost part.
    """
    try:
        text = ast.unparse(node)
    except RecursionError:
        head = type(node).__name__
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            head = f"....{node.func.attr}()"
        elif isinstance(node, ast.Attribute):
            head = f"....{node.attr}"
        text = head
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def as_operand(node: ast.AST) -> str:
    """The excerpt, parenthesised when a method call appended to it would bind to a part of it."""
    text = excerpt(node)
    simple = isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call))
    return text if simple else f"({text})"
