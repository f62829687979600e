"""AMP011: scaler.update() / unscale_() out of step with scaler.step()."""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Iterator

from ..analysis.control_flow import ControlFlow, Fact, excluded_by_cuda_amp
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import (
    DIRECT_STEP,
    PLAIN_BACKWARD,
    SCALED_BACKWARD,
    SCALER_STEP,
    UNSCALE,
    UPDATE,
    WRAPPER_BACKWARD,
    ZERO_GRAD,
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
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
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
            direct_steps, backwards, zero_grads = [], [], []
            for event in training.events(scope):
                if event.kind == UPDATE and _sets_the_scale(event.call):
                    continue  # update(new_scale) writes the scale and reads no inf check: it needs no step()
                if event.kind in (SCALER_STEP, UPDATE, UNSCALE):
                    by_scaler[event.scaler].append(event)  # type: ignore[index]
                elif event.kind == DIRECT_STEP:
                    direct_steps.append(event)
                elif event.kind == ZERO_GRAD:
                    zero_grads.append(event)
                elif event.kind in _BACKWARDS:
                    backwards.append(event)
            for scaler, events in by_scaler.items():
                steps = [e for e in events if e.kind == SCALER_STEP]
                if not steps:
                    continue
                step_guards = _guards(steps, flow)
                updates = [e for e in events if e.kind == UPDATE]
                unscales = {e: self._unscale_pairing(e, steps + direct_steps, step_guards, flow) for e in events if e.kind == UNSCALE}
                # An unscale_() is in step when the step of its optimizer (by the scaler or by hand) runs
                # wherever it does; or when an update() after it does (update() resets it, so the next
                # pass may unscale_ again) and the gradients it unscaled are zeroed every pass instead of
                # accumulated into the next (SlowFast zeroes, unscale_s and update()s every pass, and steps
                # when told). Unscaled gradients that accumulate would be divided again at the next pass.
                zeroed = _guards(zero_grads, flow)
                updated = {e for e in unscales if _paired(e, _guards([u for u in updates if u.position > e.position], flow), flow)}
                in_step = {e for e, pairing in unscales.items() if _paired(e, pairing, flow) or e in updated and _paired(e, zeroed, flow)}
                # update() needs an inf check recorded since the last update: a step(), or an unscale_()
                # that is itself in step
                checks = _guards(steps + sorted(in_step, key=lambda e: e.position), flow)
                for event in events:
                    if event.kind == UPDATE:
                        if len(checks) > 1 and not any(flow.may_share_a_pass(b.call, event.call) for b in backwards):
                            # Several checks under different conditions (`if not freeze_a: step(a)`, `if not
                            # freeze_b: unscale_(b)`) and no backward in view: whether a pass that runs none
                            # of them trains at all is not visible here.
                            continue
                        paired = checks
                        if not _paired(event, paired, flow):
                            yield self.finding(
                                event.call,
                                f"{scaler}.update() runs on iterations where {scaler}.step() does not",
                                fix=f"move {scaler}.update() under the same condition as {scaler}.step()",
                            )
                    elif event.kind == UNSCALE and event not in in_step:
                        if not updates and _handed_in(scaler, scope):
                            # A helper handed the scaler (nerfstudio's optimizer_scaler_step_all): whoever
                            # calls it runs update(), and whether that is every pass is not visible here.
                            continue
                        why = (
                            "and the gradients it unscaled accumulate into the next pass, which unscales them again"
                            if event in updated
                            else f"nor {scaler}.update(): the next unscale_() before an update() raises"
                        )
                        yield self.finding(
                            event.call,
                            f"{scaler}.unscale_() runs on iterations where {scaler}.step() does not, {why}",
                            fix=f"move {scaler}.unscale_() under the same condition as {scaler}.step()",
                        )
                yield from self._repeated_updates([e for e in events if e.kind == UPDATE], backwards, scaler, flow)

    @staticmethod
    def _unscale_pairing(
        unscale: TrainingEvent, steps: list[TrainingEvent], step_guards: list[frozenset[Fact]], flow: ControlFlow
    ) -> list[frozenset[Fact]]:
        """unscale_(opt) pairs with a step of that optimizer: scaler.step(opt), or opt.step() when the
        caller steps it by hand on purpose."""
        own = [s for s in steps if unscale.optimizer is None or s.optimizer == unscale.optimizer]
        return _guards(own, flow) if own else step_guards

    def _repeated_updates(
        self, updates: list[TrainingEvent], backwards: list[TrainingEvent], scaler: str, flow: ControlFlow
    ) -> Iterator[Finding]:
        """A second update() on a pass that already ran one, with no backward between them: one update
        per optimizer after a shared backward, which moves the scale twice for one overflow. After a
        backward of its own
        (a GAN's generator, then its discriminator: scale, backward, step, update, twice) it closes a
        cycle of its own, which is how GradScaler is meant to be used."""
        seen: list[TrainingEvent] = []
        for update in updates:
            loop = flow.enclosing_loop(update.call)
            if any(
                loop is flow.enclosing_loop(other.call)
                and flow.may_share_a_pass(update.call, other.call)
                and not any(
                    other.position < backward.position < update.position and flow.may_share_a_pass(backward.call, update.call)
                    for backward in backwards
                )
                for other in seen
            ):
                yield self.finding(
                    update.call,
                    f"{scaler}.update() called again in the same iteration",
                    fix="step every optimizer with scaler.step(), then call scaler.update() once",
                )
            seen.append(update)


def _handed_in(scaler: str, scope: ast.AST | None) -> bool:
    """The scaler is a parameter of the function ``scope`` (``def step_all(self, grad_scaler)``): a helper
    its caller hands the scaler to, not a trainer that owns it (``self.scaler``, a module's scaler)."""
    if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    arguments = scope.args
    root = scaler.partition(".")[0]
    return root not in ("self", "cls") and root in {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)}


def _paired(event: TrainingEvent, guards: list[frozenset[Fact]], flow: ControlFlow) -> bool:
    """``event`` runs only where one of the ``guards`` holds."""
    facts = flow.assumptions(event.call)
    return any(own <= facts for own in guards)


def _guards(steps: list[TrainingEvent], flow: ControlFlow) -> list[frozenset[Fact]]:
    """The facts each step runs under, less those whose opposite another step runs under (``if clip:
    ... step() else: step()`` steps whatever ``clip`` is)."""
    facts = [flow.assumptions(step.call) for step in steps]
    every = set().union(*facts) if facts else set()

    def opposed(fact: Fact) -> bool:
        if fact.one_of:  # "not all of a, b, c": another step runs where all of them hold (an early exit)
            return any(all(part.negated in other for part in fact.one_of) for other in facts)
        return fact.negated in every

    # "not on a TPU" holds wherever the scaler runs at all, so it guards nothing
    return [frozenset(f for f in own if not opposed(f) and not excluded_by_cuda_amp(f)) for own in facts]


def _sets_the_scale(call: ast.Call) -> bool:
    """``scaler.update(new_scale)``: GradScaler takes the scale it is given, skips the inf checks that a plain
    update() asserts were recorded, and asserts nothing (icefall bumps a small scale this way after its
    step and update)."""
    given = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "new_scale"), None)
    return given is not None and not (isinstance(given, ast.Constant) and given.value is None)
