"""AMP012: backward() run inside an autocast region."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.summaries import Summaries
from ..analysis.training_calls import AUTOGRAD_ENTRY_POINTS, TrainingCalls
from ..fixes.edits import Edit, Fix, FixSafety
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule


class BackwardInsideAutocast(Rule):
    code = "AMP012"
    name = "backward-inside-autocast"
    severity = Severity.MEDIUM
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "backward() or torch.autograd.grad() inside an autocast region"
    why = "backward ops run in the dtype their forward ops chose; autocast around backward only adds casts and surprises"
    fix = "end the autocast block after the loss and call backward outside it"
    training_only = True

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "moves the backward statement out of the `with` block, to just after it, where it is the block's "
        "last statement."
    )
    fix_safety_reason = (
        "Backward ops run in the dtypes their forward ops chose whatever the autocast state, so the "
        "gradients are the same; only the casts autocast would add around a custom backward go. Not fixed "
        "where other statements follow it in the block, where the `with` opens other contexts too, or in a "
        "function decorated with autocast."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        analysis = module.analysis
        statement = analysis.statement_of(finding.node)
        block = analysis.parents.get(statement)
        region = analysis.context(finding.node).innermost_region
        if (
            not isinstance(block, ast.With)
            or region is None
            or region.node is not block
            or len(block.items) != 1
            or block.body[-1] is not statement
            or len(block.body) < 2
            or analysis.context(block).in_enabled_autocast  # still inside an outer region after the move
        ):
            return None
        return _dedented(statement, block, module)

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


def _dedented(statement: ast.stmt, block: ast.With, module: "FixableModule") -> Fix | None:
    """``statement``, the last of ``block``'s body, at the indentation of ``block``: after the block."""
    inner, outer = module.indentation(statement), module.indentation(block)
    if inner is None or outer is None or not inner.startswith(outer) or inner == outer:
        return None
    if any(
        isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno != node.lineno  # type: ignore[attr-defined]
        for node in ast.walk(statement)
    ):
        return None  # a string spanning lines: its continuation lines are not indentation
    depth = len(inner) - len(outer)
    edits = []
    for line in range(statement.lineno, statement.end_lineno + 1):  # type: ignore[operator]
        start = module.offset(line, 0)
        if module.text[start : start + depth].strip() == "" and len(module.text[start : start + depth]) == depth:
            edits.append(Edit(start, start + depth, ""))
    return Fix(tuple(edits))
