"""The number an expression stands for, where the source fixes it, its sign where the source proves
it, and how float16 stores it.

``-1e9``, ``-1 * 10**9``, ``float("-1e9")``, ``float(-1e30)``, and names bound to such a constant
(``NEG_INF = -1e9`` at module level, ``self.eps = 1e-12``, or a local bound before its use), which is how
masks and epsilons are usually spelled. Numbers beyond float range (``10**400``) are not constants here:
they are no value float16 or float32 could be asked to hold.

Use as ``analysis.derived(Constants).value(node)``; every value is computed once per node, without
recursion, so ``x * 1e9 * 1e9 * ...`` of any length costs time linear in its length.
"""

from __future__ import annotations

import ast
import math
import sys
from functools import cached_property

from .bindings import Bindings
from .dataflow import evaluate
from .dtypes import FP16_MAX, FP16_ZERO_ROUNDING_LIMIT
from .module_analysis import ModuleAnalysis, binding_key

_NOT_CONSTANT = None


class Constants:
    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._values: dict[object, float | None] = {}
        self._pending: set[object] = set()
        self._constant_keys: dict[str | None, bool] = {}

    @cached_property
    def bindings(self) -> Bindings:
        """Read only for a name that may be bound to a constant: most fills are literals."""
        return self.analysis.derived(Bindings)

    def value(self, node: ast.AST | None) -> float | None:
        """The float value of ``node`` when the source fixes it, else None (``float("-inf")`` is -inf)."""
        if node is None:
            return None
        return evaluate(node, self._parts, self._combine, self._values, self._pending)

    def _parts(self, node: object) -> list[object]:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return [node.operand]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow)):
            return [node.left, node.right]
        if isinstance(node, ast.Call) and self._is_builtin_float(node):
            argument = node.args[0]
            return [] if isinstance(argument, ast.Constant) and isinstance(argument.value, str) else [argument]
        if isinstance(node, (ast.Name, ast.Attribute)) and self._may_be_bound_to_a_constant(node):
            return [binding.value for binding in self.bindings.reaching(node)]
        return []

    def _combine(self, node: object, values: dict) -> float | None:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                return None
            try:
                return float(node.value)
            except OverflowError:  # an integer literal beyond float range: as far out as a float goes
                return sys.float_info.max  # a literal int is never negative: -10**400 is a UnaryOp
        if isinstance(node, ast.UnaryOp):
            operand = values.get(node.operand)
            if operand is None or not isinstance(node.op, (ast.USub, ast.UAdd)):
                return None
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = values.get(node.left), values.get(node.right)
            if left is None or right is None or not isinstance(node.op, (ast.Mult, ast.Pow)):
                return None
            try:
                result = left * right if isinstance(node.op, ast.Mult) else left**right
            except ZeroDivisionError:
                return None
            except OverflowError:  # 10**400: beyond float range, as far out as a float goes
                return sys.float_info.max if left > 0 or isinstance(node.op, ast.Pow) and right % 2 == 0 else -sys.float_info.max
            if isinstance(result, float) and math.isinf(result) and math.isfinite(left) and math.isfinite(right):
                return math.copysign(sys.float_info.max, result)
            return float(result) if isinstance(result, float) and not math.isnan(result) else None
        if isinstance(node, ast.Call) and self._is_builtin_float(node):
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                try:
                    return float(argument.value)
                except ValueError:
                    return None
            return values.get(argument)
        if isinstance(node, (ast.Name, ast.Attribute)):
            if not self._may_be_bound_to_a_constant(node):
                return None
            bindings = self.bindings.reaching(node)
            found = {values.get(binding.value) if binding.value is not None else None for binding in bindings}
            return found.pop() if len(found) == 1 else None
        return None

    def _is_builtin_float(self, call: ast.Call) -> bool:
        func = call.func
        return (
            isinstance(func, ast.Name)
            and func.id == "float"
            and len(call.args) == 1
            and not call.keywords
            and self.analysis.resolve(func) is None
            and not self._float_is_rebound
        )

    @cached_property
    def _float_is_rebound(self) -> bool:
        """The module binds the name ``float`` itself, as its bindings say; asked of them only when the
        name is stored, a parameter, a definition, a handler's or an import's name anywhere."""
        analysis = self.analysis
        may_be = (
            any(isinstance(node.ctx, ast.Store) and node.id == "float" for node in analysis.nodes(ast.Name))
            or any(node.arg == "float" for node in analysis.nodes(ast.arg))
            or any(node.name == "float" for kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler) for node in analysis.nodes(kind))  # type: ignore[attr-defined]
            or any(
                (alias.asname or alias.name).partition(".")[0] == "float"
                for kind in (ast.Import, ast.ImportFrom)
                for node in analysis.nodes(kind)
                for alias in node.names  # type: ignore[attr-defined]
            )
        )
        return may_be and self.bindings.is_bound("float")

    def _may_be_bound_to_a_constant(self, node: ast.Name | ast.Attribute) -> bool:
        """Decided once per name on the shape of its bindings alone, before any scope work: the common
        case (a name bound to a tensor) then costs a dictionary lookup."""
        key = binding_key(node)
        if key not in self._constant_keys:
            self._constant_keys[key] = key in self._keys_bound_to_constant_looking_values and any(
                _looks_constant(value) for value in self.bindings.bound_values(node)  # type: ignore[arg-type]
            )
        return self._constant_keys[key]

    @cached_property
    def _keys_bound_to_constant_looking_values(self) -> set[str | None]:
        """The names some assignment of the module binds to what looks like a constant, read off the
        assignments alone: a module that names no constant never builds its bindings here."""
        analysis = self.analysis
        found: set[str | None] = set()
        for node in analysis.nodes(ast.Assign):
            if _looks_constant(node.value):
                found.update(binding_key(target) for target in node.targets)
        for node in analysis.nodes(ast.AnnAssign) + analysis.nodes(ast.NamedExpr):  # type: ignore[operator]
            if node.value is not None and _looks_constant(node.value):
                found.add(binding_key(node.target))
        return found


def _looks_constant(value: ast.expr) -> bool:
    """What a constant's binding looks like: ``1e9``, ``-1e9``, ``-1 * 10**9``, ``float("1e9")``, or
    another constant's name (``NEG_INF = LARGE``)."""
    while isinstance(value, ast.UnaryOp):
        value = value.operand
    if isinstance(value, ast.Constant):
        return type(value.value) in (int, float)
    if isinstance(value, ast.BinOp):
        return isinstance(value.op, (ast.Mult, ast.Pow))
    if isinstance(value, ast.Call):
        return isinstance(value.func, ast.Name) and value.func.id == "float"
    return isinstance(value, ast.Name) and value.id.isupper()


def constant_value(node: ast.AST | None, analysis: ModuleAnalysis) -> float | None:
    return analysis.derived(Constants).value(node)


def is_int_constant(node: ast.AST | None) -> bool:
    """``-1000000`` or ``-1 * 10**9``: an integer as written, which may as well fill an index tensor."""
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.Constant):
            if type(current.value) is not int:
                return False
        elif isinstance(current, ast.UnaryOp):
            pending.append(current.operand)
        elif isinstance(current, ast.BinOp):
            pending += [current.left, current.right]
        else:
            return False
    return True


def overflows_fp16(value: float | None) -> bool:
    """A finite value beyond float16's largest: it becomes inf (or raises when filled)."""
    return value is not None and math.isfinite(value) and abs(value) > FP16_MAX


def rounds_to_zero_in_fp16(value: float | None) -> bool:
    """A positive value that float16 stores as 0 (1e-8, 1e-12): at most 2**-25, about 2.98e-8."""
    return value is not None and 0 < value <= FP16_ZERO_ROUNDING_LIMIT


_MAX_SIGN_DEPTH = 6
# Tensor methods and torch functions whose result is never negative.
_NONNEGATIVE_OPS = frozenset({"abs", "square", "exp", "sqrt", "norm", "sigmoid", "softmax", "relu", "numel"})
# Reductions that keep the sign of what they reduce.
_SIGN_KEEPING_OPS = frozenset({"sum", "mean", "amax", "max", "min", "amin", "clone", "detach", "float", "to"})


def provably_nonpositive(expr: ast.AST, analysis: ModuleAnalysis) -> bool:
    """``-((x - c) ** 2) / (2 * sigma**2)``, ``-0.5 * (x / s).pow(2)``, ``-d.abs()``: never above 0, so
    its exp is at most 1 (a Gaussian kernel's weights cannot overflow)."""
    return _sign(expr, analysis, 0) == -1


def _sign(expr: ast.AST, analysis: ModuleAnalysis, depth: int) -> int | None:
    """1: never negative; -1: never positive; None: not known."""
    if depth > _MAX_SIGN_DEPTH:
        return None
    value = analysis.derived(Constants).value(expr)
    if value is not None:
        return 1 if value >= 0 else -1
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        inner = _sign(expr.operand, analysis, depth + 1)
        return -inner if inner else None
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, ast.Pow):
            if _even(analysis.derived(Constants).value(expr.right)):
                return 1
            return 1 if _sign(expr.left, analysis, depth + 1) == 1 else None
        left, right = _sign(expr.left, analysis, depth + 1), _sign(expr.right, analysis, depth + 1)
        if left is None or right is None:
            if isinstance(expr.op, ast.Mult) and ast.dump(expr.left) == ast.dump(expr.right):
                return 1  # x * x
            return None
        if isinstance(expr.op, (ast.Mult, ast.Div)):
            return left * right
        if isinstance(expr.op, ast.Add):
            return left if left == right else None
        if isinstance(expr.op, ast.Sub):
            return left if left == -right else None
        return None
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name == "square" or name == "pow" and expr.args and _even(analysis.derived(Constants).value(expr.args[-1])):
            return 1
        if name in _NONNEGATIVE_OPS:
            return 1
        if name in _SIGN_KEEPING_OPS and isinstance(func, ast.Attribute) and analysis.resolve(func) is None:
            return _sign(func.value, analysis, depth + 1)
        return None
    if isinstance(expr, ast.Name):
        values = analysis.derived(Bindings).reaching_values(expr)
        signs = {_sign(value, analysis, depth + 1) for value in values}
        return signs.pop() if len(signs) == 1 else None
    return None


def _even(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value == int(value) and int(value) % 2 == 0
