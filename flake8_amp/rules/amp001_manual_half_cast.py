"""AMP001: a manual cast to float16/bfloat16 in code that trains."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.low_precision import CAST_METHODS, cast_dtype
from ..analysis.module_analysis import ModuleAnalysis, method_chain_end, method_chain_root
from ..analysis.precision import guarded_by_precision_setting
from ..analysis.torch_api import LOW_PRECISION_DTYPES
from .base import Finding, Rule, Severity
from .source_text import excerpt


class ManualHalfCast(Rule):
    code = "AMP001"
    name = "manual-half-cast"
    severity = Severity.HIGH
    summary = "Manual .half() / .bfloat16() / .to(float16) cast whose result feeds autocast code"
    why = "a manual cast bypasses autocast's per-op precision choices; on a model it drops the fp32 master weights"
    fix = "remove the cast and run the forward pass under torch.autocast(...)"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        # The hazard is a cast whose value feeds autocast code. Code without autocast or a GradScaler
        # that casts on purpose (pure-bf16 training, DeepSpeed/Megatron-style fp16 with master weights in
        # the optimizer) has nothing to bypass; a half model handed to an optimizer is AMP015.
        if not analysis.uses_autocast:
            return
        names_used_under_autocast = None
        for call in analysis.calls_named(*CAST_METHODS):
            dtype = cast_dtype(call, analysis)
            if dtype not in LOW_PRECISION_DTYPES:
                continue
            context = analysis.context(call)
            if (
                context.grad_disabled
                or context.in_test
                or guarded_by_precision_setting(analysis, call)
                or _is_a_copy_or_rounding(call, analysis)
            ):
                continue
            if not context.in_enabled_autocast:
                # Outside a region, the cast matters when its result reaches one: `model = Net().half()`
                # then `with autocast(): model(x)`. A half copy passed to a checkpoint or an evaluation
                # call never does.
                bound = _bound_name(call, analysis)
                if names_used_under_autocast is None:
                    names_used_under_autocast = _names_used_under_autocast(analysis)
                if bound is None or not _reaches_autocast(bound, context.function, names_used_under_autocast):
                    continue
            func = call.func
            assert isinstance(func, ast.Attribute)  # cast_dtype only recognises method casts
            spelled = f".{func.attr}()" if not call.args and not call.keywords else f".{func.attr}({dtype})"
            yield self.finding(call, f"{spelled} cast of '{excerpt(func.value)}' feeds autocast code")


def _bound_name(call: ast.Call, analysis: ModuleAnalysis) -> str | None:
    """The name that holds the cast's result: ``x = x.half()``, or ``model.half()`` (modules cast in place)."""
    parent = analysis.parents.get(method_chain_end(call, analysis))
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
        return parent.targets[0].id
    if isinstance(parent, ast.Expr):
        receiver = method_chain_root(call.func.value)  # type: ignore[attr-defined]
        if isinstance(receiver, ast.Name):
            return receiver.id
    return None


def _names_used_under_autocast(analysis: ModuleAnalysis) -> set[tuple[ast.AST | None, str]]:
    """(function holding the region, name) for every name read inside an enabled autocast region."""
    used = set()
    for region in analysis.regions:
        if not region.may_be_enabled:
            continue
        scope = region.node if isinstance(region.node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        scope = scope or analysis.context(region.node).function
        for statement in region.node.body:  # type: ignore[attr-defined]
            used.update((scope, node.id) for node in ast.walk(statement) if isinstance(node, ast.Name))
    return used


def _reaches_autocast(name: str, scope: ast.AST | None, used: set[tuple[ast.AST | None, str]]) -> bool:
    """A local reaches the regions of its own function; a module-level name (a script's ``model``)
    reaches every region that reads it."""
    if scope is None:
        return any(used_name == name for _, used_name in used)
    return (scope, name) in used


def _is_a_copy_or_rounding(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """``deepcopy(model).half()`` (a copy for a checkpoint or export) and ``model.half().float()``
    (rounding weights to fp16 values on purpose) leave the model that trains alone."""
    receiver = call.func.value  # type: ignore[attr-defined]
    if isinstance(receiver, ast.Call):
        qualified = analysis.resolve(receiver.func)
        if qualified == "copy.deepcopy":
            return True
    parent = analysis.parents.get(call)
    if isinstance(parent, ast.Attribute) and parent.attr in ("float", "double"):
        return True
    return False
