"""AMP019: a GradScaler in play, but backward() or optimizer.step() bypass it."""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import TrainingCalls, branches, mutually_exclusive
from .base import Finding, Rule, Severity


class ScalerBypassed(Rule):
    code = "AMP019"
    name = "scaler-bypassed"
    severity = Severity.HIGH
    summary = "GradScaler in play but loss.backward() on an unscaled loss, or optimizer.step() instead of scaler.step()"
    why = "the scaler's unscaling and inf check are skipped: steps on scaled, possibly inf, gradients"
    fix = "use scaler.scale(loss).backward() and scaler.step(optimizer)"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        recipe: dict[ast.AST | None, list[ast.Call]] = defaultdict(list)  # scaled backward / scaler.step
        plain_backward: dict[ast.AST | None, list[ast.Call]] = defaultdict(list)
        direct_step: dict[ast.AST | None, list[ast.Call]] = defaultdict(list)
        for call in analysis.calls_named("backward", "step"):
            scope = analysis.context(call).function
            if training.is_scaled_backward(call) or training.scaler_method(call, "step"):
                recipe[scope].append(call)
            elif training.is_tensor_backward(call):
                plain_backward[scope].append(call)
            elif _is_optimizer_step(call, training):
                direct_step[scope].append(call)
        for scope, uses in recipe.items():
            paths = [branches(use, analysis) for use in uses]
            scaled = any(training.is_scaled_backward(use) for use in uses)
            for call in plain_backward.get(scope, []):
                if _shares_a_pass(call, paths, analysis):
                    yield self.finding(call, "backward() on an unscaled loss while a GradScaler is in play",
                                       fix="call scaler.scale(loss).backward()")
            for call in direct_step.get(scope, []) if scaled else []:
                if _shares_a_pass(call, paths, analysis):
                    optimizer = ast.unparse(call.func.value)  # type: ignore[attr-defined]
                    yield self.finding(call, f"{optimizer}.step() called directly after a scaled backward",
                                       fix=f"call scaler.step({optimizer}) (it unscales and skips inf steps)")


def _is_optimizer_step(call: ast.Call, training: TrainingCalls) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "step" and not call.args and training.is_optimizer(func.value)


def _shares_a_pass(call: ast.Call, recipe_paths: list, analysis: ModuleAnalysis) -> bool:
    """Not in the other arm of an ``if use_amp: scaler... else: loss.backward()`` split."""
    path = branches(call, analysis)
    return any(not mutually_exclusive(path, other) for other in recipe_paths)
