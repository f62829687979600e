"""AMP012: backward() run inside an autocast region."""

from __future__ import annotations

from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import AUTOGRAD_ENTRY_POINTS, TrainingCalls
from .base import Finding, Rule, Severity


class BackwardInsideAutocast(Rule):
    code = "AMP012"
    name = "backward-inside-autocast"
    severity = Severity.MEDIUM
    summary = "backward() or torch.autograd.grad() inside an autocast region"
    why = "backward ops run in the dtype their forward ops chose; autocast around backward only adds casts and surprises"
    fix = "end the autocast block after the loss and call backward outside it"
    training_only = True

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = None
        for call in analysis.calls_to(AUTOGRAD_ENTRY_POINTS, or_named=("backward",)):
            context = analysis.context(call)
            if not context.in_enabled_autocast:
                continue
            training = training or analysis.derived(TrainingCalls)
            where = context.innermost_region.reason()  # type: ignore[union-attr]
            if training.is_tensor_backward(call):
                yield self.finding(call, f"backward() inside an autocast region{where}")
            elif analysis.resolve(call.func) in AUTOGRAD_ENTRY_POINTS:
                name = analysis.resolve(call.func)
                yield self.finding(call, f"{name}() inside an autocast region{where}")
