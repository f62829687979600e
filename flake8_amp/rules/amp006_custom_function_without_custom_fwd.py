"""AMP006: a custom autograd Function that autocast does not know how to handle."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.torch_api import AUTOGRAD_FUNCTION_BASES, CUSTOM_BWD, CUSTOM_FWD
from .base import Finding, Rule, Severity

_REQUIRED = {
    "forward": (CUSTOM_FWD, "@torch.amp.custom_fwd(device_type='cuda')"),
    "backward": (CUSTOM_BWD, "@torch.amp.custom_bwd(device_type='cuda')"),
}


class CustomFunctionWithoutCustomFwd(Rule):
    code = "AMP006"
    name = "custom-function-without-custom-fwd"
    severity = Severity.MEDIUM
    summary = "autograd.Function whose forward/backward lack custom_fwd/custom_bwd"
    why = "under autocast the forward sees mixed dtypes and backward runs with autocast state it did not expect"
    fix = "decorate forward with @torch.amp.custom_fwd(device_type=...) and backward with @torch.amp.custom_bwd(...)"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        for cls in analysis.nodes(ast.ClassDef):
            if not any(analysis.resolve(base) in AUTOGRAD_FUNCTION_BASES for base in cls.bases):
                continue
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef) or method.name not in _REQUIRED:
                    continue
                decorators, spelled = _REQUIRED[method.name]
                if not any(_decorator_name(d, analysis) in decorators for d in method.decorator_list):
                    yield self.finding(
                        method,
                        f"autograd.Function {cls.name}.{method.name} lacks {spelled.partition('(')[0]}",
                        fix=f"decorate it with {spelled}"
                        + (" (cast_inputs=torch.float32 to run it in float32)" if method.name == "forward" else ""),
                    )


def _decorator_name(decorator: ast.expr, analysis: ModuleAnalysis) -> str | None:
    return analysis.resolve(decorator.func if isinstance(decorator, ast.Call) else decorator)
