"""AMP003: a loss computed after the autocast block from the block's low-precision outputs."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.dtypes import FP16_MAX
from ..analysis.losses import is_loss_call
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.summaries import Summaries
from ..analysis.source_text import as_operand, excerpt
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Probe, Verdict, fmt, judge_numeric
from .base import Finding, Rule, Severity


class LossOutsideAutocast(Rule):
    code = "AMP003"
    name = "loss-outside-autocast"
    severity = Severity.HIGH
    summary = "Loss computed after the autocast block on its float16/bfloat16 outputs"
    why = "outside autocast the loss runs in the inputs' float16/bfloat16 instead of the float32 autocast would pick"
    fix = "compute the loss inside the autocast block, or .float() its inputs"
    training_only = True

    probes = frozenset({Probe.RECOMPUTE})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        verdict = judge_numeric(evidence)
        if verdict.outcome is Outcome.CONFIRMED:
            return verdict
        # A float16 loss's own gradient is the loss scale: above 65504 it is inf, every step, until the
        # GradScaler has backed off below float16's range.
        float16_loss = any("float16" in r.output_dtypes for r in evidence.ops.values())
        if float16_loss and run.scales and max(run.scales) > FP16_MAX:
            return Verdict(Outcome.CONFIRMED, f"the loss was float16 and the GradScaler's scale reached "
                                              f"{fmt(max(run.scales))}: its gradient overflows float16 (max 65504)")
        return verdict

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.uses_autocast:
            return
        flow = analysis.derived(LowPrecisionFlow)
        for call in analysis.calls:
            if analysis.context(call).in_enabled_autocast or not call.args and not call.keywords:
                continue
            origins = [(arg, flow.origin(arg)) for arg in [*call.args, *(kw.value for kw in call.keywords)]]
            found = next(((arg, origin) for arg, origin in origins if origin is not None and origin.kind == "autocast"), None)
            if found is None or not is_loss_call(call, analysis):
                continue
            arg, origin = found
            if origin.without_grad:
                continue  # made under no_grad: a loss on it is a metric, nothing backpropagates through it
            if _cast_by_the_callee(call, arg, analysis):
                continue  # `compute_loss(outputs, labels)` whose first step is `outputs.float()`
            facts = analysis.derived(Summaries).callee_facts(call)
            if facts is not None and facts.get("autocast_float32_ops") is False:
                continue  # elementwise ops and a mean (a PPO objective): autocast would not change them
            yield self.finding(
                call,
                f"loss computed outside autocast on '{excerpt(arg)}', a {origin.dtype_label} value from "
                f"the autocast block (line {origin.line})",
                fix=f"compute the loss inside the block, or pass {as_operand(arg)}.float()",
            )


def _cast_by_the_callee(call: ast.Call, arg: ast.expr, analysis: ModuleAnalysis) -> bool:
    """The callee (of this module or, through the project index, another) reads the parameter ``arg`` is
    passed to only through ``.float()`` (or another cast to float32): the loss runs in float32."""
    if arg not in call.args:
        return False
    facts = analysis.derived(Summaries).callee_facts(call)
    return bool(facts) and call.args.index(arg) in (facts.get("float32_parameters") or ())
