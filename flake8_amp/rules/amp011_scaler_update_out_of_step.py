"""AMP011: scaler.update() / unscale_() out of step with scaler.step()."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from ..analysis.control_flow import ControlFlow, Fact
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import (
    DIRECT_STEP,
    PLAIN_BACKWARD,
    SCALED_BACKWARD,
    SCALER_STEP,
    UNSCALE,
    UPDATE,
    WRAPPER_BACKWARD,
    TrainingCalls,
    TrainingEvent,
)
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, crashed_here
from .base import Finding, Rule, Severity


_BACKWARDS = (SCALED_BACKWARD, PLAIN_BACKWARD, WRAPPER_BACKWARD)


class ScalerUpdateOutOfStep(Rule):
    code = "AMP011"
    name = "scaler-update-out-of-step"
    severity = Severity.HIGH
    summary = "scaler.update() / unscale_() not under the same condition as scaler.step(), or update() twice per iteration"
    why = "update() without a step() raises 'No inf checks were recorded'; several updates per iteration shrink the scale too fast"
    fix = "call unscale_/step/update together under the accumulation condition, and update() once after all step() calls"
    training_only = True

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # GradScaler.update() with no step() since the last update raises "No inf checks were recorded".
        verdict = crashed_here(evidence)
        if verdict is not None:
            return verdict
        updates = evidence.calls_of("update")
        enabled = [call for call in updates if call.scale is not None]  # a disabled scaler's update() is a no-op
        without = [call for call in enabled if call.detail is False]
        if without:
            return Verdict(Outcome.CONFIRMED, f"step {without[0].step}: update() ran with no scaler.step() before it "
                                              f"({len(without)} of {len(updates)} updates)")
        if updates and not enabled:
            return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: {len(updates)} updates of a disabled "
                                                 "GradScaler (no-ops)")
        if updates:
            return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: {len(updates)} updates, each after a "
                                                 "scaler.step()")
        unscales = evidence.calls_of("unscale_")
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: {len(unscales)} unscale_() calls, none raised")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        flow = analysis.derived(ControlFlow)
        for scope in training.scopes_with_events:
            by_scaler: dict[str, list[TrainingEvent]] = defaultdict(list)
            direct_steps, backwards = [], []
            for event in training.events(scope):
                if event.kind in (SCALER_STEP, UPDATE, UNSCALE):
                    by_scaler[event.scaler].append(event)  # type: ignore[index]
                elif event.kind == DIRECT_STEP:
                    direct_steps.append(event)
                elif event.kind in _BACKWARDS:
                    backwards.append(event)
            for scaler, events in by_scaler.items():
                steps = [e for e in events if e.kind == SCALER_STEP]
                if not steps:
                    continue
                step_guards = _guards(steps, flow)
                unscales = {e: self._unscale_pairing(e, steps + direct_steps, step_guards, flow) for e in events if e.kind == UNSCALE}
                # update() needs an inf check recorded since the last update: a step(), or an unscale_()
                # that is itself in step with the step of its optimizer (by the scaler or by hand)
                checks = _guards(steps + [e for e, pairing in unscales.items() if _paired(e, pairing, flow)], flow)
                for event in events:
                    if event.kind == UPDATE:
                        if len(checks) > 1 and not any(flow.may_share_a_pass(b.call, event.call) for b in backwards):
                            # Several checks under different conditions (`if not freeze_a: step(a)`, `if not
                            # freeze_b: unscale_(b)`) and no backward in view: whether a pass that runs none
                            # of them trains at all is not visible here.
                            continue
                        paired = checks
                    elif event.kind == UNSCALE:
                        paired = unscales[event]
                    else:
                        continue
                    if not _paired(event, paired, flow):
                        method = "update" if event.kind == UPDATE else "unscale_"
                        yield self.finding(
                            event.call,
                            f"{scaler}.{method}() runs on iterations where {scaler}.step() does not",
                            fix=f"move {scaler}.{method}() under the same condition as {scaler}.step()",
                        )
                yield from self._repeated_updates([e for e in events if e.kind == UPDATE], scaler, flow)

    @staticmethod
    def _unscale_pairing(
        unscale: TrainingEvent, steps: list[TrainingEvent], step_guards: list[frozenset[Fact]], flow: ControlFlow
    ) -> list[frozenset[Fact]]:
        """unscale_(opt) pairs with a step of that optimizer: scaler.step(opt), or opt.step() when the
        caller steps it by hand on purpose."""
        own = [s for s in steps if unscale.optimizer is None or s.optimizer == unscale.optimizer]
        return _guards(own, flow) if own else step_guards

    def _repeated_updates(self, updates: list[TrainingEvent], scaler: str, flow: ControlFlow) -> Iterator[Finding]:
        seen: list[TrainingEvent] = []
        for update in updates:
            loop = flow.enclosing_loop(update.call)
            if any(loop is flow.enclosing_loop(other.call) and flow.may_share_a_pass(update.call, other.call) for other in seen):
                yield self.finding(
                    update.call,
                    f"{scaler}.update() called again in the same iteration",
                    fix="step every optimizer with scaler.step(), then call scaler.update() once",
                )
            seen.append(update)


def _paired(event: TrainingEvent, guards: list[frozenset[Fact]], flow: ControlFlow) -> bool:
    """``event`` runs only where one of the ``guards`` holds."""
    facts = flow.assumptions(event.call)
    return any(own <= facts for own in guards)


def _guards(steps: list[TrainingEvent], flow: ControlFlow) -> list[frozenset[Fact]]:
    """The facts each step runs under, less those whose opposite another step runs under (``if clip:
    ... step() else: step()`` steps whatever ``clip`` is)."""
    facts = [flow.assumptions(step.call) for step in steps]
    every = set().union(*facts) if facts else set()
    return [frozenset(f for f in own if f.negated not in every) for own in facts]
