"""AMP003: a loss computed after the autocast block from the block's low-precision outputs."""

from __future__ import annotations

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
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
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
            low = [(arg, origin) for arg, origin in origins if origin is not None and origin.kind == "autocast"]
            if not low or not is_loss_call(call, analysis):
                continue
            summaries = analysis.derived(Summaries)
            # `compute_loss(outputs, labels)` whose first step is `outputs.float()`: that one is float32
            low = [(arg, origin) for arg, origin in low if not summaries.casts_argument_to_float32(call, arg)]
            if not low:
                continue
            arg, origin = low[0]
            if origin.without_grad:
                continue  # made under no_grad: a loss on it is a metric, nothing backpropagates through it
            facts = summaries.callee_facts(call)
            if facts is not None and facts.get("autocast_float32_ops") is False:
                continue  # elementwise ops and a mean (a PPO objective): autocast would not change them
            yield self.finding(
                call,
                f"loss computed outside autocast on '{excerpt(arg)}', a {origin.dtype_label} value from "
                f"the autocast block (line {origin.line})",
                fix=f"compute the loss inside the block, or pass {as_operand(arg)}.float()",
            )
