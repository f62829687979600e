"""AMP003: a loss computed after the autocast block from the block's low-precision outputs."""

from __future__ import annotations

from typing import Iterator

from ..analysis.loss_calls import is_loss_call
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis
from .base import Finding, Rule, Severity
from .source_text import as_operand, excerpt


class LossOutsideAutocast(Rule):
    code = "AMP003"
    name = "loss-outside-autocast"
    severity = Severity.HIGH
    summary = "Loss computed after the autocast block on its float16/bfloat16 outputs"
    why = "outside autocast the loss runs in the inputs' float16/bfloat16 instead of the float32 autocast would pick"
    fix = "compute the loss inside the autocast block, or .float() its inputs"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.uses_autocast:
            return
        flow = None
        for call in analysis.calls:
            if not is_loss_call(call, analysis) or analysis.context(call).in_enabled_autocast:
                continue
            flow = flow or analysis.derived(LowPrecisionFlow)
            for arg in [*call.args, *(kw.value for kw in call.keywords)]:
                origin = flow.origin(arg)
                if origin is not None and origin.kind == "autocast":
                    text = excerpt(arg)
                    yield self.finding(
                        call,
                        f"loss computed outside autocast on '{text}', a {origin.dtype_label} value from "
                        f"the autocast block (line {origin.line})",
                        fix=f"compute the loss inside the block, or pass {as_operand(arg)}.float()",
                    )
                    break
