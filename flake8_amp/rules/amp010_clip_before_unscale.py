"""AMP010: gradient clipping on scaled gradients."""

from __future__ import annotations

from typing import Iterator

from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import CLIP, SCALED_BACKWARD, SCALER_STEP, UNSCALE, TrainingCalls
from ..runtime.evidence import ClipRecord, LineEvidence, RunEvidence, Outcome, Verdict, fmt
from ..analysis.source_text import excerpt
from .base import Finding, Rule, Severity


class ClipBeforeUnscale(Rule):
    code = "AMP010"
    name = "clip-before-unscale"
    severity = Severity.HIGH
    summary = "clip_grad_norm_ / clip_grad_value_ on scaled gradients (no scaler.unscale_ first)"
    why = "the gradients are still multiplied by the loss scale (65536 by default): the clip threshold means nothing"
    fix = "call scaler.unscale_(optimizer) before clipping"
    training_only = True

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # A clip while the gradients still carry the loss scale compares scale x norm with max_norm:
        # confirmed when that changed what the clip did (it clipped, or should have and did not).
        scaled = [clip for clip in evidence.clips if clip.scale is not None and clip.scale != 1.0]
        by_value = [clip for clip in scaled if clip.total_norm is None]
        if by_value:
            clip = max(by_value, key=lambda c: c.scale or 0.0)
            return Verdict(Outcome.CONFIRMED, f"step {clip.step}: clip_value={fmt(clip.max_value)} applied to "
                                              f"gradients scaled by {fmt(clip.scale)}")
        acted = [clip for clip in scaled if max(_norms(clip)) > clip.max_value]
        if acted:
            clip = max(acted, key=lambda c: c.scale or 0.0)
            norm, unscaled = _norms(clip)
            limit = clip.max_value
            if norm <= limit:
                effect = f"max_norm={fmt(limit)} never applied"
            elif unscaled <= limit:
                effect = f"it shrank gradients whose real norm is under max_norm={fmt(limit)} by {fmt(norm / limit)}x"
            else:
                effect = f"it clipped to max_norm={fmt(limit)} in scaled units, {fmt(limit / (clip.scale or 1.0))} unscaled"
            return Verdict(Outcome.CONFIRMED, f"step {clip.step}: clip saw a total norm of {fmt(norm)} at scale "
                                              f"{fmt(clip.scale)} ({fmt(unscaled)} unscaled): {effect}")
        if scaled:
            largest = max(scaled, key=lambda c: c.total_norm or 0.0)
            return Verdict(Outcome.NOT_OBSERVED, f"{len(scaled)} clips on scaled gradients, but the clip never acted: "
                                                 f"total norm at most {fmt(largest.total_norm)} at scale "
                                                 f"{fmt(largest.scale)}, under max_norm={fmt(largest.max_value)}")
        if evidence.clips:
            norms = [clip.total_norm for clip in evidence.clips if clip.total_norm is not None]
            margin = f": total norm at most {fmt(max(norms))}, max_norm={fmt(evidence.clips[0].max_value)}" if norms else ""
            return Verdict(Outcome.NOT_OBSERVED, f"{len(evidence.clips)} clips, all on unscaled gradients "
                                                 f"(the GradScaler was disabled or unscale_ ran first){margin}")
        return Verdict(Outcome.NOT_REACHED, f"the line ran {evidence.executions} times but no clip ran")

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
                if clip.via is None:
                    name = analysis.resolve(clip.call.func).rpartition(".")[2]  # type: ignore[union-attr]
                else:
                    name = f"{excerpt(clip.call.func, limit=None)}(), which calls {clip.via},"
                yield self.finding(
                    clip.call, f"{name} between scaler.scale(loss).backward() and scaler.step() clips scaled gradients"
                )


def _norms(clip: ClipRecord) -> tuple[float, float]:
    """The total norm the clip saw on scaled gradients, and the one it would have seen on unscaled ones."""
    norm = clip.total_norm or 0.0
    return norm, norm / clip.scale if clip.scale else norm
