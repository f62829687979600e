"""AMP010: gradient clipping on scaled gradients."""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import TrainingCalls
from .base import Finding, Rule, Severity

_CLIPPERS = frozenset({"torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad_value_", "torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_value_"})


class ClipBeforeUnscale(Rule):
    code = "AMP010"
    name = "clip-before-unscale"
    severity = Severity.HIGH
    summary = "clip_grad_norm_ / clip_grad_value_ on scaled gradients (no scaler.unscale_ first)"
    why = "the gradients are still multiplied by the loss scale (65536 by default): the clip threshold means nothing"
    fix = "call scaler.unscale_(optimizer) before clipping"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        if not training.scalers:
            return
        # Per function: where scaled backward, unscale_, clipping and scaler.step happen, by position.
        events: dict[ast.AST | None, list[tuple[tuple[int, int], str, ast.Call]]] = defaultdict(list)
        for call in analysis.calls_to(_CLIPPERS, or_named=("backward", "unscale_", "step")):
            if training.is_scaled_backward(call):
                kind = "backward"
            elif training.scaler_method(call, "unscale_"):
                kind = "unscale"
            elif training.scaler_method(call, "step"):
                kind = "step"
            elif analysis.resolve(call.func) in _CLIPPERS:
                kind = "clip"
            else:
                continue
            events[analysis.context(call).function].append(((call.lineno, call.col_offset), kind, call))
        for function_events in events.values():
            function_events.sort(key=lambda event: event[0])
            kinds = [kind for _, kind, _ in function_events]
            if "backward" not in kinds or "step" not in kinds:
                continue
            scaled = unscaled = False
            for _, kind, call in function_events:
                if kind == "backward":
                    scaled, unscaled = True, False
                elif kind == "unscale":
                    unscaled = True
                elif kind == "step":
                    scaled = False
                elif kind == "clip" and scaled and not unscaled:
                    name = analysis.resolve(call.func).rpartition(".")[2]  # type: ignore[union-attr]
                    yield self.finding(call, f"{name} between scaler.scale(loss).backward() and scaler.step() clips scaled gradients")
