"""AMP017: a GradScaler where every autocast region is bfloat16."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import TrainingCalls
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, fmt
from .base import Finding, Rule, Severity


class GradScalerWithBfloat16(Rule):
    code = "AMP017"
    name = "grad-scaler-with-bfloat16"
    severity = Severity.LOW
    summary = "GradScaler in a module whose every autocast region is bfloat16"
    why = "bfloat16 has float32's range: loss scaling does nothing but cost an unscale and an inf check per step"
    fix = "drop the GradScaler (or enable it only for float16: enabled=(dtype == torch.float16))"

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # A scaler with only bfloat16 to guard has nothing to do: confirmed when it scaled losses and
        # autocast ran no float16 op in the whole run.
        if not run.scaler_enabled:
            return Verdict(Outcome.NOT_OBSERVED, "the GradScaler never scaled a loss in this run")
        trajectory = f"scale {fmt(run.scales[0])} -> {fmt(run.scales[-1])}" if run.scales else "no update()"
        skipped = f"{len(run.skipped_steps)} skipped steps"
        if "float16" in run.autocast_dtypes:
            return Verdict(Outcome.NOT_OBSERVED, f"autocast ran float16 ops in this run: the scaler has work "
                                                 f"({skipped}, {trajectory})")
        dtypes = ", ".join(sorted(run.autocast_dtypes)) or "no low-precision"
        return Verdict(Outcome.CONFIRMED, f"{run.steps_run} steps: autocast ran {dtypes} ops only; the scaler "
                                          f"scaled for nothing ({skipped}, {trajectory})")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        regions = analysis.regions
        if not regions or any(region.effective_dtype != "bfloat16" for region in regions):
            return
        for call in analysis.derived(TrainingCalls).grad_scaler_constructions:
            enabled = next((kw.value for kw in call.keywords if kw.arg == "enabled"), None)
            if enabled is not None and not (isinstance(enabled, ast.Constant) and enabled.value is True):
                continue  # enabled=False, or decided at run time (enabled=(dtype == torch.float16))
            yield self.finding(call, "GradScaler with only bfloat16 autocast in the module")
