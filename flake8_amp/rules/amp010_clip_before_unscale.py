"""AMP010: gradient clipping on scaled gradients."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Iterator

from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import CLIP, SCALED_BACKWARD, SCALER_STEP, UNSCALE, UPDATE, TrainingCalls
from ..fixes.edits import Fix, FixSafety
from ..runtime.evidence import ClipRecord, LineEvidence, RunEvidence, Outcome, Verdict, fmt
from ..analysis.source_text import excerpt
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule


class ClipBeforeUnscale(Rule):
    code = "AMP010"
    name = "clip-before-unscale"
    severity = Severity.HIGH
    summary = "clip_grad_norm_ / clip_grad_value_ on scaled gradients (no scaler.unscale_ first)"
    why = "the gradients are still multiplied by the loss scale (65536 by default): the clip threshold means nothing"
    fix = "call scaler.unscale_(optimizer) before clipping"
    training_only = True

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "inserts `scaler.unscale_(optimizer)` on the line before the clip, with the scaler and optimizer of "
        "the `scaler.step(optimizer)` that follows the clip in the same block."
    )
    fix_safety_reason = (
        "The clip then compares the real gradient norm with `max_norm`, as its arguments say, and "
        "`scaler.step` skips its own unscale. Not fixed where the step is not in the clip's block (a step "
        "under `if (i + 1) % accumulation == 0:` after a clip on every micro-batch needs the clip moved "
        "under that condition too), or where several optimizers step after it."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        analysis = module.analysis
        clip = analysis.statement_of(finding.node)
        block = _block_of(clip, analysis)
        training = analysis.derived(TrainingCalls)
        steps = [
            event.call
            for event in training.events(analysis.context(finding.node).function)
            if event.kind == SCALER_STEP and event.position > (clip.lineno, clip.col_offset)
            and analysis.statement_of(event.call) in block[block.index(clip) + 1 :]
        ]
        optimizers = {module.source(call.args[0]) for call in steps if call.args}
        if len(steps) < 1 or len(optimizers) != 1 or not isinstance(steps[0].func, ast.Attribute):
            return None
        scaler = module.source(steps[0].func.value)
        # Clips before the same step (by norm, then by value, other statements between them) need one
        # unscale_, before the first: a second unscale_ before the step raises. Each of their findings gets
        # the same edit. The walk stops at a statement that scales a backward, steps, unscales or updates.
        events = training.events(analysis.context(finding.node).function)
        flagged = {analysis.statement_of(f.node) for f in module.findings if f.code == self.code and f.node is not None}
        first = clip
        for earlier in reversed(block[: block.index(clip)]):
            if earlier in flagged:
                first = earlier
            elif any(event.kind in _ENDS_A_STEP and _inside(event.call, earlier) for event in events):
                break
        # An unscale_ already between the clips and the step (misplaced after a clip): another one raises.
        step = min((call.lineno, call.col_offset) for call in steps)
        if any(event.kind == UNSCALE and (first.lineno, first.col_offset) < event.position < step for event in events):
            return None
        edit = module.insert_statement_before(first, f"{scaler}.unscale_({optimizers.pop()})")
        return Fix((edit,)) if edit is not None else None

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


#: scaler events that end the stretch of statements one unscale_ serves
_ENDS_A_STEP = frozenset({SCALED_BACKWARD, SCALER_STEP, UNSCALE, UPDATE})


def _inside(node: ast.AST, statement: ast.stmt) -> bool:
    position = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    end = (statement.end_lineno, statement.end_col_offset)
    return (statement.lineno, statement.col_offset) <= position < end  # type: ignore[operator]


def _block_of(statement: ast.stmt, analysis: ModuleAnalysis) -> list[ast.stmt]:
    """The statement list that holds ``statement`` (a body, an ``else:``, a handler's body)."""
    parent = analysis.parents.get(statement)
    for field in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(parent, field, None)
        if isinstance(block, list) and statement in block:
            return block
    return [statement]
