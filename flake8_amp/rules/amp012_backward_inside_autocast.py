"""AMP012: backward() run inside an autocast region."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.summaries import Summaries
from ..analysis.training_calls import AUTOGRAD_ENTRY_POINTS, TrainingCalls
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict
from .base import Finding, Rule, Severity


class BackwardInsideAutocast(Rule):
    code = "AMP012"
    name = "backward-inside-autocast"
    severity = Severity.MEDIUM
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "backward() or torch.autograd.grad() inside an autocast region"
    why = "backward ops run in the dtype their forward ops chose; autocast around backward only adds casts and surprises"
    fix = "end the autocast block after the loss and call backward outside it"
    training_only = True

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # Backward ops run under the autocast of the call: a custom backward (or an op in it) that meets an
        # autocast float16/bfloat16 result where it expects its forward's dtype raises a dtype error.
        backwards = evidence.calls_of("backward")
        under = sum(bool(call.under_autocast) for call in backwards)
        dtype_errors = [error for error in evidence.errors if _is_dtype_error(error.message)]
        if dtype_errors and (under or not backwards):  # torch.autograd.grad() records no backward call
            error = dtype_errors[0]
            crash = " (the script stopped here)" if error.caused_crash else ""
            return Verdict(Outcome.CONFIRMED, f"step {error.step}: backward under autocast raised {error.type} "
                                              f"\"{error.message}\"{crash}")
        other = f" (it raised {evidence.errors[0].type} \"{evidence.errors[0].message}\")" if evidence.errors else ""
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: backward ran {len(backwards)} times, {under} "
                                             f"with autocast on, and raised no dtype error under autocast{other}")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = None
        for call in analysis.calls_to(AUTOGRAD_ENTRY_POINTS, or_named=("backward",)):
            context = analysis.context(call)
            if not context.in_enabled_autocast:
                continue
            region = context.innermost_region
            if region is not None and region.inherited and not region.caller_steps and not _steps(context.function, analysis):
                continue  # a probe that runs backward to time it or measure memory: no optimizer applies it
            training = training or analysis.derived(TrainingCalls)
            where = region.reason()  # type: ignore[union-attr]
            if training.is_tensor_backward(call):
                yield self.finding(call, f"backward() inside an autocast region{where}")
            elif analysis.resolve(call.func) in AUTOGRAD_ENTRY_POINTS:
                name = analysis.resolve(call.func)
                yield self.finding(call, f"{name}() inside an autocast region{where}")


def _steps(function: ast.AST | None, analysis: ModuleAnalysis) -> bool:
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return True
    return analysis.derived(Summaries).steps(function)


#: words of the errors torch raises when tensors of two dtypes meet
_DTYPE_WORDS = ("dtype", "scalar type", "Half", "BFloat16", "Float", "Double")


def _is_dtype_error(message: str) -> bool:
    return any(word in message for word in _DTYPE_WORDS)
