"""AMP011: scaler.update() / unscale_() out of step with scaler.step()."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from ..analysis.control_flow import ControlFlow, Fact
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import DIRECT_STEP, SCALER_STEP, UNSCALE, UPDATE, TrainingCalls, TrainingEvent
from .base import Finding, Rule, Severity


class ScalerUpdateOutOfStep(Rule):
    code = "AMP011"
    name = "scaler-update-out-of-step"
    severity = Severity.HIGH
    summary = "scaler.update() / unscale_() not under the same condition as scaler.step(), or update() twice per iteration"
    why = "update() without a step() raises 'No inf checks were recorded'; several updates per iteration shrink the scale too fast"
    fix = "call unscale_/step/update together under the accumulation condition, and update() once after all step() calls"
    training_only = True

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        flow = analysis.derived(ControlFlow)
        for scope in training.scopes_with_events:
            by_scaler: dict[str, list[TrainingEvent]] = defaultdict(list)
            direct_steps = []
            for event in training.events(scope):
                if event.kind in (SCALER_STEP, UPDATE, UNSCALE):
                    by_scaler[event.scaler].append(event)  # type: ignore[index]
                elif event.kind == DIRECT_STEP:
                    direct_steps.append(event)
            for scaler, events in by_scaler.items():
                steps = [e for e in events if e.kind == SCALER_STEP]
                if not steps:
                    continue
                step_guards = _guards(steps, flow)
                for event in events:
                    if event.kind == UPDATE:
                        paired = step_guards
                    elif event.kind == UNSCALE:
                        # unscale_(opt) pairs with a step of that optimizer: scaler.step(opt), or opt.step()
                        # when the caller steps it by hand on purpose.
                        own = [s for s in steps + direct_steps if event.optimizer is None or s.optimizer == event.optimizer]
                        paired = _guards(own, flow) if own else step_guards
                    else:
                        continue
                    facts = flow.assumptions(event.call)
                    if not any(guards <= facts for guards in paired):
                        method = "update" if event.kind == UPDATE else "unscale_"
                        yield self.finding(
                            event.call,
                            f"{scaler}.{method}() runs on iterations where {scaler}.step() does not",
                            fix=f"move {scaler}.{method}() under the same condition as {scaler}.step()",
                        )
                yield from self._repeated_updates([e for e in events if e.kind == UPDATE], scaler, flow)

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


def _guards(steps: list[TrainingEvent], flow: ControlFlow) -> list[frozenset[Fact]]:
    """The facts each step runs under, less those whose opposite another step runs under (``if clip:
    ... step() else: step()`` steps whatever ``clip`` is)."""
    facts = [flow.assumptions(step.call) for step in steps]
    every = set().union(*facts) if facts else set()
    return [frozenset(f for f in own if f.negated not in every) for own in facts]
