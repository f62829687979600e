"""AMP011: scaler.update() / unscale_() out of step with scaler.step()."""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import Branch, TrainingCalls, branches, mutually_exclusive
from .base import Finding, Rule, Severity


class ScalerUpdateOutOfStep(Rule):
    code = "AMP011"
    name = "scaler-update-out-of-step"
    severity = Severity.HIGH
    summary = "scaler.update() / unscale_() not under the same condition as scaler.step(), or update() twice per iteration"
    why = "update() without a step() raises 'No inf checks were recorded'; several updates per iteration shrink the scale too fast"
    fix = "call unscale_/step/update together under the accumulation condition, and update() once after all step() calls"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        by_scope: dict[tuple[ast.AST | None, str], dict[str, list[ast.Call]]] = defaultdict(lambda: defaultdict(list))
        for call in analysis.calls_named("step", "update", "unscale_"):
            scaler = training.scaler_method(call, "step", "update", "unscale_")
            if scaler:
                by_scope[(analysis.context(call).function, scaler)][call.func.attr].append(call)  # type: ignore[attr-defined]
        for (_, scaler), calls in by_scope.items():
            steps = calls.get("step", [])
            if not steps:
                continue
            step_guards = [_guards(step, analysis, steps) for step in steps]
            for method in ("update", "unscale_"):
                for call in calls.get(method, []):
                    own = set(branches(call, analysis))
                    if not any(guards <= own for guards in step_guards):
                        yield self.finding(
                            call,
                            f"{scaler}.{method}() runs on iterations where {scaler}.step() does not",
                            fix=f"move {scaler}.{method}() under the same condition as {scaler}.step()",
                        )
            yield from self._repeated_updates(calls.get("update", []), scaler, analysis)

    def _repeated_updates(self, updates: list[ast.Call], scaler: str, analysis: ModuleAnalysis) -> Iterator[Finding]:
        seen: list[tuple[ast.AST | None, list[Branch]]] = []
        for update in sorted(updates, key=lambda c: (c.lineno, c.col_offset)):
            loop = _enclosing_loop(update, analysis)
            path = branches(update, analysis)
            if any(loop is other_loop and not mutually_exclusive(path, other) for other_loop, other in seen):
                yield self.finding(
                    update,
                    f"{scaler}.update() called again in the same iteration",
                    fix="step every optimizer with scaler.step(), then call scaler.update() once",
                )
            seen.append((loop, path))


def _guards(step: ast.Call, analysis: ModuleAnalysis, steps: list[ast.Call]) -> set[Branch]:
    """The branches a step runs under, less the ifs whose both arms step (``if clip: ... step() else:
    step()`` steps unconditionally)."""
    path = branches(step, analysis)
    others = [branches(other, analysis) for other in steps if other is not step]
    return {
        (node, field)
        for node, field in path
        if not any((node, "orelse" if field == "body" else "body") in other for other in others)
    }


def _enclosing_loop(node: ast.AST, analysis: ModuleAnalysis) -> ast.AST | None:
    parent = analysis.parents.get(node)
    while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if isinstance(parent, (ast.For, ast.While, ast.AsyncFor)):
            return parent
        parent = analysis.parents.get(parent)
    return None
