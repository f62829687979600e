"""AMP002: binary_cross_entropy / BCELoss, which CUDA autocast refuses to run."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from .base import Finding, Rule, Severity

_UNSAFE = {
    "torch.nn.functional.binary_cross_entropy": "binary_cross_entropy",
    "torch.nn.BCELoss": "BCELoss",
}
_UNSAFE_NAMES = frozenset(_UNSAFE.values())
# Frameworks that turn autocast on from configuration (Trainer(precision="16-mixed"),
# Accelerator(mixed_precision="fp16")): their modules run under autocast without saying so.
_AUTOCASTING_FRAMEWORKS = ("lightning", "pytorch_lightning", "lightning_fabric", "accelerate")
_SAFE_REPLACEMENT = {
    "binary_cross_entropy": "F.binary_cross_entropy_with_logits on the logits (drop the sigmoid)",
    "BCELoss": "nn.BCEWithLogitsLoss on the logits (drop the sigmoid)",
}


class BinaryCrossEntropy(Rule):
    code = "AMP002"
    name = "unsafe-binary-cross-entropy"
    severity = Severity.HIGH
    summary = "binary_cross_entropy / BCELoss raise under CUDA autocast"
    why = "torch refuses to autocast binary_cross_entropy: the forward raises a RuntimeError under CUDA autocast"
    fix = "use binary_cross_entropy_with_logits / BCEWithLogitsLoss on logits"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not (
            analysis.uses_autocast
            or analysis.uses_grad_scaler
            or any(analysis.imports.imports_from(framework) for framework in _AUTOCASTING_FRAMEWORKS)
        ):
            return  # float32-only code: binary_cross_entropy is fine there
        aliases = analysis.imports.local_names_for(set(_UNSAFE))
        candidates = [n for n in analysis.nodes(ast.Name) if n.id in aliases]
        candidates += [n for n in analysis.nodes(ast.Attribute) if n.attr in _UNSAFE_NAMES]
        for node in candidates:
            if isinstance(node.ctx, ast.Store):
                continue
            qualified = analysis.resolve(node)
            if qualified in _UNSAFE:
                region = analysis.context(node).innermost_region
                if region is not None and region.enabled is False:
                    continue  # the documented workaround: BCE on .float() inputs with autocast off
                short = _UNSAFE[qualified]
                yield self.finding(node, f"{short} is unsafe to autocast", fix=f"use {_SAFE_REPLACEMENT[short]}")
