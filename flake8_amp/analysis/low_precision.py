"""Which values are low precision (float16 / bfloat16) where they are used, and why.

Two things make a value low precision here:

* ``autocast``: it was computed inside an enabled autocast region by an op that autocast runs in low
  precision (a model call, a matmul, ``a @ b``, a conv ...). Ops that autocast runs in float32 (losses,
  and softmax and reductions under CUDA autocast) do not count.
* ``cast``: it went through ``.half()``, ``.bfloat16()``, ``.to(torch.float16)`` and the like.

Lowness flows through the bindings that reach a name, arithmetic, indexing and most methods;
``.float()``, ``.double()``, ``.to(torch.float32)``, ``.item()``, ``argmax`` and the like end it. A value
bound to a name that says it is a loss (``loss = model(x)``) is float32: autocast runs every loss
function in float32.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

from .bindings import Binding, Bindings, comprehension_iterable
from .dataflow import evaluate
from .dtypes import FRESH_TENSOR_FUNCTIONS, cast_dtype, has_dtype_argument, moves_device_only
from .losses import is_loss_call
from .module_analysis import ModuleAnalysis, call_name
from .torch_api import CPU_FLOAT32_OPS, CUDA_FLOAT32_OPS, DTYPE_KEEPING_OPS, LOW_PRECISION_DTYPES, NON_FLOAT_RESULTS


@dataclass(frozen=True)
class LowPrecisionOrigin:
    """Where a low-precision value came from."""

    kind: str  # "autocast" or "cast"
    dtype: str | None  # "float16", "bfloat16", or None when the autocast dtype is not literal
    node: ast.AST  # the autocast region's owner (a With or a function) or the cast call
    line: int
    #: made where gradients are off (under ``torch.no_grad()``): nothing can be trained through it
    without_grad: bool = False

    @property
    def dtype_label(self) -> str:
        return self.dtype or "float16/bfloat16"


_BUILTINS = frozenset(dir(builtins))


class LowPrecisionFlow:
    """Use as ``analysis.derived(LowPrecisionFlow)``; every answer is computed once per node."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self.bindings = analysis.derived(Bindings)
        self._origins: dict[object, LowPrecisionOrigin | None] = {}
        self._pending: set[object] = set()

    def origin(self, expr: ast.AST) -> LowPrecisionOrigin | None:
        """Why ``expr`` holds a low-precision value where it stands, or None."""
        return evaluate(expr, self._parts, self._combine, self._origins, self._pending)

    # ---------------------------------------------------------------- the parts of a value
    def _parts(self, node: object) -> list:
        if isinstance(node, Binding):
            if isinstance(node.value, ast.AugAssign):
                return [*self.bindings.reaching(node.value.target), node.value.value]
            return [node.value]
        if isinstance(node, ast.Name):
            reaching = list(self.bindings.reaching(node))
            if not reaching:
                # `[criterion(o, y) for o in outputs]`: an element has the precision of the list
                iterable = comprehension_iterable(node, node.id, self.analysis)
                return [iterable] if iterable is not None else []
            return reaching
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return [] if _names_a_loss(node) else [node.value]
        if isinstance(node, ast.Starred):
            return [node.value]
        if isinstance(node, ast.BinOp):
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            return [node.operand]
        if isinstance(node, ast.IfExp):
            if _names_a_loss(node.body) or _names_a_loss(node.orelse):
                # `outputs["loss"] if isinstance(outputs, dict) else outputs[0]` (transformers' Trainer):
                # the two arms are the same loss, reached through two shapes of the model's output.
                return []
            return [node.body, node.orelse]
        if isinstance(node, (ast.Tuple, ast.List)):
            return list(node.elts)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return [node.elt]  # `[classifier(o) for o in feats]` holds what classifier() returns
        if isinstance(node, ast.Call):
            return self._call_parts(node)
        return []

    def _call_parts(self, call: ast.Call) -> list:
        if cast_dtype(call, self.analysis.resolve) is not None:
            return []
        name = call_name(call)
        if name in NON_FLOAT_RESULTS or has_dtype_argument(call):
            return []
        func = call.func
        qualified = self.analysis.resolve(func)
        if qualified is not None:
            if qualified.startswith("torch.") and name not in FRESH_TENSOR_FUNCTIONS:
                return list(call.args)  # torch.matmul(a, b), F.relu(x): the inputs' precision
            return []
        if isinstance(func, ast.Attribute):
            return [func.value]  # x.view(...), x.transpose(...): the receiver's precision
        return []

    # ---------------------------------------------------------------- combining
    def _combine(self, node: object, origins: dict) -> LowPrecisionOrigin | None:
        if isinstance(node, Binding):
            origin = self._first_origin(self._parts(node), origins)
            if origin is not None and origin.kind == "autocast" and _names_a_loss_key(node.key):
                return None  # `loss = model(x)` under autocast: the model's loss function ran in float32
            return origin
        if isinstance(node, ast.Call):
            dtype = cast_dtype(node, self.analysis.resolve)
            if dtype is not None:
                return LowPrecisionOrigin("cast", dtype, node, node.lineno) if dtype in LOW_PRECISION_DTYPES else None
            region = self._enabled_region(node)
            if region is not None and self._runs_in_float32(node, region.is_cpu):
                return None  # autocast runs it in float32, whatever its inputs
            propagated = self._first_origin(self._call_parts(node), origins)
            if propagated is not None or call_name(node) in DTYPE_KEEPING_OPS or moves_device_only(node):
                return propagated  # a shape or elementwise op, or a move to a device, keeps its input's dtype
            return self._autocast_origin(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            return self._first_origin(self._parts(node), origins) or self._autocast_origin(node)
        return self._first_origin(self._parts(node), origins)

    @staticmethod
    def _first_origin(parts: list, origins: dict) -> LowPrecisionOrigin | None:
        for part in parts:
            origin = origins.get(part)
            if origin is not None:
                return origin
        return None

    def _enabled_region(self, node: ast.AST):
        """The enabled autocast region around ``node`` that computes in low precision (a region with
        ``dtype=torch.float32``, which code uses to force float32 inside another region, does not)."""
        region = self.analysis.context(node).innermost_region
        if region is None or not region.may_be_enabled or region.effective_dtype in ("float32", "float64"):
            return None
        return region

    def _autocast_origin(self, node: ast.Call | ast.BinOp) -> LowPrecisionOrigin | None:
        """A low-precision result of autocast: the op runs in an enabled region, in its low-precision
        (or widest-input) lists."""
        region = self._enabled_region(node)
        if region is None:
            return None
        without_grad = self.analysis.context(node).grad_disabled
        return LowPrecisionOrigin("autocast", region.effective_dtype, region.node, node.lineno, without_grad)

    def _runs_in_float32(self, call: ast.Call, cpu: bool) -> bool:
        """Whether autocast runs this call in float32 (or it returns no float tensor at all)."""
        name = call_name(call)
        if name is None or name in NON_FLOAT_RESULTS or has_dtype_argument(call) or is_loss_call(call, self.analysis):
            return True
        if cast_dtype(call, self.analysis.resolve) is not None:
            return True  # a cast to float32/float64: explicitly full precision
        float32_ops = CPU_FLOAT32_OPS if cpu else CUDA_FLOAT32_OPS
        qualified = self.analysis.resolve(call.func)
        if qualified is not None:
            if not qualified.startswith("torch."):
                return True  # not a torch op: numpy, math, a helper from another package
            return name in float32_ops or name in FRESH_TENSOR_FUNCTIONS
        if isinstance(call.func, ast.Attribute):
            return name in float32_ops
        # A bare name: a model or a local function; builtins return Python values.
        return name in _BUILTINS


def _names_a_loss(node: ast.AST) -> bool:
    """``loss``, ``outputs.loss``, ``out["loss"]``: autocast runs every loss function in float32, so a
    value named as a loss is float32 even when it came out of an autocast region."""
    if isinstance(node, ast.Name):
        return _names_a_loss_key(node.id)
    if isinstance(node, ast.Attribute):
        return _names_a_loss_key(node.attr)
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and isinstance(key.value, str) and _names_a_loss_key(key.value)
    return False


def _names_a_loss_key(name: str) -> bool:
    return "loss" in name.lower()
