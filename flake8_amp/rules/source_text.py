"""Short source excerpts for messages."""

from __future__ import annotations

import ast

_MAX_EXCERPT = 40


def excerpt(node: ast.AST) -> str:
    """The node's source, shortened to fit in a one-line message."""
    text = ast.unparse(node)
    return text if len(text) <= _MAX_EXCERPT else text[: _MAX_EXCERPT - 3] + "..."


def as_operand(node: ast.AST) -> str:
    """The excerpt, parenthesised when a method call appended to it would bind to a part of it."""
    text = excerpt(node)
    simple = isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call))
    return text if simple else f"({text})"
