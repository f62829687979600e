"""AMP014: torch.amp.custom_fwd / custom_bwd without device_type=."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, crashed_here
from .base import Finding, Rule, Severity

_NEEDS_DEVICE_TYPE = {
    "torch.amp.custom_fwd": "custom_fwd",
    "torch.amp.custom_bwd": "custom_bwd",
    "torch.amp.autocast_mode.custom_fwd": "custom_fwd",
    "torch.amp.autocast_mode.custom_bwd": "custom_bwd",
}


class CustomFwdWithoutDeviceType(Rule):
    code = "AMP014"
    name = "custom-fwd-without-device-type"
    severity = Severity.HIGH
    summary = "torch.amp.custom_fwd / custom_bwd without device_type="
    why = "device_type is a required keyword of torch.amp.custom_fwd/custom_bwd: the module fails with TypeError at import"
    fix = "pass device_type='cuda' (or the device you train on)"
    # The module fails at import, tests included.
    exempt_in_tests = False
    low_precision_hazard = False

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the TypeError the decorator raises when the module is imported
        return crashed_here(evidence) or Verdict(
            Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: the decorator raised no error (this torch accepts it)")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        for function in analysis.nodes(ast.FunctionDef) + analysis.nodes(ast.AsyncFunctionDef):
            for decorator in function.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = _NEEDS_DEVICE_TYPE.get(analysis.resolve(target) or "")
                if name is None:
                    continue
                if isinstance(decorator, ast.Call) and any(kw.arg in ("device_type", None) for kw in decorator.keywords):
                    continue  # device_type given (or passed through **kwargs)
                yield self.finding(
                    decorator,
                    f"@torch.amp.{name} without device_type= raises TypeError when the module is imported",
                    fix=f"use @torch.amp.{name}(device_type='cuda'"
                    + (", cast_inputs=...)" if name == "custom_fwd" else ")"),
                )
