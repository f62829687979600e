"""AMP006: a custom autograd Function that autocast does not know how to handle."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from typing import Iterator

from ..analysis.bindings import Bindings
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.summaries import Summaries, is_autograd_function
from ..analysis.torch_api import AUTOCAST_LOWER_PRECISION_OPS, CUSTOM_BWD, CUSTOM_FWD, DTYPE_KEEPING_OPS
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
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
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
            if not is_autograd_function(cls, analysis):
                continue
            summaries = summaries or analysis.derived(Summaries)
            methods = {
                method.name: method
                for method in cls.body
                if isinstance(method, ast.FunctionDef) and method.name in _REQUIRED
            }
            decorated = {name: _decorated(method, name, analysis) for name, method in methods.items()}
            wrong_decorator = "backward" in methods and _is_decorated_with(methods["backward"], CUSTOM_FWD, analysis)
            if len(methods) == 2 and decorated["backward"] and not decorated["forward"]:
                # custom_bwd reads the autocast state that custom_fwd records on ctx: without it, every
                # backward raises AttributeError.
                reason = "its backward is decorated, and custom_bwd needs the state custom_fwd records"
            elif len(methods) == 2 and decorated["forward"] and not decorated["backward"] and not wrong_decorator:
                # The backward runs with autocast off, as if neither were decorated, and is judged like an
                # undecorated one's. With cast_inputs the forward is a region with autocast off (its inputs
                # cast), so it runs no float16 op and nothing can clash.
                clash = _BackwardDtypes(cls).clash
                if clash is None or not _forward_runs_autocast_float16_ops(cls, analysis):
                    continue
                reason = _clash_reason(clash)
            elif len(methods) == 2 and any(decorated.values()):
                reason = "its {other} is decorated"
            elif _applied_only_with_autocast_off(cls, analysis):
                continue  # every apply runs in autocast(enabled=False), the inputs cast by hand (apex)
            elif (
                _forward_runs_autocast_float16_ops(cls, analysis)
                and _has_working_backward(cls)
                and (clash := _BackwardDtypes(cls).clash) is not None
                and _autocast_in_play(analysis, summaries)
            ):
                reason = _clash_reason(clash)
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
                why = f": {reason.replace('{other}', other)}" if reason else ""
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


def _forward_runs_autocast_float16_ops(cls: ast.ClassDef, analysis: ModuleAnalysis) -> bool:
    """The forward runs an op that CUDA autocast runs in float16 (outside a region of its own that turns
    autocast off): under autocast its output, and so the gradient its backward receives, is float16."""
    forward = next((m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "forward"), None)
    if forward is None:
        return False
    for node in ast.walk(forward):
        if _is_matmul_family(node) and not _on_complex_operands(node):
            region = analysis.context(node).innermost_region
            if region is None or region.enabled is not False:
                return True
    return False


# torch.fft's complex results: autocast casts only floating-point tensors, so an einsum or matmul of
# complex spectra runs in complex64 under autocast, and the real part it returns is float32 (peft's C3A).
_COMPLEX_RESULTS = frozenset({"fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "rfft2", "rfftn", "ihfft", "view_as_complex", "polar", "complex"})


def _on_complex_operands(node: ast.AST) -> bool:
    operands = [node.left, node.right] if isinstance(node, ast.BinOp) else [
        argument for argument in node.args if not isinstance(argument, ast.Constant)  # type: ignore[attr-defined]
    ]
    return bool(operands) and all(
        isinstance(operand, ast.Call) and call_name(operand) in _COMPLEX_RESULTS for operand in operands
    )


def _is_matmul_family(node: ast.AST) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)) or (
        isinstance(node, ast.Call) and call_name(node) in AUTOCAST_LOWER_PRECISION_OPS
    )


def _clash_reason(clash: ast.AST) -> str:
    return (
        f"under autocast its backward's `{_snippet(clash)}` (line {clash.lineno}) mixes the float16 gradient "
        "with a saved float32 tensor"
    )


def _snippet(node: ast.AST, limit: int = 40) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What a value in a backward holds, as far as its dtype goes: the incoming gradient's dtype (the forward
# output's: float16 under autocast), the saved tensors' (the forward's inputs: float32 weights), float32
# by an explicit cast, or a mixture whose dtype depends on what the code cannot tell (a promotion against
# a saved tensor that may be 0-dim, a call the analysis does not know).
_GRADIENT, _SAVED, _FLOAT32, _MIXED = "gradient", "saved", "float32", "mixed"
# ``ctx.scale``, ``ctx.weight``: kept on ctx by the forward, most often a number (a scale, a flag), so an
# elementwise product with it keeps the gradient's dtype; as a matmul operand it is a saved tensor.
_CONTEXT = "context"
_SAVED_CONTAINERS = frozenset({"saved_tensors", "saved_variables"})
_ELEMENTWISE = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.FloorDiv, ast.Mod)


class _BackwardDtypes:
    """Follows, statement by statement, which values of a Function's backward carry the incoming
    gradient's dtype and which the saved tensors'. ``clash`` is the first op that autocast would run in
    float16 in a forward but that, in a backward (autocast off), multiplies a value of the gradient's dtype
    by one of the saved tensors' or an explicit float32: under autocast that op gets float16 and float32
    operands and raises ("expected m1 and m2 to have the same dtype"). A backward that casts to the
    gradient's dtype (``w.to(grad.dtype)``, ``x.type_as(grad)``), or promotes the gradient through an
    elementwise product with a saved tensor first (peft's LoHa), has no clash. A call the analysis does
    not know is taken to keep its operands' dtype (an all-to-all, a chunking helper).

    A value's label is the set of classes it may have, one per path: after ``if upcast: grad =
    grad.float()`` the gradient may still be float16, and a clash on any path is a clash."""

    def __init__(self, cls: ast.ClassDef) -> None:
        self.clash: ast.AST | None = None
        self._dtypes: dict[str, _Label] = {}  # compute_dtype = grad.dtype
        backward = next((m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "backward"), None)
        if backward is None:
            return
        arguments = backward.args
        positional = [*arguments.posonlyargs, *arguments.args]
        env: dict[str, _Label] = {argument.arg: _ONLY_GRADIENT for argument in positional[1:]}
        if arguments.vararg:
            env[arguments.vararg.arg] = _ONLY_GRADIENT
        self._ctx = positional[0].arg if positional else None
        self._block(backward.body, env)

    def _block(self, body: list[ast.stmt], env: dict[str, _Label]) -> dict[str, _Label]:
        for statement in body:
            if self.clash is not None:
                break
            if isinstance(statement, ast.Assign):
                label = self._label(statement.value, env)
                for target in statement.targets:
                    self._bind(target, label, statement.value, env)
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                self._bind(statement.target, self._label(statement.value, env), statement.value, env)
            elif isinstance(statement, ast.AugAssign):
                label = self._label(ast.BinOp(statement.target, statement.op, statement.value), env)
                self._bind(statement.target, label, statement.value, env)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            elif isinstance(statement, ast.If):
                self._label(statement.test, env)
                body_env, else_env = dict(env), dict(env)
                same = _same_dtype_when(statement.test)
                if same is not None:
                    # `if grad.dtype != saved.dtype: grad = grad.to(saved.dtype)`: on the arm where the
                    # dtypes are already equal, the first has the second's dtype (scattermoe's backward)
                    names, arm_env = same
                    target = body_env if arm_env else else_env
                    for gradient, other in (names, names[::-1]):
                        # only the gradient takes the other's dtype: a saved tensor never becomes one
                        if _GRADIENT in env.get(gradient, _UNTRACKED) and env.get(other) and _GRADIENT not in env[other]:
                            target[gradient] = env[other]
                taken = self._block(statement.body, body_env)
                env = _merge(taken, self._block(statement.orelse, else_env))
            elif isinstance(statement, (ast.For, ast.AsyncFor, ast.While)):
                # The body may run or not: what it binds merges with what came before.
                self._label(getattr(statement, "iter", None) or statement.test, env)  # type: ignore[arg-type]
                if isinstance(statement, (ast.For, ast.AsyncFor)):
                    self._bind(statement.target, self._label(statement.iter, env), statement.iter, env)
                env = _merge(env, self._block(statement.body, dict(env)))  # one pass: linear in the code
                env = _merge(env, self._block(statement.orelse, dict(env)))
            elif isinstance(statement, ast.Try):
                tried = self._block(statement.body, dict(env))
                env = _merge(env, tried)
                for handler in statement.handlers:
                    env = _merge(env, self._block(handler.body, dict(env)))
                env = self._block(statement.orelse, env)
                env = self._block(statement.finalbody, env)
            else:
                for child in ast.iter_child_nodes(statement):
                    if isinstance(child, ast.expr):
                        self._label(child, env)
                    elif isinstance(child, ast.withitem):
                        self._label(child.context_expr, env)
                env = self._block(getattr(statement, "body", []) or [], env)
        return env

    def _bind(self, target: ast.expr, label: _Label, value: ast.expr, env: dict[str, _Label]) -> None:
        if isinstance(target, ast.Name):
            if label:
                env[target.id] = label
            else:
                env.pop(target.id, None)
            if isinstance(value, ast.Attribute) and value.attr == "dtype":
                dtype_of = self._label(value.value, env)
                if dtype_of:
                    self._dtypes[target.id] = dtype_of
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) else None
            for index, element in enumerate(target.elts):
                element = element.value if isinstance(element, ast.Starred) else element
                if elements is not None:
                    self._bind(element, self._label(elements[index], env), elements[index], env)
                else:
                    self._bind(element, label, value, env)

    def _label(self, node: ast.expr, env: dict[str, _Label]) -> _Label:
        """The classes the node's value may have; empty for what is not a tracked tensor (a shape, a
        number, a name the backward never bound to a tensor)."""
        if isinstance(node, ast.Name):
            return env.get(node.id, _UNTRACKED)
        if isinstance(node, ast.Constant):
            return _UNTRACKED
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == self._ctx:
                return frozenset({_SAVED if node.attr in _SAVED_CONTAINERS else _CONTEXT})
            if node.attr in ("T", "mT", "H", "mH", "data"):
                return self._label(node.value, env)
            self._label(node.value, env)
            return _UNTRACKED
        if isinstance(node, ast.Subscript):
            self._label(node.slice, env)
            return self._label(node.value, env)
        if isinstance(node, ast.Starred):
            return self._label(node.value, env)
        if isinstance(node, (ast.Tuple, ast.List)):
            return _union([self._label(element, env) for element in node.elts])
        if isinstance(node, ast.UnaryOp):
            return self._label(node.operand, env)
        if isinstance(node, ast.BinOp):
            left, right = self._label(node.left, env), self._label(node.right, env)
            if isinstance(node.op, ast.MatMult):
                self._check(node, [left, right])
            return _combine([left, right])
        if isinstance(node, ast.IfExp):
            self._label(node.test, env)
            return _union([self._label(node.body, env), self._label(node.orelse, env)])
        if isinstance(node, ast.Call):
            return self._call(node, env)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._label(child, env)
        return _UNTRACKED

    def _call(self, call: ast.Call, env: dict[str, _Label]) -> _Label:
        name = call_name(call)
        receiver = self._label(call.func.value, env) if isinstance(call.func, ast.Attribute) else _UNTRACKED
        arguments = [self._label(argument, env) for argument in call.args]
        keywords = [self._label(keyword.value, env) for keyword in call.keywords]
        is_method = bool(receiver)
        operands = ([receiver] if is_method else []) + arguments
        if name in AUTOCAST_LOWER_PRECISION_OPS:
            self._check(call, operands + keywords)
            return _combine(operands + keywords)
        if is_method and name in ("float", "double"):
            return _ONLY_FLOAT32
        if is_method and name in ("to", "type", "type_as"):
            for argument in [*call.args, *(keyword.value for keyword in call.keywords)]:
                if isinstance(argument, ast.Attribute) and argument.attr == "dtype":
                    return self._label(argument.value, env) or _ONLY_MIXED
                if isinstance(argument, ast.Name) and argument.id in self._dtypes:
                    return self._dtypes[argument.id]
                if name == "type_as":
                    return self._label(argument, env) or _ONLY_MIXED
                if isinstance(argument, ast.Attribute) and argument.attr in ("float32", "float"):
                    return _ONLY_FLOAT32
                if isinstance(argument, ast.Attribute) and argument.attr in ("float16", "half", "bfloat16"):
                    return _ONLY_MIXED
            return receiver  # .to(device), .to(non_blocking=True): the dtype is unchanged
        # Shape ops, elementwise math, and calls the analysis does not know (a collective that moves the
        # gradient between ranks, a project helper): the result has the dtype of the tensors they are given.
        return _combine(operands if name in DTYPE_KEEPING_OPS else operands + keywords)

    def _check(self, node: ast.AST, labels: list[_Label]) -> None:
        if self.clash is not None:
            return
        for index, label in enumerate(labels):
            others = [other for position, other in enumerate(labels) if position != index]
            if _GRADIENT in label and any(_CLASHES_WITH_GRADIENT & other for other in others):
                self.clash = node
                return


def _same_dtype_when(test: ast.expr) -> tuple[tuple[str, str], bool] | None:
    """For ``a.dtype == b.dtype`` (or ``!=``, or ``is``) between two names: the names, and whether the
    dtypes are equal in the ``if`` arm (True) or in the ``else`` arm (False)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    sides = [test.left, test.comparators[0]]
    if not all(isinstance(side, ast.Attribute) and side.attr == "dtype" and isinstance(side.value, ast.Name) for side in sides):
        return None
    names = (sides[0].value.id, sides[1].value.id)  # type: ignore[attr-defined]
    if isinstance(test.ops[0], (ast.Eq, ast.Is)):
        return names, True
    if isinstance(test.ops[0], (ast.NotEq, ast.IsNot)):
        return names, False
    return None


_Label = frozenset  # of _GRADIENT, _SAVED, _CONTEXT, _FLOAT32, _MIXED: the classes a value may have
_UNTRACKED: frozenset = frozenset()
_ONLY_GRADIENT, _ONLY_FLOAT32, _ONLY_MIXED = frozenset({_GRADIENT}), frozenset({_FLOAT32}), frozenset({_MIXED})
_CLASHES_WITH_GRADIENT = frozenset({_SAVED, _CONTEXT, _FLOAT32})


def _merge(first: dict[str, _Label], second: dict[str, _Label]) -> dict[str, _Label]:
    """The bindings after two paths join: a name bound on one path only keeps what the other left."""
    return {name: first.get(name, _UNTRACKED) | second.get(name, _UNTRACKED) for name in first.keys() | second.keys()}


def _union(labels: list[_Label]) -> _Label:
    return frozenset().union(*labels)


def _combine(labels: list[_Label]) -> _Label:
    """The classes of an op's result, path by path: operands of one class give that class; a value kept
    on ctx beside a tensor is most often a number and leaves it alone; two different classes (a
    promotion whose result depends on a 0-dim saved tensor, say) give a mixture the analysis cannot name."""
    results: set[str] = set()
    tracked = [label for label in labels if label]
    if not tracked:
        return _UNTRACKED
    for combination in _combinations(tracked):
        known = set(combination)
        if len(known) > 1:
            known.discard(_CONTEXT)
        results.add(known.pop() if len(known) == 1 else _MIXED)
    return frozenset(results)


def _combinations(labels: list[_Label], limit: int = 64) -> list[tuple[str, ...]]:
    combinations: list[tuple[str, ...]] = [()]
    for label in labels:
        combinations = [(*combination, choice) for combination in combinations for choice in sorted(label)][:limit]
    return combinations


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
    """This module opens an autocast region, or the project does somewhere and does not run this module
    only without it (a project that never opens one, like one that casts its models by hand, runs no
    Function under autocast; nor does one whose own trainer imports the module and never opens autocast,
    while no module that opens it reaches this one); a file linted alone may be."""
    if analysis.uses_autocast or summaries.runs_under_autocast:
        return True
    project = analysis.project
    if project is None or not analysis.path:
        return True
    return project.uses_autocast() and not project.trained_only_without_autocast(analysis.path)


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
