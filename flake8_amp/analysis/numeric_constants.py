"""The number an expression stands for, where the source makes it constant, and how float16 stores it.

Beyond the literals of :mod:`.literals` (``-1e9``, ``-1 * 10**9``), this reads ``float(-1e9)`` /
``float("-1e9")`` and names bound to such a constant (``NEG_INF = -1e9`` at module level, ``self.eps =
1e-12``, or a local bound in the same function), which is how masks and epsilons are often spelled.
"""

from __future__ import annotations

import ast

from .literals import numeric_literal
from .module_analysis import ModuleAnalysis

# float16 rounds to nearest even: values up to half its smallest subnormal (2**-24 = 5.96e-8) become 0;
# 2**-25 itself ties to 0.
FP16_ZERO_ROUNDING_LIMIT = 2.0**-25
_MAX_NAME_DEPTH = 3


def constant_value(node: ast.AST | None, analysis: ModuleAnalysis, _depth: int = 0) -> float | None:
    """The float value of ``node`` when the source fixes it, else None (``float("-inf")`` is -inf)."""
    value = numeric_literal(node)
    if value is not None or node is None:
        return value
    if isinstance(node, ast.Call) and _is_builtin_float(node, analysis):
        argument = node.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            try:
                return float(argument.value)
            except ValueError:
                return None
        return constant_value(argument, analysis, _depth)
    if isinstance(node, (ast.Name, ast.Attribute)) and _depth < _MAX_NAME_DEPTH:
        return _bound_constant(node, analysis, _depth + 1)
    return None


def is_int_constant(node: ast.AST | None) -> bool:
    """``-1000000`` or ``-1 * 10**9``: an integer as written, which may as well fill an index tensor."""
    if isinstance(node, ast.Constant):
        return type(node.value) is int
    if isinstance(node, ast.UnaryOp):
        return is_int_constant(node.operand)
    if isinstance(node, ast.BinOp):
        return is_int_constant(node.left) and is_int_constant(node.right)
    return False


def rounds_to_zero_in_fp16(value: float | None) -> bool:
    """A positive value that float16 stores as 0 (1e-8, 1e-12): at most 2**-25, about 2.98e-8."""
    return value is not None and 0 < value <= FP16_ZERO_ROUNDING_LIMIT


def _is_builtin_float(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Name)
        and func.id == "float"
        and analysis.resolve(func) is None
        and len(call.args) == 1
        and not call.keywords
        and "float" not in analysis.assignments
    )


def _bound_constant(node: ast.Name | ast.Attribute, analysis: ModuleAnalysis, depth: int) -> float | None:
    """The one value every visible binding of a name gives it."""
    if not any(_may_be_constant(value) for value in analysis.bound_values(node)):
        return None  # the common case, decided without working out scopes
    values = reaching_bindings(node, analysis)
    found = {constant_value(value, analysis, depth) for value in values}
    if len(found) != 1:
        return None
    return found.pop()


def _may_be_constant(value: ast.expr) -> bool:
    """What a constant's binding looks like: ``1e9``, ``-1e9``, ``-1 * 10**9``, ``float("1e9")``, or
    another constant's name (``NEG_INF = LARGE``). Decided on the shape alone, before any scope work."""
    if isinstance(value, ast.Constant):
        return type(value.value) in (int, float)
    if isinstance(value, ast.UnaryOp):
        return _may_be_constant(value.operand)
    if isinstance(value, ast.BinOp):
        return _may_be_constant(value.left) and _may_be_constant(value.right)
    if isinstance(value, ast.Call):
        return isinstance(value.func, ast.Name) and value.func.id == "float"
    return isinstance(value, ast.Name) and value.id.isupper()


def reaching_bindings(node: ast.AST, analysis: ModuleAnalysis) -> list[ast.expr]:
    """The values a name or ``self.attr`` read at ``node`` may hold, as far as the source says so simply.

    A name bound in the function that reads it is local there: its last binding before ``node`` (in
    source order; branches and loops are not followed), or nothing if none precedes it. A name the
    function never binds reads the module-level bindings. A parameter gives []. For ``self.attr``,
    every binding in the module.
    """
    values = analysis.bound_values(node)
    if not values or not isinstance(node, ast.Name):
        return values
    function = analysis.enclosing_function(node)
    if function is not None and node.id in parameter_names(function):
        return []
    local = [value for value in values if analysis.enclosing_function(value) is function]
    if function is not None and not local:
        return [value for value in values if analysis.enclosing_function(value) is None]
    use = _position(analysis.statement_of(node))
    preceding = [value for value in local if _position(analysis.statement_of(value)) < use]
    return preceding[-1:]


def _position(statement: ast.stmt) -> tuple[int, int]:
    return statement.lineno, statement.col_offset


def parameter_names(function: ast.AST) -> set[str]:
    arguments = getattr(function, "args", None)
    if not isinstance(arguments, ast.arguments):
        return set()
    every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
    every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return {argument.arg for argument in every}
