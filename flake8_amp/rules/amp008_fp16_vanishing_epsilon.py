"""AMP008: an epsilon that rounds to zero in float16."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.literals import numeric_literal, vanishes_in_fp16
from ..analysis.low_precision import LowPrecisionFlow, cast_dtype
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.precision import BF16, module_precision
from .base import Finding, Rule, Severity

_NORMS = frozenset(
    {
        "torch.nn.LayerNorm",
        "torch.nn.GroupNorm",
        "torch.nn.RMSNorm",
        "torch.nn.functional.normalize",
        "torch.nn.functional.layer_norm",
        "torch.nn.functional.group_norm",
        "torch.nn.functional.rms_norm",
    }
)
_GUARDED_FUNCTIONS = frozenset({"sqrt", "rsqrt", "log", "log2", "log10"})


class Fp16VanishingEpsilon(Rule):
    code = "AMP008"
    name = "fp16-vanishing-epsilon"
    severity = Severity.MEDIUM
    summary = "An epsilon below float16's smallest subnormal (1e-8, 1e-12) guarding float16 math"
    why = "float16 rounds it to zero: the division, sqrt or log it was meant to guard returns inf or NaN"
    fix = "use an epsilon float16 can hold (>= 6.1e-5, e.g. 1e-5), or compute the guarded op in float32"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if analysis.derived(module_precision) == BF16:
            return
        casts_to_fp16 = any(cast_dtype(call, analysis) == "float16" for call in analysis.calls)
        for call in analysis.calls if casts_to_fp16 else ():
            if analysis.resolve(call.func) in _NORMS:
                eps = next((kw.value for kw in call.keywords if kw.arg == "eps"), None)
                if vanishes_in_fp16(numeric_literal(eps)):
                    yield self.finding(
                        eps,  # type: ignore[arg-type]
                        f"eps={ast.unparse(eps)} in {call_name(call)}() of a module cast to float16 rounds to zero",  # type: ignore[arg-type]
                        fix="use eps=1e-5 (LayerNorm's default) or keep the norm in float32",
                    )
        flow = None
        for node in analysis.nodes(ast.BinOp):
            if not isinstance(node.op, ast.Add):
                continue
            for eps, other in ((node.right, node.left), (node.left, node.right)):
                if not vanishes_in_fp16(numeric_literal(eps)) or not self._guards_a_singularity(node, analysis):
                    continue
                flow = flow or analysis.derived(LowPrecisionFlow)
                origin = flow.origin(other)
                low = origin is not None and origin.dtype != "bfloat16"
                region = analysis.context(node).innermost_region
                under_fp16_autocast = region is not None and region.may_be_enabled and region.may_be_fp16
                if low or under_fp16_autocast:
                    yield self.finding(
                        eps,
                        f"{ast.unparse(eps)} added to '{ast.unparse(other)[:30]}' rounds to zero in float16",
                    )

    @staticmethod
    def _guards_a_singularity(add: ast.BinOp, analysis: ModuleAnalysis) -> bool:
        """``a / (b + eps)``, ``sqrt(v + eps)``, ``torch.log(p + eps)``, ``(v + eps).rsqrt()``."""
        parent = analysis.parents.get(add)
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div) and parent.right is add:
            return True
        if isinstance(parent, ast.Call) and add in parent.args and call_name(parent) in _GUARDED_FUNCTIONS:
            return True
        if isinstance(parent, ast.Attribute) and parent.attr in _GUARDED_FUNCTIONS:
            return isinstance(analysis.parents.get(parent), ast.Call)
        return False
