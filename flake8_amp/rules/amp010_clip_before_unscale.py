"""AMP010: gradient clipping on scaled gradients."""

from __future__ import annotations

from typing import Iterator

from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import CLIP, SCALED_BACKWARD, SCALER_STEP, UNSCALE, TrainingCalls
from .base import Finding, Rule, Severity


class ClipBeforeUnscale(Rule):
    code = "AMP010"
    name = "clip-before-unscale"
    severity = Severity.HIGH
    summary = "clip_grad_norm_ / clip_grad_value_ on scaled gradients (no scaler.unscale_ first)"
    why = "the gradients are still multiplied by the loss scale (65536 by default): the clip threshold means nothing"
    fix = "call scaler.unscale_(optimizer) before clipping"
    training_only = True

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        flow = analysis.derived(ControlFlow)
        for scope in training.scopes_with_events:
            events = training.events(scope)
            for clip in events:
                if clip.kind != CLIP:
                    continue
                # On the clip's own path: the scaled backward before it, no unscale_ or step in between,
                # and a scaler.step after it.
                on_path = [e for e in events if e.kind in (SCALED_BACKWARD, UNSCALE, SCALER_STEP) and flow.may_share_a_pass(e.call, clip.call)]
                before = [e for e in on_path if e.position < clip.position]
                after = [e for e in on_path if e.position > clip.position]
                latest = next((e for e in reversed(before) if e.kind in (SCALED_BACKWARD, SCALER_STEP)), None)
                if latest is None or latest.kind != SCALED_BACKWARD:
                    continue  # no scaled backward since the last step: these gradients are not scaled
                if any(e.kind == UNSCALE and e.position > latest.position for e in before):
                    continue
                if not any(e.kind == SCALER_STEP for e in after):
                    continue
                name = analysis.resolve(clip.call.func).rpartition(".")[2]  # type: ignore[union-attr]
                yield self.finding(
                    clip.call, f"{name} between scaler.scale(loss).backward() and scaler.step() clips scaled gradients"
                )
