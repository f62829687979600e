"""AMP016: float16 CUDA autocast and backward() with no GradScaler."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.summaries import Summaries
from ..analysis.training_calls import PLAIN_BACKWARD, SCALED_BACKWARD, WRAPPER_BACKWARD, TrainingCalls
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Probe, Verdict, fmt, nonfinite_here, pct
from .base import Finding, Rule, Severity


#: verify: the fraction of non-zero float16 gradients that may be subnormal unremarked
SUBNORMAL_THRESHOLD = 0.01


class Fp16WithoutGradScaler(Rule):
    code = "AMP016"
    name = "fp16-without-grad-scaler"
    severity = Severity.MEDIUM
    summary = "float16 CUDA autocast in a function that calls backward(), with no GradScaler"
    why = "float16 gradients below 6e-8 flush to zero: without loss scaling small gradients silently vanish"
    fix = "scale the loss with torch.amp.GradScaler('cuda'), or autocast to torch.bfloat16"
    training_only = True
    quiet_in_bf16 = True

    probes = frozenset({Probe.GRADIENT_RANGE})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # Without a scaler, small float16 gradients go subnormal (losing bits) and then flush to zero:
        # confirmed when at least 1% of the non-zero float16 gradients are subnormal, or one is NaN/Inf.
        verdict = nonfinite_here(evidence)
        if verdict is not None:
            return verdict
        grads = evidence.gradients
        if not grads.values:
            return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: no float16 gradient was computed here")
        text = (f"{pct(grads.subnormal, grads.nonzero)} of {grads.nonzero} non-zero float16 gradients were below "
                f"6.1e-05 (subnormal), smallest |g| {fmt(grads.min_abs_nonzero)}")
        if grads.nonfinite:
            return Verdict(Outcome.CONFIRMED, f"{grads.nonfinite} gradients were NaN/Inf; {text}")
        if grads.nonzero and grads.subnormal / grads.nonzero >= SUBNORMAL_THRESHOLD:
            return Verdict(Outcome.CONFIRMED, text)
        return Verdict(Outcome.NOT_OBSERVED, f"{text} (threshold {SUBNORMAL_THRESHOLD:.0%})")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.uses_autocast:
            return
        training = analysis.derived(TrainingCalls)
        if training.uses_grad_scaler or training.scalers:
            return
        flow = analysis.derived(ControlFlow)
        summaries = analysis.derived(Summaries)
        for region in analysis.regions:
            if region.device_type != "cuda" or region.effective_dtype != "float16" or region.enabled is False:
                continue
            scope = region.node if isinstance(region.node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            scope = scope or analysis.context(region.node).function
            # The backward calls that can run in the same pass as the region, on its low-precision path.
            on_path = [e for e in training.events(scope) if flow.may_share_a_pass(e.call, region.node)]
            if any(e.kind in (SCALED_BACKWARD, WRAPPER_BACKWARD) for e in on_path):
                continue  # the loss is handed to something that scales it
            plain = [e for e in on_path if e.kind == PLAIN_BACKWARD and not flow.on_float32_path(e.call)]
            if not plain or self._scaled_by_a_callee(scope, region, flow, summaries, analysis):
                continue
            yield self.finding(region.node, "float16 CUDA autocast with backward() and nothing that scales the loss")

    @staticmethod
    def _scaled_by_a_callee(scope, region, flow: ControlFlow, summaries: Summaries, analysis: ModuleAnalysis) -> bool:
        """``loss_scaler(loss, optimizer, ...)``, ``trainer.backward(loss)``: a function or object (here or in
        another module) that scales the loss."""
        body = scope.body if scope is not None else analysis.tree.body
        for call in summaries.calls_in(body):
            if not flow.may_share_a_pass(call, region.node):
                continue
            facts = summaries.callee_facts(call)
            if facts is not None and facts.get("scales_loss"):
                return True
        return False
