"""AMP004: softmax / log_softmax / softmin run in float16/bfloat16 because autocast does not upcast them."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Iterator

from ..analysis.dtypes import cast_dtype
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.source_text import excerpt
from ..fixes.edits import Fix, FixSafety
from ..runtime.evidence import LineEvidence, RunEvidence, Probe, Verdict, judge_numeric
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule

_SOFTMAX_NAMES = frozenset({"softmax", "log_softmax", "softmin"})
_SOFTMAX_FUNCTIONS = frozenset(
    {
        "torch.softmax",
        "torch.log_softmax",
        "torch.special.softmax",
        "torch.special.log_softmax",
        "torch.nn.functional.softmax",
        "torch.nn.functional.log_softmax",
        "torch.nn.functional.softmin",
    }
)


def softmax_call(call: ast.Call, analysis: ModuleAnalysis) -> tuple[str, ast.AST] | None:
    """(name, input) for a softmax-family call without a dtype, in function or method form."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in _SOFTMAX_NAMES:
        return None
    if any(kw.arg == "dtype" for kw in call.keywords):
        return None
    qualified = analysis.resolve(func)
    if qualified in _SOFTMAX_FUNCTIONS:
        # torch.softmax(input, dim, dtype); F.softmax(input, dim, _stacklevel, dtype)
        dtype_position = 3 if qualified.startswith("torch.nn.functional.") else 2
        if len(call.args) > dtype_position or not call.args:
            return None
        return func.attr, call.args[0]
    if qualified is None and len(call.args) < 2:
        return func.attr, func.value  # x.softmax(dim[, dtype])
    return None


#: the ops verify compares with float32 at a flagged line
SOFTMAX_OPS = frozenset({"softmax", "log_softmax", "softmin"})


class LowPrecisionSoftmax(Rule):
    code = "AMP004"
    name = "low-precision-softmax"
    severity = Severity.MEDIUM
    summary = "softmax / log_softmax / softmin on a float16/bfloat16 input that autocast does not upcast"
    why = "softmax in float16/bfloat16 loses the small probabilities; log_softmax of them turns into -inf"
    fix = "pass dtype=torch.float32"

    probes = frozenset({Probe.RECOMPUTE})

    fix_safety = FixSafety.SAFE
    fix_summary = "adds `dtype=torch.float32` to the call."
    fix_safety_reason = (
        "That holds inside an enabled autocast region: the result becomes float32 where it was bfloat16 "
        "or float16, and autocast casts it again for the low-precision ops that follow (matmul, linear). "
        "Elsewhere (after a cast, inside `autocast(enabled=False)`) the fix is unsafe: a float32 result meeting a "
        "float16 tensor in a matmul there raises a dtype error that the original did not."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        edit = module.float32_dtype_argument(finding.node)
        if edit is None:
            return None
        safe = module.analysis.context(finding.node).in_enabled_autocast
        return Fix((edit,), FixSafety.SAFE if safe else FixSafety.UNSAFE)

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        return judge_numeric(evidence, SOFTMAX_OPS)

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        flow = None
        for call in analysis.calls_named(*_SOFTMAX_NAMES):
            found = softmax_call(call, analysis)
            if found is None:
                continue
            name, value = found
            context = analysis.context(call)
            region = context.innermost_region
            reason = None
            if region is not None and region.may_be_enabled:
                if region.is_cpu and not _is_full_precision_cast(value, analysis):
                    reason = f"CPU autocast runs {name} in {region.effective_dtype}, it does not upcast it"
            else:
                flow = flow or analysis.derived(LowPrecisionFlow)
                origin = flow.origin(value)
                if origin is not None and origin.kind == "autocast" and context.in_disabled_autocast:
                    reason = f"it is {origin.dtype_label} from the enclosing autocast region and autocast is off here"
                elif origin is not None and origin.kind == "cast":
                    reason = f"it was cast to {origin.dtype_label} at line {origin.line}"
            if reason:
                yield self.finding(call, f"{name} without dtype= on '{excerpt(value)}': {reason}")


def _is_full_precision_cast(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    return isinstance(node, ast.Call) and cast_dtype(node, analysis.resolve) in ("float32", "float64")

