"""AMP015: an optimizer over the parameters of a model cast to float16."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.low_precision import CAST_METHODS, cast_dtype
from ..analysis.module_analysis import ModuleAnalysis, method_chain_end, method_chain_root
from ..analysis.precision import guarded_by_precision_setting
from .base import Finding, Rule, Severity


class HalfModelOptimizer(Rule):
    code = "AMP015"
    name = "half-model-optimizer"
    severity = Severity.HIGH
    summary = "Optimizer over the parameters of a model cast to float16 (no float32 master weights)"
    why = "float16 weights drop updates below half an ulp, Adam's eps=1e-8 underflows, and GradScaler raises 'Attempting to unscale FP16 gradients'"
    fix = "keep the model in float32 and use torch.autocast + GradScaler"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        halved = self._half_models(analysis)
        if not halved:
            return
        for call in analysis.calls:
            qualified = analysis.resolve(call.func) or ""
            if not qualified.startswith("torch.optim.") or ".lr_scheduler." in qualified or not call.args:
                continue
            for model in _parameter_owners(call.args[0]):
                cast = halved.get((analysis.context(call).function, model)) or halved.get((None, model))
                if cast is not None and cast.lineno <= call.lineno and not self._restored(model, cast, call, analysis):
                    yield self.finding(
                        call,
                        f"{qualified.rpartition('.')[2]} over {model}.parameters(), a model cast to float16 at line {cast.lineno}",
                    )
                    break

    @staticmethod
    def _half_models(analysis: ModuleAnalysis) -> dict[tuple[ast.AST | None, str], ast.Call]:
        """(function, model name) -> the cast: ``model = Net().half()``, ``model.half()``,
        ``model.to(torch.float16)``."""
        found = {}
        for call in analysis.calls_named(*CAST_METHODS):
            if cast_dtype(call, analysis) != "float16":
                continue
            context = analysis.context(call)
            if context.grad_disabled or guarded_by_precision_setting(analysis, call):
                continue
            statement = analysis.statement_of(call)
            names = []
            if method_chain_end(call, analysis) is getattr(statement, "value", None):
                if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                    names.append(statement.targets[0].id)
                # nn.Module.half() casts in place: `fast = net.half()` halves `net` too.
                receiver = method_chain_root(call.func.value)  # type: ignore[attr-defined]
                if isinstance(receiver, ast.Name):
                    names.append(receiver.id)
            for name in names:
                found.setdefault((context.function, name), call)
        return found

    @staticmethod
    def _restored(model: str, cast: ast.Call, optimizer: ast.Call, analysis: ModuleAnalysis) -> bool:
        """``model.float()`` between the cast and the optimizer."""
        for call in analysis.calls_named("float"):
            if (
                cast.lineno < call.lineno <= optimizer.lineno
                and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name)
                and call.func.value.id == model
            ):
                return True
        return False


def _parameter_owners(argument: ast.expr) -> list[str]:
    """Names whose ``.parameters()`` / ``.named_parameters()`` reach the optimizer's first argument."""
    owners = []
    for node in ast.walk(argument):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("parameters", "named_parameters")
            and isinstance(node.func.value, ast.Name)
        ):
            owners.append(node.func.value.id)
    return owners
