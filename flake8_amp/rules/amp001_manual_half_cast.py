"""AMP001: a manual cast to float16/bfloat16 in code that trains."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.low_precision import cast_dtype
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.torch_api import LOW_PRECISION_DTYPES
from .base import Finding, Rule, Severity
from .source_text import excerpt


class ManualHalfCast(Rule):
    code = "AMP001"
    name = "manual-half-cast"
    severity = Severity.HIGH
    summary = "Manual .half() / .bfloat16() / .to(float16) cast in a module that trains"
    why = "a manual cast bypasses autocast's per-op precision choices; on a model it drops the fp32 master weights"
    fix = "remove the cast and run the forward pass under torch.autocast(...)"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.trains:
            return
        for call in analysis.calls:
            dtype = cast_dtype(call, analysis)
            if dtype not in LOW_PRECISION_DTYPES or analysis.context(call).grad_disabled:
                continue
            func = call.func
            assert isinstance(func, ast.Attribute)  # cast_dtype only recognises method casts
            spelled = f".{func.attr}()" if not call.args and not call.keywords else f".{func.attr}({dtype})"
            yield self.finding(call, f"{spelled} cast of '{excerpt(func.value)}' in a module that trains")
