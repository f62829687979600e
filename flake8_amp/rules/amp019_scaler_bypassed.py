"""AMP019: a GradScaler in play, but backward() or optimizer.step() bypass it."""

from __future__ import annotations

from typing import Iterator

from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import (
    DIRECT_STEP,
    PLAIN_BACKWARD,
    SCALED_BACKWARD,
    SCALER_STEP,
    UNSCALE,
    ZERO_GRAD,
    TrainingCalls,
    TrainingEvent,
)
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, fmt
from .base import Finding, Rule, Severity

_RECIPE = (SCALED_BACKWARD, SCALER_STEP, UNSCALE)


class ScalerBypassed(Rule):
    code = "AMP019"
    name = "scaler-bypassed"
    severity = Severity.HIGH
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "GradScaler in play but loss.backward() on an unscaled loss, or optimizer.step() instead of scaler.step()"
    why = "the scaler's unscaling and inf check are skipped: steps on scaled, possibly inf, gradients"
    fix = "use scaler.scale(loss).backward() and scaler.step(optimizer)"
    training_only = True

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        unscaled = [c for c in evidence.calls_of("backward") if c.scaled is False]
        if unscaled and run.scaler_enabled:
            return Verdict(Outcome.CONFIRMED, f"step {unscaled[0].step}: backward ran on a loss the GradScaler did not "
                                              f"scale ({len(unscaled)} times)")
        direct = [c for c in evidence.calls_of("optimizer_step") if c.scaled]
        if direct:
            skipped = f"; the GradScaler skipped {len(run.skipped_steps)} steps" if run.skipped_steps else ""
            return Verdict(Outcome.CONFIRMED, f"step {direct[0].step}: the optimizer stepped on gradients still "
                                              f"scaled by {fmt(direct[0].scale)}, with no inf check "
                                              f"({len(direct)} times){skipped}")
        if not run.scaler_enabled:
            return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: the GradScaler was disabled in this run")
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: every backward and step here saw scaled "
                                             "gradients handled by the scaler")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        flow = analysis.derived(ControlFlow)
        for scope in training.scopes_with_events:
            events = training.events(scope)
            recipe = [e for e in events if e.kind in _RECIPE]
            if not recipe:
                continue
            for event in events:
                same_pass = [r for r in recipe if flow.may_share_a_pass(r.call, event.call)]
                if event.kind == PLAIN_BACKWARD and same_pass and not _dry_run(event, events, flow):
                    yield self.finding(
                        event.call, "backward() on an unscaled loss while a GradScaler is in play",
                        fix="call scaler.scale(loss).backward()",
                    )
                elif event.kind == DIRECT_STEP and self._scaled_before(event, same_pass):
                    optimizer = event.optimizer
                    yield self.finding(
                        event.call,
                        f"{optimizer}.step() called directly on gradients a GradScaler scaled",
                        fix=f"call scaler.step({optimizer}) (it unscales and skips inf steps)",
                    )

    @staticmethod
    def _scaled_before(step: TrainingEvent, same_pass: list[TrainingEvent]) -> bool:
        """A scaled backward before the step, or the scaler stepping or unscaling an optimizer in the
        same pass (its gradients came from a scaled loss, wherever that loss was scaled)."""
        return any(
            r.kind == SCALED_BACKWARD and r.position < step.position or r.kind in (SCALER_STEP, UNSCALE)
            for r in same_pass
        )


def _dry_run(backward: TrainingEvent, events: list[TrainingEvent], flow: ControlFlow) -> bool:
    """A warm-up backward whose gradients are zeroed before any step (``loss.backward();
    optimizer.zero_grad()``, or the model's ``model.zero_grad()``): nothing is stepped on them."""
    for event in events:
        if event.position <= backward.position or not flow.may_share_a_pass(event.call, backward.call):
            continue
        if event.kind == ZERO_GRAD:
            return True
        if event.kind in (DIRECT_STEP, SCALER_STEP, SCALED_BACKWARD, PLAIN_BACKWARD):
            return False
    return False
