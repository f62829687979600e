"""AMP018: a value from the enclosing autocast region used inside autocast(enabled=False) uncast."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.summaries import Summaries
from ..runtime.evidence import LineEvidence, RunEvidence, Probe, Verdict, judge_numeric
from .base import Finding, Rule, Severity

# Reading these from a tensor is no computation on its values (or is the fix itself).
_HARMLESS_ATTRIBUTES = frozenset(
    {"float", "double", "to", "type", "shape", "size", "dtype", "device", "dim", "ndim", "numel", "is_cuda",
     "requires_grad", "detach"}
)
_HARMLESS_CALLS = frozenset({"len", "isinstance", "print", "id", "type"})


class AutocastValueInDisabledRegion(Rule):
    code = "AMP018"
    name = "autocast-value-in-disabled-region"
    severity = Severity.MEDIUM
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "Inside autocast(enabled=False), a tensor from the enclosing region used without .float()"
    why = "autocast is off: the float16 value meets float32 operands ('expected m1 and m2 to have the same dtype') or runs in float16"
    fix = "cast it first: x.float() (or x.to(torch.float32))"

    probes = frozenset({Probe.RECOMPUTE})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the dtype-mismatch error, or the float16 op losing precision against float32
        return judge_numeric(evidence)

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not any(region.enabled is False for region in analysis.regions):
            return
        flow = analysis.derived(LowPrecisionFlow)
        reported: set[tuple[ast.stmt, str]] = set()
        for name in analysis.nodes(ast.Name):
            if not isinstance(name.ctx, ast.Load):
                continue
            context = analysis.context(name)
            if not context.in_disabled_autocast or self._harmless(name, analysis):
                continue
            origin = flow.origin(name)
            if origin is None or origin.kind != "autocast":
                continue
            enclosing = {region.node for region in context.regions if region.may_be_enabled}
            if origin.node not in enclosing:
                continue
            statement = analysis.statement_of(name)
            if (statement, name.id) in reported:
                continue
            reported.add((statement, name.id))
            yield self.finding(
                name,
                f"'{name.id}' is {origin.dtype_label} from the enclosing autocast region (line {origin.line}) and autocast is off here",
                fix=f"use {name.id}.float()",
            )

    @staticmethod
    def _harmless(name: ast.Name, analysis: ModuleAnalysis) -> bool:
        parent = analysis.parents.get(name)
        element: ast.AST = name
        while isinstance(parent, ast.Subscript) and parent.value is element:
            element, parent = parent, analysis.parents.get(parent)  # `feats[0].float()`: an element, cast
        if element is not name:
            return isinstance(parent, ast.Attribute) and parent.attr in _HARMLESS_ATTRIBUTES
        if isinstance(parent, ast.Attribute) and parent.attr in _HARMLESS_ATTRIBUTES:
            return True
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in _HARMLESS_CALLS:
            return True
        if isinstance(parent, ast.Call) and analysis.derived(Summaries).casts_argument_to_float32(parent, name):
            return True  # `discriminator_loss(outs_real, outs_fake)`, which starts with `.float()` of each
        return isinstance(parent, (ast.Compare, ast.BoolOp)) or (isinstance(parent, ast.Assign) and parent.value is name)
