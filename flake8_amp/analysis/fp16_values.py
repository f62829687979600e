"""Whether an expression holds a float16 value where it stands: yes, no, or not known.

:class:`~.low_precision.LowPrecisionFlow` says which values are low precision; this adds what the range
rules need on top of it:

* values that are certainly *not* float16: fresh tensors built without a low-precision ``dtype=``
  (``torch.zeros(n, n)`` is float32), ``.float()`` / ``.double()`` results, non-float results, and the
  results of ops that CUDA autocast runs in float32 (``h.sum()``, ``h.norm()``, ``torch.softmax(h)``
  inside an enabled CUDA region), also through a name bound only to such values;
* bfloat16 origins count as not float16 (bfloat16 has float32's range).

And one question about code whose dtype the module does not say (model code that some trainer may run
under float16 autocast): whether the value would be float32 there too, because autocast runs the op that
made it in float32 (``1 - logits.softmax(-1).gather(...)``): :meth:`Fp16Values.float32_under_autocast`.

Use as ``analysis.derived(Fp16Values).verdict(expr)``.
"""

from __future__ import annotations

import ast
from typing import Callable

from .bindings import Binding, Bindings
from .dataflow import evaluate
from .dtypes import FRESH_TENSOR_FUNCTIONS, cast_dtype, literal_dtype
from .low_precision import LowPrecisionFlow
from .module_analysis import ModuleAnalysis, call_name
from .precision import FP16 as FP16_PRECISION, module_precision
from .torch_api import AUTOCAST_LOWER_PRECISION_OPS, CUDA_FLOAT32_OPS, DTYPE_KEEPING_OPS, NON_FLOAT_RESULTS

FP16 = "fp16"
NOT_FP16 = "not-fp16"
UNKNOWN = "unknown"

# einops functions whose result has their first argument's dtype.
_EINOPS_DTYPE_KEEPING = frozenset({"einops.rearrange", "einops.repeat"})


class Fp16Values:
    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self.flow = analysis.derived(LowPrecisionFlow)
        self.bindings = analysis.derived(Bindings)
        # where it stands; and as if inside an enabled CUDA autocast region (any op but a matmul there
        # keeps its operands' precision)
        self._full = _FullPrecision(self.bindings, self._call_rule, lambda node: not self._in_enabled_region(node))
        self._full_under_autocast = _FullPrecision(
            self.bindings, self._autocast_rule, lambda node: not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult))
        )

    def verdict(self, expr: ast.AST) -> str:
        """``FP16`` (known float16, or low precision of a dtype that may be float16), ``NOT_FP16`` or
        ``UNKNOWN``."""
        if self.full_precision(expr):
            return NOT_FP16
        origin = self.flow.origin(expr)
        if origin is None:
            return UNKNOWN
        if origin.dtype is None:  # autocast of a dtype the source does not say: float16 if the module is
            return FP16 if self.analysis.derived(module_precision) == FP16_PRECISION else UNKNOWN
        return NOT_FP16 if origin.dtype == "bfloat16" else FP16

    def full_precision(self, expr: ast.AST) -> bool:
        """Certainly not a float16 tensor where it stands."""
        return self._full(expr)

    def float32_under_autocast(self, expr: ast.AST) -> bool:
        """Certainly float32 if this code ran inside an enabled CUDA autocast region: built only from
        ops autocast runs in float32 (``softmax``, ``log_softmax``, ``sum``, ``exp``, ``norm`` ...),
        float32 casts, fresh float32 tensors and constants, through ops that keep their input's dtype
        (``1 - p.gather(...)``, ``x.view(...)``, ``einops.rearrange(x, ...)``). Anything autocast runs in
        low precision (``@``, ``matmul``, ``linear``, ``conv``), or an op this does not know, is not."""
        return self._full_under_autocast(expr)

    def _autocast_rule(self, call: ast.Call) -> tuple[str, list]:
        dtype = cast_dtype(call, self.analysis.resolve)
        if dtype is not None:
            return ("full" if dtype != "float16" else "not-full"), []
        name = call_name(call)
        qualified = self.analysis.resolve(call.func)
        if name in NON_FLOAT_RESULTS or name in CUDA_FLOAT32_OPS:
            return "full", []
        if name in AUTOCAST_LOWER_PRECISION_OPS:
            return "not-full", []
        if qualified is not None and qualified.startswith("torch.") and name in FRESH_TENSOR_FUNCTIONS:
            return ("not-full" if self._may_be_fp16_dtype(call) else "full"), []
        if name in DTYPE_KEEPING_OPS and qualified is None and isinstance(call.func, ast.Attribute):
            return "all-parts", [call.func.value]  # p.gather(...), x.view(...)
        if name in DTYPE_KEEPING_OPS and qualified is not None and qualified.startswith("torch.") and call.args:
            return "all-parts", [arg for arg in call.args if not isinstance(arg, ast.Starred)][:1]
        if qualified in _EINOPS_DTYPE_KEEPING and call.args:
            return "all-parts", [call.args[0]]  # rearrange(x, "b n -> n b") has x's dtype
        return "not-full", []

    def _call_rule(self, call: ast.Call) -> tuple[str, list]:
        """("full" | "not-full" | "all-parts", parts): how a call's precision is decided."""
        analysis = self.analysis
        dtype = cast_dtype(call, analysis.resolve)
        if dtype is not None:
            return ("full" if dtype != "float16" else "not-full"), []
        name = call_name(call)
        if name in NON_FLOAT_RESULTS:
            return "full", []
        qualified = analysis.resolve(call.func)
        if qualified is not None and qualified.startswith("torch.") and name in FRESH_TENSOR_FUNCTIONS:
            return ("not-full" if self._may_be_fp16_dtype(call) else "full"), []
        region = analysis.context(call).innermost_region
        if region is not None and region.may_be_enabled:
            # autocast picks the precision here: float32 only for its float32 list (on CUDA)
            return ("full" if name in CUDA_FLOAT32_OPS and not region.is_cpu else "not-full"), []
        if qualified is None and isinstance(call.func, ast.Attribute) and name not in ("to", "type"):
            return "all-parts", [call.func.value]  # x.view(...), x.masked_fill(...)
        if qualified is not None and qualified.startswith("torch.") and call.args:
            return "all-parts", list(call.args)  # torch.triu(mask)
        return "not-full", []

    def _in_enabled_region(self, node: ast.AST) -> bool:
        region = self.analysis.context(node).innermost_region
        return region is not None and region.may_be_enabled  # `a @ b` is float16 there, whatever a and b are

    def _may_be_fp16_dtype(self, call: ast.Call) -> bool:
        """A fresh-tensor call whose ``dtype=`` is float16 or not a literal."""
        dtype_node = next((kw.value for kw in call.keywords if kw.arg == "dtype"), None)
        if dtype_node is None:
            return False
        return literal_dtype(dtype_node, self.analysis.resolve) in ("float16", None)


class _FullPrecision:
    """"Certainly not float16", computed bottom-up over an expression's parts (see :mod:`.dataflow`):
    ``rule`` says how a call decides it ("full", "not-full", or "all-parts" with the parts), and
    ``arithmetic`` whether an operator there keeps its operands' precision."""

    def __init__(
        self,
        bindings: Bindings,
        rule: Callable[[ast.Call], tuple[str, list]],
        arithmetic: Callable[[ast.AST], bool],
    ) -> None:
        self.bindings = bindings
        self.rule = rule
        self.arithmetic = arithmetic
        self._memo: dict[object, bool] = {}
        self._pending: set[object] = set()

    def __call__(self, expr: ast.AST) -> bool:
        return bool(evaluate(expr, self._parts, self._combine, self._memo, self._pending))

    def _parts(self, node: object) -> list:
        if isinstance(node, Binding):
            return [node.value] if not node.unpacked else []
        if isinstance(node, ast.Name):
            return list(self.bindings.reaching(node))
        if isinstance(node, ast.Subscript):
            return [node.value]
        if isinstance(node, ast.Call):
            return self.rule(node)[1]
        if isinstance(node, (ast.BinOp, ast.UnaryOp)) and self.arithmetic(node):
            return [node.left, node.right] if isinstance(node, ast.BinOp) else [node.operand]
        return []

    def _combine(self, node: object, full: dict) -> bool:
        if isinstance(node, Binding):
            return node.value is not None and not node.unpacked and full.get(node.value, False)
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            bindings = self.bindings.reaching(node)
            return bool(bindings) and all(full.get(binding, False) for binding in bindings)
        if isinstance(node, ast.Subscript):
            return full.get(node.value, False)
        if isinstance(node, ast.Call):
            kind, parts = self.rule(node)
            if kind == "all-parts":
                return bool(parts) and all(full.get(part, False) for part in parts)
            return kind == "full"
        if isinstance(node, ast.BinOp) and self.arithmetic(node):
            return full.get(node.left, False) and full.get(node.right, False)
        if isinstance(node, ast.UnaryOp) and self.arithmetic(node):
            return full.get(node.operand, False)
        return False
