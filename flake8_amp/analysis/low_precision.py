"""Which local names hold low-precision (float16 / bfloat16) tensors, statement by statement.

Two things make a value low precision here:

* ``autocast``: it was computed inside an enabled autocast region by an op that autocast runs in low
  precision (a model call, a matmul, a conv ...). Ops that autocast runs in float32 (losses, softmax
  and reductions under CUDA autocast) do not count.
* ``cast``: it went through ``.half()``, ``.bfloat16()``, ``.to(torch.float16)`` and the like.

Lowness flows through assignments, arithmetic, indexing and most methods, in statement order within a
function (loops are read once, top to bottom); ``.float()``, ``.double()``, ``.to(torch.float32)``,
``.item()``, ``argmax`` and the like end it.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass
from typing import Mapping

from .autocast_regions import dtype_of
from .loss_calls import is_loss_call
from .module_analysis import FunctionNode, ModuleAnalysis, call_name
from .torch_api import (
    CPU_FLOAT32_OPS,
    CUDA_FLOAT32_OPS,
    FLOAT32_CASTS,
    LOW_PRECISION_DTYPES,
    NON_FLOAT_RESULTS,
    TENSOR_TYPE_DTYPES,
)


@dataclass(frozen=True)
class LowPrecisionOrigin:
    """Where a low-precision value came from."""

    kind: str  # "autocast" or "cast"
    dtype: str | None  # "float16", "bfloat16", or None when the autocast dtype is not literal
    node: ast.AST  # the autocast region's owner (a With or a function) or the cast call
    line: int

    @property
    def dtype_label(self) -> str:
        return self.dtype or "float16/bfloat16"


State = Mapping[str, LowPrecisionOrigin]
_EMPTY: State = {}

# Ops that build new tensors from Python values: their result does not inherit the inputs' precision.
_FRESH_TENSOR_FUNCTIONS = frozenset(
    {"tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "linspace", "as_tensor"}
)


# The methods cast_dtype() recognises: a rule looks only at calls of these names.
CAST_METHODS = ("half", "bfloat16", *sorted(FLOAT32_CASTS), "to", "type")


def cast_dtype(call: ast.Call, analysis: ModuleAnalysis) -> str | None:
    """The dtype a cast call produces: ``x.half()`` -> float16, ``x.to(torch.float32)`` -> float32.

    None when ``call`` is not a cast or the target dtype is not literal.
    """
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    method = func.attr
    if method == "half" and not call.args:
        return "float16"
    if method == "bfloat16" and not call.args:
        return "bfloat16"
    if method in FLOAT32_CASTS and not call.args:
        return "float32" if method == "float" else "float64"
    if method == "to":
        candidates = list(call.args) + [kw.value for kw in call.keywords if kw.arg == "dtype"]
        for candidate in candidates:
            dtype = dtype_of(candidate, analysis.resolve)
            if dtype is not None:
                return dtype
    if method == "type" and call.args:
        target = call.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            return TENSOR_TYPE_DTYPES.get(target.value)
        qualified = analysis.resolve(target)
        if qualified in TENSOR_TYPE_DTYPES:
            return TENSOR_TYPE_DTYPES[qualified]
        return dtype_of(target, analysis.resolve)
    return None


class LowPrecisionFlow:
    """Statement-ordered low-precision facts for every function (and the module body)."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._state_before: dict[ast.stmt, State] = {}
        self._run_block(analysis.tree.body, _EMPTY)
        for function in analysis.nodes(ast.FunctionDef) + analysis.nodes(ast.AsyncFunctionDef):
            self._run_block(function.body, _EMPTY)

    # ---------------------------------------------------------------- queries
    def origin(self, expr: ast.AST) -> LowPrecisionOrigin | None:
        """Why ``expr`` holds a low-precision value where it stands, or None."""
        statement = self.analysis.statement_of(expr)
        return self.value_origin(expr, self._state_before.get(statement, _EMPTY))

    def value_origin(self, expr: ast.AST, state: State) -> LowPrecisionOrigin | None:
        if isinstance(expr, ast.Name):
            return state.get(expr.id)
        if isinstance(expr, (ast.Attribute, ast.Subscript)):
            if _names_a_loss(expr):
                return None
            return self.value_origin(expr.value, state)
        if isinstance(expr, ast.Starred):
            return self.value_origin(expr.value, state)
        if isinstance(expr, ast.BinOp):
            return self.value_origin(expr.left, state) or self.value_origin(expr.right, state)
        if isinstance(expr, ast.UnaryOp):
            return self.value_origin(expr.operand, state)
        if isinstance(expr, ast.IfExp):
            return self.value_origin(expr.body, state) or self.value_origin(expr.orelse, state)
        if isinstance(expr, (ast.Tuple, ast.List)):
            for element in expr.elts:
                origin = self.value_origin(element, state)
                if origin:
                    return origin
            return None
        if isinstance(expr, ast.Call):
            return self._call_origin(expr, state)
        return None

    def _call_origin(self, call: ast.Call, state: State) -> LowPrecisionOrigin | None:
        dtype = cast_dtype(call, self.analysis)
        if dtype is not None:
            if dtype in LOW_PRECISION_DTYPES:
                return LowPrecisionOrigin("cast", dtype, call, call.lineno)
            return None
        name = call_name(call)
        if name in NON_FLOAT_RESULTS or any(kw.arg == "dtype" for kw in call.keywords):
            return None
        func = call.func
        qualified = self.analysis.resolve(func)
        if qualified is not None:
            if qualified.startswith("torch.") and name not in _FRESH_TENSOR_FUNCTIONS:
                # torch.matmul(a, b), F.relu(x): the result has the inputs' precision.
                for arg in call.args:
                    origin = self.value_origin(arg, state)
                    if origin:
                        return origin
            return None
        if isinstance(func, ast.Attribute):
            # A method on a low-precision tensor (x.view(...), x.transpose(...)) stays low precision.
            return self.value_origin(func.value, state)
        return None

    # ---------------------------------------------------------------- the flow
    def _run_block(self, statements: list[ast.stmt], state: State) -> State:
        for statement in statements:
            state = self._run_statement(statement, state)
        return state

    def _run_statement(self, statement: ast.stmt, state: State) -> State:
        if isinstance(statement, (*FunctionNode, ast.ClassDef)):
            return state  # their bodies are flows of their own
        self._state_before[statement] = state
        if isinstance(statement, ast.Assign):
            origin = self._assigned_origin(statement, statement.value, state)
            for target in statement.targets:
                state = _bind(state, target, origin)
            return state
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            return _bind(state, statement.target, self._assigned_origin(statement, statement.value, state))
        if isinstance(statement, ast.AugAssign):
            origin = self.value_origin(statement.target, state) or self._assigned_origin(
                statement, statement.value, state
            )
            return _bind(state, statement.target, origin)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(statement, field, None)
            if block:
                state = self._run_block(block, state)
        for handler in getattr(statement, "handlers", ()):
            state = self._run_block(handler.body, state)
        for case in getattr(statement, "cases", ()):
            state = self._run_block(case.body, state)
        return state

    def _assigned_origin(self, statement: ast.stmt, value: ast.expr, state: State) -> LowPrecisionOrigin | None:
        origin = self.value_origin(value, state)
        if origin is not None or not isinstance(value, ast.Call):
            return origin
        if cast_dtype(value, self.analysis) is not None:
            return None  # a cast to float32/float64: explicitly full precision
        context = self.analysis.context(statement)
        region = context.innermost_region
        if region is None or not region.may_be_enabled:
            return None
        if self._runs_in_float32(value, region.is_cpu):
            return None
        return LowPrecisionOrigin("autocast", region.effective_dtype, region.node, value.lineno)

    def _runs_in_float32(self, call: ast.Call, cpu: bool) -> bool:
        """Whether autocast runs this call in float32 (or it returns no float tensor at all)."""
        name = call_name(call)
        if name is None or name in NON_FLOAT_RESULTS or is_loss_call(call, self.analysis):
            return True
        if any(kw.arg == "dtype" for kw in call.keywords):
            return True
        float32_ops = CPU_FLOAT32_OPS if cpu else CUDA_FLOAT32_OPS
        qualified = self.analysis.resolve(call.func)
        if qualified is not None:
            if not qualified.startswith("torch."):
                return True  # not a torch op: numpy, math, a helper from another package
            return name in float32_ops or name in _FRESH_TENSOR_FUNCTIONS
        if isinstance(call.func, ast.Attribute):
            return name in float32_ops
        # A bare name: a model or a local function; builtins return Python values.
        return name in _BUILTINS


_BUILTINS = frozenset(dir(builtins))


def _names_a_loss(node: ast.AST) -> bool:
    """``loss``, ``outputs.loss``, ``out["loss"]``: autocast runs every loss function in float32, so a
    value named as a loss is float32 even when it came out of an autocast region."""
    if isinstance(node, ast.Name):
        return "loss" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "loss" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and isinstance(key.value, str) and "loss" in key.value.lower()
    return False


def _bind(state: State, target: ast.AST, origin: LowPrecisionOrigin | None) -> State:
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            state = _bind(state, element, origin)
        return state
    if isinstance(target, ast.Starred):
        return _bind(state, target.value, origin)
    if not isinstance(target, ast.Name):
        return state
    if origin is not None and origin.kind == "autocast" and _names_a_loss(target):
        origin = None  # `loss = model(x)` under autocast: the model's loss function ran in float32
    if origin is None:
        if target.id not in state:
            return state
        new_state = dict(state)
        del new_state[target.id]
        return new_state
    if state.get(target.id) == origin:
        return state
    return {**state, target.id: origin}
