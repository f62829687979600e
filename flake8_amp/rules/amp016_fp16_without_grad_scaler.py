"""AMP016: float16 CUDA autocast and backward() with no GradScaler."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.precision import BF16, module_precision
from ..analysis.training_calls import TrainingCalls
from .base import Finding, Rule, Severity


class Fp16WithoutGradScaler(Rule):
    code = "AMP016"
    name = "fp16-without-grad-scaler"
    severity = Severity.MEDIUM
    summary = "float16 CUDA autocast in a function that calls backward(), with no GradScaler"
    why = "float16 gradients below 6e-8 flush to zero: without loss scaling small gradients silently vanish"
    fix = "scale the loss with torch.amp.GradScaler('cuda'), or autocast to torch.bfloat16"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.uses_autocast or analysis.derived(module_precision) == BF16:
            return
        training = analysis.derived(TrainingCalls)
        if analysis.uses_grad_scaler or training.scalers:
            return
        functions_with_backward = {
            analysis.context(call).function for call in analysis.calls if training.is_tensor_backward(call)
        }
        for region in analysis.regions:
            if region.device_type != "cuda" or region.effective_dtype != "float16" or region.enabled is False:
                continue
            scope = region.node if isinstance(region.node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            scope = scope or analysis.context(region.node).function
            if scope in functions_with_backward and not analysis.context(region.node).in_test:
                yield self.finding(region.node, "float16 CUDA autocast with backward() and no GradScaler in the module")
