"""Numeric literals as the source spells them: ``-1e9``, ``1e-8``, ``-10000000.0``, ``-(1e9)``."""

from __future__ import annotations

import ast
import math

FP16_MAX = 65504.0
# Half of float16's smallest subnormal (2**-24): anything smaller rounds to zero.
FP16_SMALLEST_SUBNORMAL = 2.0**-24


def numeric_literal(node: ast.AST | None) -> float | None:
    """The value of a number literal, with unary signs and ``x * 10**k``-style constant arithmetic;
    None for anything that is not a literal (names, calls, ``float("inf")``)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = numeric_literal(node.operand)
        if value is None:
            return None
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow)):
        left, right = numeric_literal(node.left), numeric_literal(node.right)
        if left is None or right is None:
            return None
        try:
            value = left * right if isinstance(node.op, ast.Mult) else left**right
        except (OverflowError, ZeroDivisionError):
            return None
        return float(value) if isinstance(value, (int, float)) else None
    return None


def overflows_fp16(value: float | None) -> bool:
    """A finite value beyond float16's largest: it becomes inf (or raises when filled)."""
    return value is not None and math.isfinite(value) and abs(value) > FP16_MAX


def vanishes_in_fp16(value: float | None) -> bool:
    """A positive value below float16's smallest subnormal: it rounds to (or barely above) zero."""
    return value is not None and 0 < value < FP16_SMALLEST_SUBNORMAL
