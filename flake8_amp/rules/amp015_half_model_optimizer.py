"""AMP015: an optimizer over the parameters of a model cast to float16."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.dtypes import cast_dtype
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis, method_chain_end, method_chain_root
from ..analysis.training_calls import TrainingCalls
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Probe, Verdict, pct
from .base import Finding, Rule, Severity


#: verify: the fraction of updates (elements with a non-zero gradient) that may round away unremarked
VANISHED_THRESHOLD = 0.01


class HalfModelOptimizer(Rule):
    code = "AMP015"
    name = "half-model-optimizer"
    severity = Severity.HIGH
    summary = "Optimizer over the parameters of a model cast to float16 (no float32 master weights)"
    why = "float16 weights drop updates below half an ulp, Adam's eps=1e-8 underflows, and GradScaler raises 'Attempting to unscale FP16 gradients'"
    fix = "keep the model in float32 and use torch.autocast + GradScaler"
    training_only = True
    # A precision setting does not make it safe: a torch.optim optimizer keeps no float32 copy whatever
    # chose float16 (`if args.fp16: model.half()`), so the hazard is the same on that path.
    deliberate_when_configured = False

    probes = frozenset({Probe.UPDATES})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # Updates smaller than half a float16 ulp of the weight round away: confirmed when at least 1% of
        # the elements with a non-zero gradient did not move, or a step left a NaN/Inf in the weights.
        updates = evidence.updates
        if not updates.steps:
            return Verdict(Outcome.NOT_REACHED, "the optimizer never stepped on float16/bfloat16 parameters")
        text = (f"{updates.steps} steps: {pct(updates.vanished, updates.moved)} of the updates with a non-zero "
                f"gradient vanished in rounding ({updates.vanished} of {updates.moved})")
        if updates.nonfinite_after:
            return Verdict(Outcome.CONFIRMED, f"{text}; {updates.nonfinite_after} weights became NaN/Inf")
        if updates.moved and updates.vanished / updates.moved >= VANISHED_THRESHOLD:
            return Verdict(Outcome.CONFIRMED, text)
        return Verdict(Outcome.NOT_OBSERVED, f"{text} (threshold {VANISHED_THRESHOLD:.0%})")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        flow = None
        for call in analysis.calls:
            if not call.args or not training.is_optimizer_construction(call):
                continue
            for owner in _parameter_owners(call.args[0]):
                flow = flow or analysis.derived(LowPrecisionFlow)
                cast = _cast_to_float16(owner, call, flow, analysis)
                if cast is None or _deliberate(cast, analysis):
                    continue
                optimizer = analysis.resolve(call.func).rpartition(".")[2]  # type: ignore[union-attr]
                yield self.finding(
                    call,
                    f"{optimizer} over {ast.unparse(owner)}.parameters(), a model cast to float16 at line {cast.lineno}",  # type: ignore[attr-defined]
                )
                break


def _cast_to_float16(owner: ast.expr, optimizer: ast.Call, flow: LowPrecisionFlow, analysis: ModuleAnalysis) -> ast.AST | None:
    """The cast that made the model float16: what its binding holds (``model = Net().half()``,
    ``model.half()``), or a cast of it bound to another name (``fast = net.half()``: ``nn.Module.half()``
    casts in place, so ``net`` is float16 too)."""
    origin = flow.origin(owner)
    if origin is not None:
        return origin.node if origin.kind == "cast" and origin.dtype == "float16" else None
    if not isinstance(owner, ast.Name):
        return None
    for call in _casts_bound_elsewhere(analysis).get((analysis.context(optimizer).function, owner.id), ()):
        if call.lineno < optimizer.lineno:
            return call
    return None


def _casts_bound_elsewhere(analysis: ModuleAnalysis) -> dict[tuple[ast.AST | None, str], list[ast.Call]]:
    """(function, model name) -> the float16 casts of that model whose result is bound to another name."""
    return analysis.derived(_CastsBoundElsewhere).found


class _CastsBoundElsewhere:
    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.found: dict[tuple[ast.AST | None, str], list[ast.Call]] = {}
        for call in analysis.calls_named("half", "to"):
            if (
                cast_dtype(call, analysis.resolve) == "float16"
                and isinstance(analysis.parents.get(method_chain_end(call, analysis)), ast.Assign)
                and isinstance(root := method_chain_root(call.func.value), ast.Name)  # type: ignore[attr-defined]
            ):
                self.found.setdefault((analysis.context(call).function, root.id), []).append(call)


def _deliberate(cast: ast.AST, analysis: ModuleAnalysis) -> bool:
    """The cast itself is evaluation code."""
    return analysis.context(cast).grad_disabled


def _parameter_owners(argument: ast.expr) -> list[ast.expr]:
    """The objects whose ``.parameters()`` / ``.named_parameters()`` reach the optimizer's first argument."""
    return [
        node.func.value
        for node in ast.walk(argument)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("parameters", "named_parameters")
        and isinstance(node.func.value, (ast.Name, ast.Attribute))
    ]
