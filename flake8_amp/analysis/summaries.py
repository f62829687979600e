"""What each function and class of a module does, so that rules ask facts instead of matching names.

A function *trains* (calls ``backward`` or steps an optimizer, itself or through a function it calls),
*scales the loss* (``scaler.scale(loss).backward()``), *steps through the scaler*, *computes a loss*
(returns the result of a loss function), *returns a half-cast value*, *reads a parameter only through a
cast to float32* (``output.float()``), or *returns a checkpoint* (a dict with an optimizer's state, with
or without a GradScaler's). A class *owns a scaler*, and its
``state_dict()`` includes or omits it. A function is *called inside an autocast region* when a call in an
enabled region reaches it: directly, through the functions that call it, through an instance call
(``model(x)`` runs ``Net.forward``) or ``Fn.apply`` (runs ``Fn.forward``), in this module or, through
the project index, in another one.

Calls are followed by *reference*: ``@name`` for a function or class of this module (``@Net.forward``),
the qualified name as imported for anything else (``models.yolo.Model``, ``.losses.kd_loss``); an
instance call is ``<class>.__call__`` and ``Fn.apply`` is ``Fn.forward``. References are what the project
index stores and resolves across files.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Iterator

from .autocast_regions import AutocastRegion
from .bindings import Bindings, alternatives
from .dataflow import evaluate
from .dtypes import cast_dtype
from .module_analysis import ModuleAnalysis, call_name
from .torch_api import (
    AUTOGRAD_FUNCTION_BASES,
    CUDA_FLOAT32_OPS,
    DTYPE_KEEPING_OPS,
    GRAD_SCALER_CONSTRUCTORS,
    LOSS_FUNCTIONS,
    NON_FLOAT_RESULTS,
)
from .training_calls import (
    DIRECT_STEP,
    PLAIN_BACKWARD,
    SCALED_BACKWARD,
    SCALER_STEP,
    WRAPPER_BACKWARD,
    TrainingCalls,
)

FunctionNode = (ast.FunctionDef, ast.AsyncFunctionDef)
# Standard-library modules whose functions never touch a tensor's precision.
_BUILTIN_MODULES = frozenset({"math", "operator", "functools", "itertools", "numbers", "typing", "warnings", "logging"})
_BUILTINS = frozenset(dir(builtins))
# Tensor methods autocast leaves in the tensor's dtype, besides the shape and elementwise ops.
_TENSOR_METHODS_KEEPING_PRECISION = DTYPE_KEEPING_OPS | NON_FLOAT_RESULTS | {"mean", "float", "to", "item", "size", "numel", "sqrt", "append", "get"}
# The names a GradScaler class goes by: torch's, and the copies frameworks keep (ColossalAI's own GradScaler).
SCALER_CLASS_NAMES = ("GradScaler", "ShardedGradScaler")
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
LOCAL = "@"
INSTANCE_CALL = "__call__"


@dataclass(frozen=True)
class RegionInfo:
    """The settings of the autocast region a function is called in (``None``: not literal)."""

    device_type: str | None
    dtype: str | None
    #: where the call that reaches the function is: "line 42" or "train.py:42"
    where: str
    #: whether the function that opens the region (or one it calls) steps an optimizer: gradients made
    #: under it may be applied. A region opened only to measure (a batch-size probe running forward and
    #: backward to time them) steps none.
    caller_steps: bool = True

    @staticmethod
    def of(region: AutocastRegion, where: str, caller_steps: bool = True) -> "RegionInfo":
        return RegionInfo(region.device_type, region.effective_dtype, where, caller_steps)

    def as_region(self, function: ast.AST) -> AutocastRegion:
        return AutocastRegion(
            node=function,
            api=f"autocast region at {self.where}",
            device_type=self.device_type,
            dtype=self.dtype,
            enabled=None,
            dtype_known=True,
            inherited=True,
            caller_steps=self.caller_steps,
        )


def is_autograd_function(cls: ast.ClassDef, analysis: ModuleAnalysis) -> bool:
    """``class F(torch.autograd.Function)``, by the base's qualified name (answered without summaries)."""
    return any(analysis.resolve(base) in AUTOGRAD_FUNCTION_BASES for base in cls.bases)


class Summaries:
    """Use as ``analysis.derived(Summaries)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._facts: dict[object, dict] = {}
        self._pending: set[object] = set()

    @cached_property
    def bindings(self) -> Bindings:
        return self.analysis.derived(Bindings)

    # ---------------------------------------------------------------- this module's definitions
    @cached_property
    def definitions(self) -> dict[str, ast.AST]:
        """Functions and classes by qualified name within the module (``Trainer.step``)."""
        found: dict[str, ast.AST] = {}
        pending: list[tuple[str, list]] = [("", self.analysis.tree.body)]
        while pending:
            prefix, body = pending.pop()
            for statement in body:
                if isinstance(statement, (*FunctionNode, ast.ClassDef)):
                    name = prefix + statement.name
                    found.setdefault(name, statement)
                    pending.append((name + ".", statement.body))
                elif isinstance(statement, (ast.If, ast.Try)):
                    pending.append((prefix, statement.body))
                    pending.append((prefix, statement.orelse))
        return found

    @cached_property
    def qualname_of(self) -> dict[ast.AST, str]:
        return {node: name for name, node in self.definitions.items()}

    def method(self, cls: ast.ClassDef, name: str) -> ast.AST | None:
        """A method of a class of this module, or of a base class of this module."""
        seen = set()
        while cls is not None and cls not in seen:
            seen.add(cls)
            for statement in cls.body:
                if isinstance(statement, FunctionNode) and statement.name == name:
                    return statement
            cls = next((self.local_class(base) for base in cls.bases if self.local_class(base)), None)  # type: ignore[assignment]
        return None

    def local_class(self, node: ast.AST) -> ast.ClassDef | None:
        if isinstance(node, ast.Name):
            found = self.definitions.get(node.id)
            return found if isinstance(found, ast.ClassDef) else None
        return None

    def is_autograd_function(self, cls: ast.ClassDef) -> bool:
        return is_autograd_function(cls, self.analysis)

    def function_of(self, node: ast.AST) -> ast.AST | None:
        """The function (not lambda or class body) ``node`` runs in; None for the module body."""
        scope = self.bindings.scope_of(node)
        while scope is not None and not isinstance(scope, FunctionNode):
            scope = self.bindings.scope_of(scope)
        return scope

    # ---------------------------------------------------------------- what a call reaches
    def call_reference(self, call: ast.Call) -> str | None:
        """The reference of what ``call`` runs (see the module doc), or None when the source does not say."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "apply":
            cls = self.local_class(func.value)
            if cls is not None:
                return f"{LOCAL}{cls.name}.forward"
            qualified = self.analysis.resolve(func.value)
            return f"{qualified}.forward" if qualified else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            owner = self._enclosing_class(call)
            if owner is not None and owner in self.qualname_of and self.method(owner, func.attr) is not None:
                # (a class defined inside a function has no qualified name here: what it runs is not said)
                return f"{LOCAL}{self.qualname_of[owner]}.{func.attr}"
        instance = self._instance_class(func)
        if instance is not None:
            return f"{instance}.{INSTANCE_CALL}"
        if isinstance(func, ast.Attribute):
            owner_class = self._instance_class(func.value)
            if owner_class is not None:
                return f"{owner_class}.{func.attr}"
        if isinstance(func, ast.Name):
            for binding in self.bindings.reaching(func):
                if isinstance(binding.statement, FunctionNode) and binding.statement.name == func.id:
                    name = self.qualname_of.get(binding.statement)
                    return f"{LOCAL}{name}" if name else None
        qualified = self.analysis.resolve(func)
        return qualified if qualified and not qualified.startswith("torch.") else None

    def _instance_class(self, node: ast.AST) -> str | None:
        """The class (reference) whose instance ``node`` holds: ``model = Net()``, ``self.head = Head()``."""
        if not isinstance(node, (ast.Name, ast.Attribute)):
            return None
        if isinstance(node, ast.Name):
            # Reads of a module-level name from functions share one list of bindings: answer it once.
            reaching = self.bindings.reaching(node)
            known = self._instances.get(id(reaching))
            if known is not None and known[0] is reaching:
                return known[1]
            found = self._annotated_class(node) or self._constructed_class(
                [c for v in self.bindings.reaching_values(node) for c in alternatives(v) if isinstance(c, ast.Call)]  # type: ignore[arg-type]
            )
            self._instances[id(reaching)] = (reaching, found)
            return found
        return self._constructed_class(self.bindings.constructions(node))

    @cached_property
    def _instances(self) -> dict[int, tuple[list, str | None]]:
        return {}

    def _constructed_class(self, constructions: list[ast.Call]) -> str | None:
        for construction in constructions:
            construction = _strip_module_methods(construction)
            cls = self.local_class(construction.func)
            if cls is not None:
                return f"{LOCAL}{self.qualname_of[cls]}"
            qualified = self.analysis.resolve(construction.func)
            if qualified and not qualified.startswith("torch.") and qualified.rpartition(".")[2][:1].isupper():
                return qualified
        return None

    def _annotated_class(self, node: ast.Name) -> str | None:
        """``def save(trainer: Trainer, ...)``: a parameter annotated with a class holds an instance of it."""
        for binding in self.bindings.reaching(node):
            function = binding.statement
            if binding.value is not None or not isinstance(function, (*FunctionNode, ast.Lambda)):
                continue
            arguments = function.args
            for argument in arguments.posonlyargs + arguments.args + arguments.kwonlyargs:
                annotation = argument.annotation
                if argument.arg != node.id or annotation is None:
                    continue
                if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                    annotation = ast.Name(id=annotation.value, ctx=ast.Load())
                cls = self.local_class(annotation)
                if cls is not None:
                    return f"{LOCAL}{self.qualname_of[cls]}"
                qualified = self.analysis.resolve(annotation)
                if qualified and not qualified.startswith(("torch.", "typing.")):
                    return qualified
        return None

    def _enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        scope = self.bindings.scope_of(node)
        while scope is not None and not isinstance(scope, ast.ClassDef):
            scope = self.bindings.scope_of(scope)
        return scope

    def local_targets(self, reference: str) -> list[ast.AST]:
        """The functions of this module a local reference runs (an instance call runs ``__call__`` or
        ``forward``)."""
        if not reference.startswith(LOCAL):
            return []
        name = reference[len(LOCAL) :]
        owner, _, member = name.rpartition(".")
        if member == INSTANCE_CALL:
            cls = self.definitions.get(owner)
            if isinstance(cls, ast.ClassDef):
                return [m for m in (self.method(cls, "__call__"), self.method(cls, "forward")) if m is not None]
            return []
        node = self.definitions.get(name)
        if isinstance(node, FunctionNode):
            return [node]
        cls = self.definitions.get(owner)
        if isinstance(cls, ast.ClassDef):
            found = self.method(cls, member)
            return [found] if found is not None else []
        return []

    def calls_in(self, body: list[ast.stmt]) -> Iterator[ast.Call]:
        """The calls that run when ``body`` runs: not inside nested functions, classes or lambdas, nor
        inside a nested ``autocast(enabled=False)`` block. ``body`` is a function's, the module's, or an
        autocast region's."""
        owner = self.analysis.parents.get(body[0]) if body else None
        if isinstance(owner, FunctionNode) and body is owner.body:
            return iter(self._calls_by_function.get(owner, ()))
        if owner is self.analysis.tree:
            return iter(self._calls_by_function.get(None, ()))
        return self._walk_calls(body)

    @cached_property
    def _calls_by_function(self) -> dict[ast.AST | None, list[ast.Call]]:
        """Every call of the module by the function it runs in (lambdas belong to no function's body),
        in source order, less those inside a disabled autocast region."""
        disabled = self._inside_disabled_regions
        grouped: dict[ast.AST | None, list[ast.Call]] = {}
        bindings = self.bindings
        for call in self.analysis.calls:
            scope = bindings.scope_of(call)
            if isinstance(scope, (ast.Lambda, ast.ClassDef)) or call in disabled:
                continue
            grouped.setdefault(scope, []).append(call)
        return grouped

    @cached_property
    def _inside_disabled_regions(self) -> set[ast.AST]:
        found: set[ast.AST] = set()
        for region in self.analysis.regions:
            if region.enabled is False and isinstance(region.node, (ast.With, ast.AsyncWith)):
                for statement in region.node.body:
                    found.update(ast.walk(statement))
        return found

    def _walk_calls(self, body: list[ast.stmt]) -> Iterator[ast.Call]:
        pending: list[ast.AST] = list(reversed(body))
        region_of = self.analysis.region_of_with_item
        while pending:
            node = pending.pop()
            if isinstance(node, _NESTED_SCOPES):
                continue
            if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                (region := region_of(item.context_expr, node)) is not None and region.enabled is False for item in node.items
            ):
                pending += reversed([item.context_expr for item in node.items])
                continue
            if isinstance(node, ast.Call):
                yield node
            pending += reversed(list(ast.iter_child_nodes(node)))

    # ---------------------------------------------------------------- called under autocast
    def inherited_region(self, function: ast.AST) -> AutocastRegion | None:
        """The autocast region ``function`` runs in because a call inside one reaches it."""
        info = self._called_under_autocast.get(function)
        return info.as_region(function) if info is not None else None

    @property
    def runs_under_autocast(self) -> bool:
        """Some function of this module is called inside an enabled autocast region."""
        return bool(self._called_under_autocast)

    @cached_property
    def _called_under_autocast(self) -> dict[ast.AST, RegionInfo]:
        marked: dict[ast.AST, RegionInfo] = {}
        work: list[ast.AST] = []

        def mark(target: ast.AST, info: RegionInfo) -> None:
            kept = merged_region_info(marked.get(target), info)
            if kept is not None:
                marked[target] = kept
                work.append(target)

        for region in self.analysis.regions:
            if not region.may_be_enabled:
                continue
            body = region.node.body  # type: ignore[attr-defined]
            steps = self.region_steps(region)
            for call in self.calls_in(body):
                reference = self.call_reference(call)
                for target in self.local_targets(reference) if reference else ():
                    mark(target, RegionInfo.of(region, f"line {call.lineno}", steps))
        project = self.analysis.project
        if project is not None and self.analysis.path:
            for qualname, info in project.autocast_uses(self.analysis.path).items():
                for target in self.local_targets(LOCAL + qualname):
                    mark(target, info)
        while work:
            function = work.pop()
            info = marked[function]
            for call in self.calls_in(function.body):  # type: ignore[attr-defined]
                reference = self.call_reference(call)
                for target in self.local_targets(reference) if reference else ():
                    mark(target, info)
        return marked

    def region_steps(self, region: AutocastRegion) -> bool:
        """Whether the function that opens ``region`` steps an optimizer, itself or through the
        functions of the project it calls (module-level code: assumed to)."""
        function = self.function_of(region.node)
        return self.steps(function) if isinstance(function, FunctionNode) else True

    def steps(self, function: ast.AST) -> bool:
        """Whether ``function`` steps an optimizer: it calls something whose name says so (``.step()``,
        ``optimizer_step()``, a wrapper's ``train_step()``), or a function of this module that does, or
        one of another module of the project that does itself. Read from the calls alone (not from
        what runs under autocast, which asks this question)."""
        return bool(evaluate(function, self._fact_parts, self._combine_steps, self._steps, self._steps_pending))

    @cached_property
    def _steps(self) -> dict[object, bool]:
        return {}

    @cached_property
    def _steps_pending(self) -> set[object]:
        return set()

    def _combine_steps(self, function: object, known: dict) -> bool:
        if self._calls_a_step(function):  # type: ignore[arg-type]
            return True
        if any(known.get(target, True) for target in self._fact_parts(function)):
            return True  # a callee of this module that steps (or one still being asked: a cycle)
        return any(
            (self._foreign_facts(reference) or {}).get("steps", False)
            for reference in self._references(function)  # type: ignore[arg-type]
            if not reference.startswith(LOCAL)
        )

    # ---------------------------------------------------------------- function facts
    def facts(self, function: ast.AST) -> dict:
        """The facts of a function of this module (see :data:`FACT_NAMES`)."""
        return evaluate(function, self._fact_parts, self._combine_facts, self._facts, self._pending) or {}

    def _fact_parts(self, function: object) -> list:
        references = self._references(function)  # type: ignore[arg-type]
        return [target for reference in references for target in self.local_targets(reference)]

    def _references(self, function: ast.AST) -> list[str]:
        found = self._reference_cache.get(function)
        if found is None:
            found = [r for call in self.calls_in(function.body) if (r := self.call_reference(call))]  # type: ignore[attr-defined]
            self._reference_cache[function] = found
        return found

    @cached_property
    def _reference_cache(self) -> dict[ast.AST, list[str]]:
        return {}

    def _combine_facts(self, function: object, facts: dict) -> dict:
        assert isinstance(function, FunctionNode)
        training = self.analysis.derived(TrainingCalls)
        kinds = {event.kind for event in training.events(function)}
        local = [facts.get(target) or {} for target in self._fact_parts(function)]
        foreign = {r: self._foreign_facts(r) for r in self._references(function) if not r.startswith(LOCAL)}
        callees = local + [f for f in foreign.values() if f]
        # The calls whose callee is a function of the project: their own facts answer for them.
        summarised = {r for r in self._references(function) if foreign.get(r) or r.startswith(LOCAL) and self.local_targets(r)}
        scaled = SCALED_BACKWARD in kinds or any(c.get("scales_loss") for c in callees)
        trains = bool(kinds & {SCALED_BACKWARD, PLAIN_BACKWARD, WRAPPER_BACKWARD, DIRECT_STEP, SCALER_STEP})
        return {
            "trains": trains or any(c.get("trains") for c in callees),
            "scales_loss": scaled,
            "steps_scaler": SCALER_STEP in kinds or any(c.get("steps_scaler") for c in callees),
            "computes_loss": self._returns(function, self._is_loss_value),
            "returns_half": self._returns(function, self._is_half_value),
            "saved_parameters": self._saved_parameters(function),
            "autocast_float32_ops": self._runs_autocast_float32_ops(function, summarised)
            or any(c.get("autocast_float32_ops", True) for c in callees),
        }

    def _calls_a_step(self, function: ast.AST) -> bool:
        """A call whose name says it steps (``.step()``, ``optimizer_step()``, ``train_step()``) that the
        training analysis does not place: a wrapper's, a framework's."""
        return any("step" in (call_name(call) or "").lower() for call in self.calls_in(function.body))  # type: ignore[attr-defined]

    def _runs_autocast_float32_ops(self, function: ast.AST, summarised: set[str]) -> bool:
        """The function runs an op that CUDA autocast would run in float32 (a torch loss, softmax,
        ``sum``, ``exp``, ``log``, ``pow``, a norm ...), or calls something the source does not show (a
        package's function, a module held in an attribute: it may): computed outside autocast on float16
        values, such a function runs in float16 where autocast would have picked float32. One made of
        elementwise ops, ``mean``, ``clamp`` and ``maximum`` (a PPO objective) runs the same either way.
        The functions of the project it calls (``summarised``: their references) answer for themselves."""
        for node in ast.walk(function):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                return True
            if not isinstance(node, ast.Call):
                continue
            name = call_name(node)
            if name in CUDA_FLOAT32_OPS or name in LOSS_FUNCTIONS:
                return True
            qualified = self.analysis.resolve(node.func)
            if qualified is not None:
                if qualified.startswith("torch.") or qualified.partition(".")[0] in _BUILTIN_MODULES:
                    continue  # a torch op off autocast's float32 list, or the standard library
            elif isinstance(node.func, ast.Name) and node.func.id in _BUILTINS:
                continue  # len(), max(), isinstance() ...
            elif isinstance(node.func, ast.Attribute) and name in _TENSOR_METHODS_KEEPING_PRECISION:
                continue  # x.mean(), x.view(...), x.clamp(...): a tensor's own method off the list
            if self.call_reference(node) in summarised:
                continue  # a function of the project: its own facts answer
            return True
        return False

    def float32_parameters(self, function: ast.AST) -> list[int]:
        """See :meth:`_float32_parameters`; asked only where a call hands a low-precision value over."""
        found = self._float32_parameter_cache.get(function)
        if found is None:
            found = self._float32_parameter_cache[function] = self._float32_parameters(function)
        return found

    @cached_property
    def _float32_parameter_cache(self) -> dict[ast.AST, list[int]]:
        return {}

    def _float32_parameters(self, function: ast.AST) -> list[int]:
        """The positions, in a call, of the parameters the function only ever reads through a cast to
        float32 or float64 (``def compute_loss(output, label): return f(output.float(), label.float())``,
        ``z = z.float()`` first), also element by element (``for real, fake in zip(reals, fakes): real =
        real.float()``, as VITS's GAN losses read lists of discriminator outputs): a float16 argument there
        is computed with in float32."""
        positional = self._call_positions(function)
        loads: dict[str, list[ast.Name]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                loads.setdefault(node.id, []).append(node)
        return [
            index
            for index, name in enumerate(positional)
            if self._read_only_as_float32(function, name, loads, 0)
        ]

    def _call_positions(self, function: ast.AST) -> list[str]:
        """The names of the parameters a call's positional arguments fill, in order (a method's
        ``self`` is not one of them; a staticmethod has none such)."""
        arguments = function.args  # type: ignore[attr-defined]
        positional = [argument.arg for argument in (*arguments.posonlyargs, *arguments.args)]
        is_method = self._enclosing_class(function) is not None and not any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list  # type: ignore[attr-defined]
        )
        return positional[1:] if is_method else positional

    def _saved_parameters(self, function: ast.AST) -> list[int]:
        """The positions, in a call, of the parameters the function hands to ``torch.save`` as the
        object to save (``def save_checkpoint(state, is_best, save_dir): torch.save(state, path)``)."""
        positional = self._call_positions(function)
        vararg = function.args.vararg  # type: ignore[attr-defined]
        found = set()
        for call in self.calls_in(function.body):  # type: ignore[attr-defined]
            first = call.args[0] if call.args else None
            if (
                isinstance(first, ast.Starred)
                and vararg is not None
                and isinstance(first.value, ast.Name)
                and first.value.id == vararg.arg
                and self.analysis.resolve(call.func) == "torch.save"
            ):
                found.add(len(positional))  # `def save_on_master(*args, **kwargs): torch.save(*args, **kwargs)`
                continue
            if not isinstance(first, ast.Name) or first.id not in positional:
                continue
            if self.analysis.resolve(call.func) != "torch.save":
                continue
            if any(binding.statement is function for binding in self.bindings.reaching(call.args[0])):
                found.add(positional.index(call.args[0].id))
        return sorted(found)

    def _read_only_as_float32(self, owner: ast.AST, name: str, loads: dict[str, list[ast.Name]], depth: int) -> bool:
        """Every read of ``name`` that the binding made by ``owner`` (the function, for a parameter; a
        ``for`` statement, for its target) reaches is a cast to float32, or the iterable of a ``for``
        (directly or through ``zip`` / ``enumerate``) whose targets are read only so in turn."""
        if depth > 3:
            return False
        named = loads.get(name, ())
        if not any(self._casts_to_float32(use) or self._loop_over(use)[0] is not None for use in named):
            return False  # most parameters: never cast nor iterated, whatever binding reaches them
        uses = [use for use in named if any(b.statement is owner for b in self.bindings.reaching(use))]
        if not uses:
            return False
        for use in uses:
            if self._casts_to_float32(use):
                continue
            if isinstance(self.analysis.parents.get(use), ast.Attribute):
                return False
            loop, target = self._loop_over(use)
            if loop is None or target is None:
                return False
            targets = [t.id for t in ast.walk(target) if isinstance(t, ast.Name)]
            if not targets or not all(self._read_only_as_float32(loop, t, loads, depth + 1) for t in targets):
                return False
        return True

    def _casts_to_float32(self, use: ast.Name) -> bool:
        """``use.float()``, ``use.to(torch.float32)``, ``use.double()``."""
        parent = self.analysis.parents.get(use)
        call = self.analysis.parents.get(parent) if isinstance(parent, ast.Attribute) else None
        return (
            isinstance(call, ast.Call)
            and call.func is parent
            and cast_dtype(call, self.analysis.resolve) in ("float32", "float64")
        )

    def _loop_over(self, use: ast.Name) -> tuple[ast.AST | None, ast.AST | None]:
        """(the ``for`` statement, the part of its target) that iterating ``use`` binds: ``for x in use``
        -> x; ``for a, b in zip(p, use)`` -> b; ``for i, x in enumerate(use)`` -> x."""
        parents = self.analysis.parents
        parent = parents.get(use)
        if isinstance(parent, (ast.For, ast.AsyncFor)) and parent.iter is use:
            return parent, parent.target
        if not (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and use in parent.args):
            return None, None
        loop = parents.get(parent)
        if not (isinstance(loop, (ast.For, ast.AsyncFor)) and loop.iter is parent and isinstance(loop.target, ast.Tuple)):
            return None, None
        position = parent.args.index(use)
        if parent.func.id == "zip" and len(loop.target.elts) == len(parent.args):
            return loop, loop.target.elts[position]
        if parent.func.id == "enumerate" and position == 0 and len(loop.target.elts) == 2:
            return loop, loop.target.elts[1]
        return None, None

    def casts_argument_to_float32(self, call: ast.Call, arg: ast.expr) -> bool:
        """The callee (of this module or, through the project index, another) reads the parameter ``arg``
        is passed to only through ``.float()`` (or another cast to float32): it computes in float32."""
        if arg not in call.args:
            return False
        position = call.args.index(arg)
        reference = self.call_reference(call)
        if reference is None:
            return False
        targets = self.local_targets(reference)
        if targets:
            return all(position in self.float32_parameters(target) for target in targets)
        if reference.startswith(LOCAL):
            return False
        facts = self._foreign_facts(reference)
        return bool(facts) and position in (facts.get("float32_parameters") or ())

    def _foreign_facts(self, reference: str) -> dict | None:
        project = self.analysis.project
        if project is None or not self.analysis.path:
            return None
        return project.function_facts(self.analysis.path, reference)

    @cached_property
    def _returns_by_function(self) -> dict[ast.AST | None, list[ast.Return]]:
        found: dict[ast.AST | None, list[ast.Return]] = {}
        for node in self.analysis.nodes(ast.Return):
            if node.value is not None:
                found.setdefault(self.function_of(node), []).append(node)
        return found

    def _returns(self, function: ast.AST, predicate) -> bool:
        for node in self._returns_by_function.get(function, ()):
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            if any(predicate(value) for value in values):
                return True
        return False

    def _is_loss_value(self, value: ast.AST) -> bool:
        from .losses import is_loss_call  # losses asks these summaries in turn

        candidates = [value]
        if isinstance(value, ast.Name):
            candidates = self.bindings.reaching_values(value)
        for candidate in candidates:
            while isinstance(candidate, ast.BinOp):  # kd_weight * kl_div(...) / T
                candidate = candidate.left if isinstance(candidate.left, ast.Call) else candidate.right
            if isinstance(candidate, ast.Call) and is_loss_call(candidate, self.analysis):
                return True
        return False

    def _is_half_value(self, value: ast.AST) -> bool:
        from .low_precision import LowPrecisionFlow

        origin = self.analysis.derived(LowPrecisionFlow).origin(value)
        return origin is not None and origin.kind == "cast" and origin.dtype == "float16"

    def callee_facts(self, call: ast.Call) -> dict | None:
        """The facts of what ``call`` runs, in this module or (through the project index) another."""
        reference = self.call_reference(call)
        if reference is None:
            return None
        targets = self.local_targets(reference)
        if targets:
            merged: dict = {}
            for target in targets:
                for name, value in self.facts(target).items():
                    merged[name] = merged.get(name) or value
            return merged
        if reference.startswith(LOCAL):
            return None
        return self._foreign_facts(reference)

    # ---------------------------------------------------------------- class facts
    def class_facts(self, cls: ast.ClassDef) -> dict:
        """``owns_scaler`` (it builds a GradScaler: torch's, or a project's own class of that name);
        ``state_dict``: None without a ``state_dict()`` method, else which states its returned dict holds
        (``{"optimizer": True, "scaler": False}``), its own or one it inherits (from a class of this module,
        or through the project index from another); ``inherits_state_dict``: the method is a base's."""
        owns_scaler = self.owns_scaler(cls)
        own = next((m for m in cls.body if isinstance(m, FunctionNode) and m.name == "state_dict"), None)
        method = self.method(cls, "state_dict")
        states = self.returned_states(method) if method is not None else self._inherited_states(cls)
        return {"owns_scaler": owns_scaler, "state_dict": states, "inherits_state_dict": own is None and states is not None}

    def owns_scaler(self, cls: ast.ClassDef) -> bool:
        """The class builds a GradScaler (torch's, or a project's own class of that name)."""
        return any(
            self._enclosing_class(call) is cls
            and (self.analysis.resolve(call.func) in GRAD_SCALER_CONSTRUCTORS or (call_name(call) or "").endswith("GradScaler"))
            for call in self.analysis.calls_named(*SCALER_CLASS_NAMES)
        )

    def _inherited_states(self, cls: ast.ClassDef) -> dict | None:
        project = self.analysis.project
        if project is None or not self.analysis.path:
            return None
        for base in cls.bases:
            reference = self.analysis.resolve(base)
            if reference and not reference.startswith("torch."):
                facts = project.class_facts(self.analysis.path, reference)
                if facts and facts.get("state_dict") is not None:
                    return facts["state_dict"]
        return None

    def returned_states(self, function: ast.AST) -> dict | None:
        """Which states the dict a function returns holds: ``{"optimizer": bool, "scaler": bool}``, or
        None when it returns no dict the source shows."""
        from .checkpoints import checkpoint_states  # checkpoints reads summaries too

        for node in self._returns_by_function.get(function, ()):
            states = checkpoint_states(node.value, self.analysis)  # type: ignore[arg-type]
            if states is not None:
                return states
        return None

    # ---------------------------------------------------------------- for the project index
    def module_facts(self) -> dict:
        """What other modules may ask of this one, as plain data (cached on disk by the index)."""
        functions = {}
        classes = {}
        saving = self._saves_optimizer_without_scaler()
        for name, node in self.definitions.items():
            if isinstance(node, FunctionNode):
                facts = dict(self.facts(node))
                facts["calls"] = sorted(set(self._references(node)))
                facts["steps"] = self.steps(node)
                facts["float32_parameters"] = self.float32_parameters(node)
                facts["saves_optimizer_without_scaler"] = node in saving
                states = self.returned_states(node) if name.rpartition(".")[2] != "state_dict" else None
                if states is not None:
                    facts["returns_states"] = states
                functions[name] = facts
            elif isinstance(node, ast.ClassDef):
                facts = self.class_facts(node)
                facts["bases"] = [ref for base in node.bases if (ref := self._base_reference(base))]
                facts["autograd_function"] = self.is_autograd_function(node)
                classes[name] = facts
        autocast_calls = []
        for region in self.analysis.regions:
            if region.may_be_enabled:
                for call in self.calls_in(region.node.body):  # type: ignore[attr-defined]
                    reference = self.call_reference(call)
                    if reference is not None:
                        autocast_calls.append(
                            [reference, region.device_type, region.effective_dtype, call.lineno, self.region_steps(region)]
                        )
        return {
            "functions": functions,
            "classes": classes,
            "autocast_calls": autocast_calls,
            "has_autocast": self.analysis.uses_autocast,
            "imports": self.analysis.imports.bindings(),
            "imported_modules": self._imported_modules(),
            "trains": any(facts.get("trains") for facts in functions.values()) or self._trains_at_module_level(),
        }

    def _trains_at_module_level(self) -> bool:
        """A script's top level runs backward or steps an optimizer (a training loop outside functions)."""
        return any(
            (name := call_name(call) or "") == "backward" or "step" in name.lower()
            for call in self.calls_in(self.analysis.tree.body)
        )

    def _saves_optimizer_without_scaler(self) -> set[ast.AST]:
        """The functions that ``torch.save`` a checkpoint holding an optimizer's state but no GradScaler's,
        in a module that has no GradScaler of its own (where it has one, AMP020 reports the save itself):
        a checkpoint helper (``utils.save_checkpoint(model, optimizer, lr, epoch, path)``) that a trainer
        with a scaler calls."""
        from .checkpoints import checkpoint_states

        saves = [call for call in self.analysis.calls_to({"torch.save"}) if call.args]
        if not saves:
            return set()
        training = self.analysis.derived(TrainingCalls)
        if training.uses_grad_scaler or training.scalers:
            return set()
        found = set()
        for call in saves:
            function = self.function_of(call)
            if function is None or function in found:
                continue
            states = checkpoint_states(call.args[0], self.analysis)
            if states is not None and states["optimizer"] and not states["scaler"]:
                found.add(function)
        return found

    def _imported_modules(self) -> list[str]:
        """Every module name an import statement may load: ``import a.b`` -> ``a.b``; ``from .c import d``
        -> ``.c`` and ``.c.d`` (``d`` may be a submodule)."""
        found: set[str] = set()
        for node in self.analysis.nodes(ast.Import):
            found.update(alias.name for alias in node.names)
        for node in self.analysis.nodes(ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.add(module)
            separator = "" if module.endswith(".") else "."
            found.update(module + separator + alias.name for alias in node.names if alias.name != "*")
        return sorted(found)

    def _base_reference(self, base: ast.AST) -> str | None:
        cls = self.local_class(base)
        if cls is not None:
            return LOCAL + self.qualname_of[cls]
        return self.analysis.resolve(base)


# nn.Module methods that return the module itself: `Net().cuda().eval()` is still a Net.
_RETURNS_THE_MODULE = frozenset({"to", "cuda", "cpu", "half", "float", "double", "bfloat16", "train", "eval", "requires_grad_", "share_memory"})


def _strip_module_methods(call: ast.Call) -> ast.Call:
    while (
        isinstance(call.func, ast.Attribute)
        and call.func.attr in _RETURNS_THE_MODULE
        and isinstance(call.func.value, ast.Call)
    ):
        call = call.func.value
    return call


def merged_region_info(old: RegionInfo | None, new: RegionInfo) -> RegionInfo | None:
    """What a function reached from one more call site under autocast knows: the riskier region's
    settings, and whether any of the sites steps an optimizer. None when nothing changes."""
    if old is None:
        return new
    kept = new if _riskier(new, old) else old
    kept = replace(kept, caller_steps=old.caller_steps or new.caller_steps)
    return kept if kept != old else None


def _riskier(new: RegionInfo, old: RegionInfo) -> bool:
    """float16 on CUDA is where the range rules matter most: it wins over other call sites."""
    rank = {"float16": 2, None: 1, "bfloat16": 0}
    return rank.get(new.dtype, 0) > rank.get(old.dtype, 0)
