"""AMP001: a manual cast to float16/bfloat16 in code that trains."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.low_precision import cast_dtype
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.precision import guarded_by_precision_setting
from ..analysis.torch_api import LOW_PRECISION_DTYPES
from .base import Finding, Rule, Severity
from .source_text import excerpt


class ManualHalfCast(Rule):
    code = "AMP001"
    name = "manual-half-cast"
    severity = Severity.HIGH
    summary = "Manual .half() / .bfloat16() / .to(float16) cast in a module that uses autocast or GradScaler"
    why = "a manual cast bypasses autocast's per-op precision choices; on a model it drops the fp32 master weights"
    fix = "remove the cast and run the forward pass under torch.autocast(...)"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        # The hazard is a cast that contradicts autocast. Code without autocast or a GradScaler that casts
        # on purpose (pure-bf16 training, DeepSpeed/Megatron-style fp16 with master weights in the
        # optimizer, dtype tests) has nothing to bypass; a half model handed to an optimizer is AMP015.
        if not (analysis.uses_autocast or analysis.uses_grad_scaler):
            return
        amp_scopes = _scopes_using_amp(analysis)
        for call in analysis.calls:
            dtype = cast_dtype(call, analysis)
            if dtype not in LOW_PRECISION_DTYPES:
                continue
            context = analysis.context(call)
            if context.grad_disabled or guarded_by_precision_setting(analysis, call):
                continue
            if not (context.in_enabled_autocast or context.function in amp_scopes):
                continue
            func = call.func
            assert isinstance(func, ast.Attribute)  # cast_dtype only recognises method casts
            spelled = f".{func.attr}()" if not call.args and not call.keywords else f".{func.attr}({dtype})"
            yield self.finding(call, f"{spelled} cast of '{excerpt(func.value)}' in autocast code")


def _scopes_using_amp(analysis: ModuleAnalysis) -> set[ast.AST | None]:
    """The module body (a script's set-up) and the functions that open an autocast region or build a
    GradScaler: a cast there feeds the mixed-precision code beside it. A cast in another function of the
    module (a dtype test, an export helper) is left alone."""
    scopes: set[ast.AST | None] = {None}
    scopes.update(analysis.context(region.node).function for region in analysis.regions)
    scopes.update(analysis.context(call).function for call in analysis.grad_scaler_constructions)
    return scopes
