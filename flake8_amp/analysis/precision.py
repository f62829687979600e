"""Which low-precision format a module works in: configured, or inferred from its dtypes."""

from __future__ import annotations

import ast

from .module_analysis import ModuleAnalysis
from .torch_api import DTYPE_NAMES

_DTYPE_ATTRIBUTES = frozenset(name.rpartition(".")[2] for name in DTYPE_NAMES)
FP16 = "fp16"
BF16 = "bf16"


def module_precision(analysis: ModuleAnalysis) -> str | None:
    """``"fp16"``, ``"bf16"``, or None when the module shows no low-precision dtype at all.

    ``--amp-precision`` wins. Otherwise any float16 evidence (an fp16 autocast region, including the
    CUDA default dtype; a ``torch.float16`` / ``torch.half`` mention; ``.half()``) makes it fp16, since
    fp16's narrow range is what the range rules guard; only bfloat16 evidence makes it bf16. A region
    whose device and dtype are not literal (``autocast(device.type)``) is no evidence either way.
    Use as ``analysis.derived(module_precision)``.
    """
    if analysis.configured_precision:
        return analysis.configured_precision
    seen = set()
    for region in analysis.regions:
        if region.effective_dtype is not None:
            seen.add(region.effective_dtype)
    for node in analysis.nodes(ast.Attribute):
        if node.attr not in _DTYPE_ATTRIBUTES:
            continue
        dtype = DTYPE_NAMES.get(analysis.resolve(node) or "")
        if dtype is not None:
            seen.add(dtype)
    for call in analysis.calls_named("half", "bfloat16"):
        func = call.func
        if isinstance(func, ast.Attribute) and not call.args:
            if func.attr == "half":
                seen.add("float16")
            elif func.attr == "bfloat16":
                seen.add("bfloat16")
    if "float16" in seen:
        return FP16
    if "bfloat16" in seen:
        return BF16
    return None
