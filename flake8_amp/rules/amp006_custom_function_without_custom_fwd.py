"""AMP006: a custom autograd Function that autocast does not know how to handle."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from typing import Iterator

from ..analysis.bindings import Bindings
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.summaries import Summaries
from ..analysis.torch_api import AUTOCAST_LOWER_PRECISION_OPS, CUSTOM_BWD, CUSTOM_FWD
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, crashed_here
from .base import Finding, Rule, Severity

_REQUIRED = {
    "forward": (CUSTOM_FWD, "@torch.amp.custom_fwd(device_type='cuda')"),
    "backward": (CUSTOM_BWD, "@torch.amp.custom_bwd(device_type='cuda')"),
}
# The errors of mixed dtypes: "expected m1 and m2 to have the same dtype, but got: c10::Half != float",
# "expected scalar type Float but found Half", "Input type (c10::BFloat16) and bias type (float) should be the same".
_DTYPE_ERROR = re.compile(r"dtype|scalar type|c10::(Half|BFloat16)|\b(Half|BFloat16|float16|bfloat16)\b")
# Compiled kernels: an extension module (`import fused_layer_norm_cuda`, `from . import _C`) or torch.ops.
_EXTENSION_MODULE = re.compile(r"(^|[._])(_C|_ext|ext|cuda|cpp|kernels?|ops|_cuda|_kernels?)$|_cuda\.|_C\.|^torch\.ops\.")


class CustomFunctionWithoutCustomFwd(Rule):
    code = "AMP006"
    name = "custom-function-without-custom-fwd"
    severity = Severity.MEDIUM
    summary = "autograd.Function whose forward/backward lack custom_fwd/custom_bwd"
    why = "under autocast the forward sees mixed dtypes and backward runs with autocast state it did not expect"
    fix = "decorate forward with @torch.amp.custom_fwd(device_type=...) and backward with @torch.amp.custom_bwd(...)"

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # The finding stands for the whole method (a forward for its backward too): a dtype error raised
        # there confirms it. Other errors are the script's own, not this hazard.
        dtype_errors = [e for e in evidence.errors if _DTYPE_ERROR.search(e.message)]
        if dtype_errors:
            return crashed_here(replace(evidence, errors=dtype_errors))  # type: ignore[return-value]
        calls = sum(r.calls for r in evidence.ops.values())
        under = sum(r.under_autocast for r in evidence.ops.values())
        low = sorted({d for r in evidence.ops.values() for d in r.low_precision_autocast_dtypes})
        produced = f" (producing {'/'.join(low)})" if low else ""
        inputs = sorted({d for r in evidence.ops.values() for d in r.input_dtypes})
        seen = f"; inputs {'/'.join(inputs)}" if inputs else ""
        other = f"; an unrelated {evidence.errors[0].type}" if evidence.errors else ""
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: {calls} ops, {under} with autocast on"
                                             f"{produced}{seen}{other}; no dtype error in forward or backward")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        summaries = None
        for cls in analysis.nodes(ast.ClassDef):
            summaries = summaries or analysis.derived(Summaries)
            if not summaries.is_autograd_function(cls):
                continue
            methods = {
                method.name: method
                for method in cls.body
                if isinstance(method, ast.FunctionDef) and method.name in _REQUIRED
            }
            decorated = {name: _decorated(method, name, analysis) for name, method in methods.items()}
            if len(methods) == 2 and any(decorated.values()):
                reason = "its {other} is decorated"  # half of the pair: the author meant it to be autocast-aware
            elif _applied_only_with_autocast_off(cls, analysis):
                continue  # every apply runs in autocast(enabled=False), the inputs cast by hand (apex)
            elif (
                _uses_autocast_float16_ops(cls)
                and _has_working_backward(cls)
                and not _backward_follows_the_gradient_dtype(cls)
                and _autocast_in_play(analysis, summaries)
            ):
                reason = None
            elif _calls_an_extension(cls, analysis) and _has_working_backward(cls) and _used_under_autocast(cls, summaries):
                reason = "it runs compiled kernels under autocast"
            else:
                # Communication, indexing, elementwise ops pass dtypes through unchanged; a Function
                # without a backward (or whose backward raises) is inference-only.
                continue
            for name, method in methods.items():
                if decorated[name]:
                    continue
                decorators, spelled = _REQUIRED[name]
                other = "backward" if name == "forward" else "forward"
                why = f": {reason.format(other=other)}" if reason else ""
                if name == "backward" and _is_decorated_with(method, CUSTOM_FWD, analysis):
                    why = ": it has custom_fwd, the forward's decorator, instead"
                yield self.finding(
                    method,
                    f"autograd.Function {cls.name}.{name} lacks {spelled.partition('(')[0]}{why}",
                    fix=f"decorate it with {spelled}"
                    + (" (cast_inputs=torch.float32 to run it in float32)" if name == "forward" else ""),
                )


def _decorated(method: ast.FunctionDef, name: str, analysis: ModuleAnalysis) -> bool:
    return _is_decorated_with(method, _REQUIRED[name][0], analysis)


def _is_decorated_with(method: ast.FunctionDef, accepted: frozenset[str], analysis: ModuleAnalysis) -> bool:
    return any(_is_amp_decorator(decorator, accepted, analysis) for decorator in method.decorator_list)


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
    for value in analysis.derived(Bindings).bound_values(target):
        if isinstance(value, ast.Call) and analysis.resolve(value.func) == "functools.partial" and value.args:
            value = value.args[0]
        if analysis.resolve(value) in accepted:
            return True
    return False


def _uses_autocast_float16_ops(cls: ast.ClassDef) -> bool:
    """Ops that CUDA autocast runs in float16: a Function using them sees float16 in forward (under
    autocast) and float32 in backward (autocast is off there), and mixes them."""
    for node in ast.walk(cls):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            return True
        if isinstance(node, ast.Call) and call_name(node) in AUTOCAST_LOWER_PRECISION_OPS:
            return True
    return False


def _calls_an_extension(cls: ast.ClassDef, analysis: ModuleAnalysis) -> bool:
    """A call through a compiled extension module or ``torch.ops`` in the Function's methods."""
    bindings = analysis.derived(Bindings)
    for node in ast.walk(cls):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            qualified = analysis.resolve(receiver) or ""
            if qualified.startswith("torch.ops.") or (qualified and not qualified.startswith("torch.") and _EXTENSION_MODULE.search(qualified)):
                return True
            # ext = torch.utils.cpp_extension.load(name="ext", sources=[...])
            if any(
                (analysis.resolve(value.func) or "").startswith("torch.utils.cpp_extension.load")
                for value in bindings.constructions(receiver)
            ):
                return True
    return False


def _autocast_in_play(analysis: ModuleAnalysis, summaries: Summaries) -> bool:
    """This module or another of its project opens an autocast region (a project that never does, like
    one that casts its models by hand, runs no Function under autocast); a file linted alone may be."""
    if analysis.uses_autocast or summaries.runs_under_autocast:
        return True
    return analysis.project is None or analysis.project.uses_autocast()


def _used_under_autocast(cls: ast.ClassDef, summaries: Summaries) -> bool:
    forward = summaries.method(cls, "forward")
    return forward is not None and summaries.inherited_region(forward) is not None


def _applied_only_with_autocast_off(cls: ast.ClassDef, analysis: ModuleAnalysis) -> bool:
    """Every use of ``Cls.apply`` in the module is a call inside ``autocast(enabled=False)``: the
    Function never runs under autocast, whatever its caller does (apex casts the inputs to the autocast
    dtype itself, then turns autocast off around ``apply``). False when it is applied nowhere here, or
    ``apply`` is stored for later (``fn = Cls.apply``)."""
    uses = [
        node
        for node in analysis.nodes(ast.Attribute)
        if node.attr == "apply" and isinstance(node.value, ast.Name) and node.value.id == cls.name
    ]
    if not uses:
        return False
    for use in uses:
        call = analysis.parents.get(use)
        if not (isinstance(call, ast.Call) and call.func is use):
            return False
        region = analysis.context(call).innermost_region
        if region is None or region.enabled is not False:
            return False
    return True


def _has_working_backward(cls: ast.ClassDef) -> bool:
    """A backward that computes gradients: not one that only raises, nor one that returns only Nones
    (``return (None,) * 5``: the Function is inference-only)."""
    for method in cls.body:
        if isinstance(method, ast.FunctionDef) and method.name == "backward":
            body = [stmt for stmt in method.body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
            if len(body) == 1 and isinstance(body[0], ast.Raise):
                return False
            return not (len(body) == 1 and isinstance(body[0], ast.Return) and _only_nones(body[0].value))
    return False


def _only_nones(value: ast.AST | None) -> bool:
    if value is None or isinstance(value, ast.Constant) and value.value is None:
        return True
    if isinstance(value, ast.Tuple):
        return all(_only_nones(element) for element in value.elts)
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult):  # (None,) * 5
        sides = (value.left, value.right)
        return any(isinstance(side, ast.Tuple) and _only_nones(side) for side in sides) and any(
            isinstance(side, ast.Constant) and isinstance(side.value, int) for side in sides
        )
    return False


def _backward_follows_the_gradient_dtype(cls: ast.ClassDef) -> bool:
    """The backward casts what it computes with to the incoming gradient's dtype (``w.to(grad.dtype)``,
    ``x.type_as(grad)``): it was written for whatever precision the forward ran in, so autocast's choice
    cannot make its operands clash."""
    backward = next((m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "backward"), None)
    if backward is None or len(backward.args.args) < 2:
        return False
    gradients = {arg.arg for arg in backward.args.args[1:]}
    for node in ast.walk(backward):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
        if node.func.attr == "type_as" and any(_names(arg, gradients) for arg in arguments):
            return True
        if node.func.attr == "to" and any(
            isinstance(arg, ast.Attribute) and arg.attr == "dtype" and _names(arg.value, gradients) for arg in arguments
        ):
            return True
    # compute_dtype = grad_output.dtype; w.to(compute_dtype)
    aliases = {
        target.id
        for node in ast.walk(backward)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "dtype"
        and _names(node.value.value, gradients)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return bool(aliases) and any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "to"
        and any(_names(arg, aliases) for arg in [*node.args, *(k.value for k in node.keywords)])
        for node in ast.walk(backward)
    )


def _names(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Name) and node.id in names
