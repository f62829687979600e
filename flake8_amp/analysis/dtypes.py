"""Which dtype an expression names or produces: dtype literals, casts, fresh tensors, float16's limits.

``torch.float16`` and ``"float16"`` name float16; ``x.half()`` and ``x.to(torch.bfloat16)`` produce a
low-precision tensor; ``torch.zeros(n)`` builds a float32 one whatever its inputs were. The limits of
float16 come from :mod:`flake8_amp.runtime.formats` (pure Python, no torch), so that the linter and the
runtime agree on them.
"""

from __future__ import annotations

import ast
from typing import Callable, Optional

from ..runtime.formats import get_format
from .torch_api import DTYPE_NAMES, FLOAT32_CASTS, TENSOR_TYPE_DTYPES

Resolver = Callable[[ast.AST], Optional[str]]

_FLOAT16 = get_format("fp16")
FP16_MAX = _FLOAT16.max
#: float16 rounds to nearest even: values up to half its smallest subnormal (2**-25) are stored as 0.
FP16_ZERO_ROUNDING_LIMIT = _FLOAT16.smallest_subnormal / 2

# torch functions that build a tensor from Python values: float32 (or integer) unless given a dtype=,
# and never of their arguments' precision.
FRESH_TENSOR_FUNCTIONS = frozenset(
    {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "linspace",
     "logspace", "eye"}
)

# The methods cast_dtype() recognises: a rule looks only at calls of these names.
CAST_METHODS = ("half", "bfloat16", *sorted(FLOAT32_CASTS), "to", "type")


def dtype_of(node: ast.AST | None, resolve: Resolver) -> str | None:
    """The dtype a literal like ``torch.float16`` (or the string ``"float16"``) names, else None."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return DTYPE_NAMES.get(f"torch.{node.value}")
    if not isinstance(node, (ast.Name, ast.Attribute)):
        return None
    qualified = resolve(node)
    return DTYPE_NAMES.get(qualified) if qualified else None


def literal_dtype(node: ast.AST, resolve: Resolver) -> str | None:
    """``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``, ``"other"`` for another torch dtype
    (``torch.long``, ``torch.bool``), or None when the dtype is not a literal (``x.dtype``)."""
    dtype = dtype_of(node, resolve)
    if dtype is not None:
        return dtype
    qualified = resolve(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
    return "other" if qualified and qualified.startswith("torch.") else None


def cast_dtype(call: ast.Call, resolve: Resolver) -> str | None:
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
        for candidate in [*call.args, *(kw.value for kw in call.keywords if kw.arg == "dtype")]:
            dtype = dtype_of(candidate, resolve)
            if dtype is not None:
                return dtype
    if method == "type" and call.args:
        target = call.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            return TENSOR_TYPE_DTYPES.get(target.value)
        qualified = resolve(target) if isinstance(target, (ast.Name, ast.Attribute)) else None
        if qualified in TENSOR_TYPE_DTYPES:
            return TENSOR_TYPE_DTYPES[qualified]
        return dtype_of(target, resolve)
    return None


_DEVICE_ONLY_KEYWORDS = frozenset({"device", "non_blocking", "copy", "memory_format"})


def moves_device_only(call: ast.Call) -> bool:
    """``x.cuda()``, ``x.cpu()``, ``x.to(device)``, ``x.to("cuda", non_blocking=True)``: the value moves,
    its dtype stays. A ``.to(...)`` argument counts as a device when it is a string, an integer, a
    ``torch.device(...)`` or a name that says device, rank or gpu; ``x.to(other)`` takes ``other``'s
    dtype, and ``x.to(self.dtype)`` may be any."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr in ("cuda", "cpu"):
        return not any(kw.arg == "dtype" for kw in call.keywords)
    if func.attr != "to" or not call.args and not call.keywords:
        return False
    return all(_names_a_device(arg) for arg in call.args) and all(
        kw.arg in _DEVICE_ONLY_KEYWORDS for kw in call.keywords
    )


def _names_a_device(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, int)) and not isinstance(node.value, bool)
    if isinstance(node, ast.Call):
        func = node.func
        return isinstance(func, ast.Attribute) and func.attr == "device" or isinstance(func, ast.Name) and func.id == "device"
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    lowered = name.lower()
    return any(word in lowered for word in ("device", "rank", "gpu"))


def has_dtype_argument(call: ast.Call) -> bool:
    """``torch.sum(x, dtype=...)``: the op is told its dtype, so autocast and inputs do not decide it."""
    return any(keyword.arg == "dtype" for keyword in call.keywords)
