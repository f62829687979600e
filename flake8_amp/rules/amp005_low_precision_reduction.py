"""AMP005: a reduction accumulated in float16/bfloat16 outside autocast."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Iterator

from ..analysis.dtypes import literal_dtype
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.source_text import as_operand, excerpt
from ..fixes.edits import Edit, Fix, FixSafety
from ..runtime.evidence import LineEvidence, RunEvidence, Probe, Verdict, judge_numeric
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule

_REDUCTIONS = frozenset({"sum", "mean", "var", "std", "norm", "prod", "cumsum", "cumprod", "nansum", "nanmean"})
# torch's reductions accumulate float16 in float32 (CPU and CUDA alike); what overflows is a result
# beyond 65504. A mean lies within its finite inputs' range, so it cannot: only told dtype=float16
# (which casts the input first) is it reported. nanmean is not so kind: it is nansum / count, and the
# float16 nansum overflows (seen on CPU with torch 2.13: nanmean of 100,000 values of 60000 is inf).
_RESULT_STAYS_IN_RANGE = frozenset({"mean"})
# Reductions without a dtype= parameter: the fix is to cast first.
_NO_DTYPE_PARAMETER = frozenset({"var", "std"})


def reduction_call(call: ast.Call, analysis: ModuleAnalysis) -> tuple[str, ast.AST] | None:
    """(name, reduced value) for ``x.sum()`` or ``torch.sum(x)`` without ``dtype=``."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in _REDUCTIONS or func.attr in _RESULT_STAYS_IN_RANGE:
        return None
    if any(kw.arg == "dtype" for kw in call.keywords):
        return None
    qualified = analysis.resolve(func)
    if qualified is None:
        return func.attr, func.value
    if qualified == f"torch.{func.attr}" and call.args:
        return func.attr, call.args[0]
    return None


class LowPrecisionReduction(Rule):
    code = "AMP005"
    name = "low-precision-reduction"
    severity = Severity.MEDIUM
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "sum / var / norm / cumsum ... of a float16/bfloat16 tensor outside autocast"
    why = "a float16 result overflows past 65504; bfloat16 keeps only 8 bits"
    fix = "pass dtype=torch.float32, or .float() the tensor first"

    probes = frozenset({Probe.RECOMPUTE})

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "adds `dtype=torch.float32` to the reduction (`x.sum()` becomes `x.sum(dtype=torch.float32)`), casts "
        "first where it takes no dtype (`x.var()` becomes `x.float().var()`), and makes a float16 `dtype=` "
        "float32."
    )
    fix_safety_reason = (
        "That holds for a reduction over every element: its result is a 0-dimensional tensor, which does "
        "not change the dtype of the tensors it meets (`x16 * total` stays float16), and only gains precision. "
        "The fix is unsafe for a reduction along a dimension (`dim=`, `cumsum`): its float32 result meeting a "
        "float16 tensor in a "
        "matmul raises a dtype error that the original did not."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        node = finding.node
        call = module.analysis.parents.get(node) if isinstance(module.analysis.parents.get(node), ast.keyword) else node
        if call is not node:  # dtype=torch.float16: the keyword's value made float32
            reduction = module.analysis.parents[call]
            float32 = module.spelling("torch.float32")
            safety = FixSafety.SAFE if _reduces_every_element(reduction, module.analysis) else FixSafety.UNSAFE
            return Fix((module.replace(node, float32),), safety) if float32 else None
        found = reduction_call(node, module.analysis)
        if found is None:
            return None
        name, value = found
        safety = FixSafety.SAFE if _reduces_every_element(node, module.analysis) else FixSafety.UNSAFE
        if name not in _NO_DTYPE_PARAMETER:
            edit = module.float32_dtype_argument(node)
            return Fix((edit,), safety) if edit is not None else None
        start, end = module.start(value), module.end(value)
        if isinstance(value, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)):
            return Fix((Edit(end, end, ".float()"),), safety)
        return Fix((Edit(start, start, "("), Edit(end, end, ").float()")), safety)

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the reduction against float32 (not the other ops of the line): an overflowed or
        # imprecise accumulator; a NaN/Inf made at the line (forward or backward) confirms it too
        return judge_numeric(evidence, _REDUCTIONS)

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        flow = None
        for call in analysis.calls_named(*_REDUCTIONS):
            found = reduction_call(call, analysis)
            if found is None:
                accumulator = _float16_accumulator(call, analysis)
                if accumulator is not None and not _only_reported(call, analysis):
                    yield self.finding(
                        accumulator,
                        f"{call_name(call)}(dtype={excerpt(accumulator)}) gives a float16 result (inf past 65504) whatever its input",
                        fix="pass dtype=torch.float32 (cast the result afterwards if float16 is needed)",
                    )
                continue
            name, value = found
            context = analysis.context(call)
            if context.regions:
                continue  # inside autocast (or a region nested in it): AMP018's ground
            if _only_reported(call, analysis):
                continue  # `x.mean().item()` for a log line: a number shown, nothing computed with it
            flow = flow or analysis.derived(LowPrecisionFlow)
            origin = flow.origin(value)
            if origin is None:
                continue
            if origin.kind == "autocast" and origin.dtype == "bfloat16":
                continue  # bfloat16 has float32's range: a float32 accumulator's result cannot overflow it
            if origin.kind == "autocast":
                reason = f"a {origin.dtype_label} value from the autocast block (line {origin.line})"
            elif origin.dtype == "float16":
                reason = f"cast to float16 at line {origin.line}"
            else:
                continue
            text = excerpt(value)
            fix = f"use {as_operand(value)}.float().{name}()" if name in _NO_DTYPE_PARAMETER else self.fix
            yield self.finding(call, f"{name}() of '{text}', {reason}, accumulates in low precision", fix=fix)


def _float16_accumulator(call: ast.Call, analysis: ModuleAnalysis) -> ast.expr | None:
    """The ``dtype=`` argument of a reduction told to accumulate in float16 (``x.norm(dtype=torch.float16)``,
    ``torch.sum(x, dtype=torch.half)``), or None."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in _REDUCTIONS:
        return None
    qualified = analysis.resolve(func)
    if qualified is not None and qualified != f"torch.{func.attr}":
        return None  # numpy, math, another package
    dtype = next((kw.value for kw in call.keywords if kw.arg == "dtype"), None)
    return dtype if dtype is not None and literal_dtype(dtype, analysis.resolve) == "float16" else None


# Where a value only gets reported: turned into a Python number, printed, formatted or logged.
_REPORTING_METHODS = frozenset({"item", "tolist"})
_REPORTING_CALL = re.compile(r"^(print|float|int|str|repr|format|log|log_dict|log_metrics|add_scalar|add_scalars|set_postfix|info|debug|warning|write)$")


def _only_reported(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """``x.mean().item()``, ``print(x.sum())``, ``f"{x.mean()}"``, ``logger.log({"loss": x.mean()})``."""
    parents = analysis.parents
    parent = parents.get(call)
    if isinstance(parent, ast.Attribute) and parent.attr in _REPORTING_METHODS:
        return isinstance(parents.get(parent), ast.Call)
    node: ast.AST = call
    while isinstance(parent, (ast.Dict, ast.Tuple, ast.List, ast.keyword, ast.FormattedValue, ast.JoinedStr)):
        if isinstance(parent, ast.FormattedValue):
            return True
        node, parent = parent, parents.get(parent)
    return isinstance(parent, ast.Call) and node is not parent.func and bool(_REPORTING_CALL.match(call_name(parent) or ""))


def _reduces_every_element(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """``x.sum()``, ``torch.sum(x)``, ``x.norm(dtype=...)``: no dimension given, a 0-dimensional result."""
    if any(kw.arg in ("dim", "axis", None) for kw in call.keywords) or call_name(call) in ("cumsum", "cumprod"):
        return False
    function_form = analysis.resolve(call.func) is not None
    return len(call.args) == (1 if function_form else 0)
