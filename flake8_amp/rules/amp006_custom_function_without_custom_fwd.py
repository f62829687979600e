"""AMP006: a custom autograd Function that autocast does not know how to handle."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.torch_api import AUTOGRAD_FUNCTION_BASES, CUSTOM_BWD, CUSTOM_FWD
from .base import Finding, Rule, Severity

# Ops that CUDA autocast runs in float16: a Function using them sees float16 in forward (under
# autocast) and float32 in backward (autocast is off there), and mixes them.
_AUTOCAST_FLOAT16_OPS = frozenset(
    {
        "matmul", "mm", "bmm", "addmm", "addbmm", "baddbmm", "addmv", "addr", "linear", "conv1d", "conv2d",
        "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "prelu", "chain_matmul",
        "multi_dot", "einsum",
    }
)
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
            if not _uses_autocast_float16_ops(cls) or not _has_working_backward(cls):
                # Communication, indexing, elementwise ops pass dtypes through unchanged; a Function
                # without a backward (or whose backward raises) is inference-only.
                continue
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef) or method.name not in _REQUIRED:
                    continue
                decorators, spelled = _REQUIRED[method.name]
                if not any(_is_amp_decorator(d, decorators, analysis) for d in method.decorator_list):
                    yield self.finding(
                        method,
                        f"autograd.Function {cls.name}.{method.name} lacks {spelled.partition('(')[0]}",
                        fix=f"decorate it with {spelled}"
                        + (" (cast_inputs=torch.float32 to run it in float32)" if method.name == "forward" else ""),
                    )


def _is_amp_decorator(decorator: ast.expr, accepted: frozenset[str], analysis: ModuleAnalysis) -> bool:
    """``@torch.amp.custom_fwd(...)``, or a local alias of it: ``custom_fwd = partial(torch.amp.custom_fwd,
    device_type="cuda")`` (Megatron), ``autocast_custom_fwd = get_accelerator().amp().custom_fwd``
    (DeepSpeed: recognised by its name, since the object comes from a runtime lookup)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if analysis.resolve(target) in accepted:
        return True
    suffix = next(iter(accepted)).rpartition(".")[2]  # custom_fwd or custom_bwd
    if isinstance(target, (ast.Name, ast.Attribute)):
        identifier = target.id if isinstance(target, ast.Name) else target.attr
        if identifier.endswith(suffix):
            return True
    for value in analysis.bound_values(target):
        if isinstance(value, ast.Call) and analysis.resolve(value.func) == "functools.partial" and value.args:
            value = value.args[0]
        if analysis.resolve(value) in accepted:
            return True
    return False


def _uses_autocast_float16_ops(cls: ast.ClassDef) -> bool:
    for node in ast.walk(cls):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in _AUTOCAST_FLOAT16_OPS:
                return True
    return False


def _has_working_backward(cls: ast.ClassDef) -> bool:
    for method in cls.body:
        if isinstance(method, ast.FunctionDef) and method.name == "backward":
            body = [stmt for stmt in method.body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
            return not (len(body) == 1 and isinstance(body[0], ast.Raise))
    return False
