"""AMP001: a manual cast to float16/bfloat16 of a model or inputs that are trained."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.dtypes import CAST_METHODS, cast_dtype
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.source_text import excerpt
from ..analysis.torch_api import LOW_PRECISION_DTYPES
from ..analysis.trained_values import TrainedValues
from ..runtime.evidence import LineEvidence, Probe, RunEvidence, Verdict, judge_casts
from .base import Finding, Rule, Severity


# What a finding's cast feeds: autocast code, a model trained in half, or the input of a model.
_AUTOCAST, _TRAINED, _INPUT = "autocast", "trained", "input"


class ManualHalfCast(Rule):
    code = "AMP001"
    name = "manual-half-cast"
    severity = Severity.HIGH
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "Manual .half() / .bfloat16() / .to(float16) cast of a model or inputs that are trained"
    why = "a manual cast bypasses autocast's per-op precision choices; on a model it drops the fp32 master weights"
    fix = "remove the cast and run the forward pass under torch.autocast(...)"
    training_only = True
    deliberate_when_configured = True

    probes = frozenset({Probe.CAST})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # values the cast overflowed or flushed to zero (threshold: FLUSH_THRESHOLD of the non-zero ones)
        return judge_casts(evidence)

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        # An input cast to half outside autocast (``model(x.half())``) is a hazard when the model it feeds
        # runs in half too: pure float16 training, which a model cast in this module shows. Without one,
        # the model's precision is set where the linter cannot see it (a loader's ``torch_dtype``, an 8-bit
        # base under LoRA adapters) and the input cast matches it; a float32 model fed half inputs fails
        # at its first layer, loudly.
        inputs, half_model_trained = [], False
        for finding, kind in self._findings(analysis):
            if kind == _INPUT:
                inputs.append(finding)
                continue
            half_model_trained = half_model_trained or kind == _TRAINED
            if finding is not None:
                yield finding
        if half_model_trained:
            yield from inputs

    def _findings(self, analysis: ModuleAnalysis) -> Iterator[tuple[Finding | None, str]]:
        trained = None
        for call in analysis.calls_named(*CAST_METHODS):
            dtype = cast_dtype(call, analysis.resolve)
            if dtype not in LOW_PRECISION_DTYPES or _is_a_copy_or_rounding(call, analysis):
                continue
            trained = trained or analysis.derived(TrainedValues)
            use = trained.use_of_cast(call)
            if use is None or use.master_weights or trained.precision_managed(use.node):
                # Nothing trains it; or its optimizer (or the engine the model is handed to) keeps float32
                # master weights itself; or a precision setting decides.
                continue
            if use.torch_optimizer:
                yield None, _TRAINED  # all that trains it is a torch.optim optimizer: AMP015 reports it there
                continue
            func = call.func
            assert isinstance(func, ast.Attribute)  # cast_dtype only recognises method casts
            spelled = f".{func.attr}()" if not call.args and not call.keywords else f".{func.attr}({dtype})"
            subject = excerpt(func.value)
            if use.how == "autocast" or analysis.context(call).in_enabled_autocast:
                yield self.finding(call, f"{spelled} cast of '{subject}' feeds autocast code"), _AUTOCAST
            elif use.how == "optimizer":
                yield self.finding(
                    call,
                    f"{spelled} cast of '{subject}', whose parameters an optimizer trains (line {use.node.lineno})",  # type: ignore[attr-defined]
                    fix="keep the model in float32 and train under torch.autocast(...) (with a GradScaler for float16)",
                ), _TRAINED
            else:
                yield self.finding(
                    call,
                    f"{spelled} cast of '{subject}', used in training (line {use.node.lineno}): {dtype} without autocast",  # type: ignore[attr-defined]
                    fix="keep it in float32 and train under torch.autocast(...) (with a GradScaler for float16)",
                ), _INPUT if use.how == "training" and not _is_called(use.node, analysis) else _TRAINED


def _is_called(read: ast.AST, analysis: ModuleAnalysis) -> bool:
    """The read is what a call calls (``model(x)``, ``model.forward(x)``): a module, not its input."""
    parent = analysis.parents.get(read)
    if isinstance(parent, ast.Attribute) and parent.attr == "forward":
        read, parent = parent, analysis.parents.get(parent)
    return isinstance(parent, ast.Call) and parent.func is read


def _is_a_copy_or_rounding(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """``deepcopy(model).half()`` (a copy for a checkpoint or export) and ``model.half().float()``
    (rounding weights to fp16 values on purpose) leave the model that trains alone."""
    receiver = call.func.value  # type: ignore[attr-defined]
    if isinstance(receiver, ast.Call) and analysis.resolve(receiver.func) == "copy.deepcopy":
        return True
    parent = analysis.parents.get(call)
    return isinstance(parent, ast.Attribute) and parent.attr in ("float", "double")
