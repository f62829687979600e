"""Whether an expression holds a float16 value where it stands: yes, no, or not known.

:class:`~.low_precision.LowPrecisionFlow` says which names hold low-precision values; this adds what the
range rules need on top of it:

* values that are certainly *not* float16: fresh tensors built without a low-precision ``dtype=``
  (``torch.zeros(n, n)`` is float32), ``.float()`` / ``.double()`` results, non-float results, and the
  results of ops that CUDA autocast runs in float32 (``h.sum()``, ``h.norm()``, ``torch.softmax(h)``
  inside an enabled CUDA region), also through a local name bound only to such values;
* bfloat16 origins count as not float16 (bfloat16 has float32's range).

Use as ``analysis.derived(Fp16Values).verdict(expr)``.
"""

from __future__ import annotations

import ast

from .autocast_regions import dtype_of
from .low_precision import LowPrecisionFlow, cast_dtype
from .module_analysis import ModuleAnalysis, call_name
from .numeric_constants import reaching_bindings
from .torch_api import CUDA_FLOAT32_OPS, NON_FLOAT_RESULTS

FP16 = "fp16"
NOT_FP16 = "not-fp16"
UNKNOWN = "unknown"

# torch functions that build a tensor from Python values: float32 (or integer) unless given a dtype.
_FRESH_TENSOR_FUNCTIONS = frozenset(
    {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "linspace",
     "logspace", "eye"}
)
_MAX_DEPTH = 8


class Fp16Values:
    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self.flow = analysis.derived(LowPrecisionFlow)

    def verdict(self, expr: ast.AST) -> str:
        """``FP16`` (known float16, or low precision of a dtype that may be float16), ``NOT_FP16`` or
        ``UNKNOWN``."""
        if self.full_precision(expr):
            return NOT_FP16
        origin = self.flow.origin(expr)
        if origin is None:
            return UNKNOWN
        return NOT_FP16 if origin.dtype == "bfloat16" else FP16

    def full_precision(self, expr: ast.AST, depth: int = 0) -> bool:
        """Certainly not a float16 tensor where it stands."""
        if depth > _MAX_DEPTH:
            return False
        analysis = self.analysis
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.Name):
            values = reaching_bindings(expr, analysis)
            return bool(values) and all(self.full_precision(value, depth + 1) for value in values)
        if isinstance(expr, ast.Subscript):
            return self.full_precision(expr.value, depth + 1)
        if isinstance(expr, ast.Call):
            dtype = cast_dtype(expr, analysis)
            if dtype is not None:
                return dtype != "float16"
            name = call_name(expr)
            if name in NON_FLOAT_RESULTS:
                return True
            qualified = analysis.resolve(expr.func)
            if qualified is not None and qualified.startswith("torch.") and name in _FRESH_TENSOR_FUNCTIONS:
                return not self._may_be_fp16_dtype(expr)
            region = analysis.context(expr).innermost_region
            if region is not None and region.may_be_enabled:
                # autocast picks the precision here: float32 only for its float32 list (on CUDA)
                return name in CUDA_FLOAT32_OPS and not region.is_cpu
            if qualified is None and isinstance(expr.func, ast.Attribute) and name not in ("to", "type"):
                return self.full_precision(expr.func.value, depth + 1)  # x.view(...), x.masked_fill(...)
            if qualified is not None and qualified.startswith("torch.") and expr.args:
                return all(self.full_precision(arg, depth + 1) for arg in expr.args)  # torch.triu(mask)
            return False
        region = analysis.context(expr).innermost_region
        if region is not None and region.may_be_enabled:
            return False  # `a @ b` is float16 under autocast whatever a and b are
        if isinstance(expr, ast.BinOp):
            return self.full_precision(expr.left, depth + 1) and self.full_precision(expr.right, depth + 1)
        if isinstance(expr, ast.UnaryOp):
            return self.full_precision(expr.operand, depth + 1)
        return False

    def _may_be_fp16_dtype(self, call: ast.Call) -> bool:
        """A fresh-tensor call whose ``dtype=`` is float16 or not a literal."""
        dtype_node = next((kw.value for kw in call.keywords if kw.arg == "dtype"), None)
        if dtype_node is None:
            return False
        return literal_dtype(dtype_node, self.analysis) in ("float16", None)


def literal_dtype(node: ast.AST, analysis: ModuleAnalysis) -> str | None:
    """``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``, ``"other"`` for another torch dtype
    (``torch.long``, ``torch.bool``), or None when the dtype is not a literal (``x.dtype``)."""
    dtype = dtype_of(node, analysis.resolve)
    if dtype is not None:
        return dtype
    qualified = analysis.resolve(node)
    return "other" if qualified and qualified.startswith("torch.") else None
