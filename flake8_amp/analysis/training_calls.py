"""The objects and calls of a training step: GradScalers, optimizers, ``backward()`` calls, and the
sequence of training events in each function.

A scaler is rarely constructed where it is used (``def train_one_epoch(model, loader, optimizer,
scaler)``), so besides names bound to a GradScaler constructor, any receiver ``S`` of the recipe's
unmistakable ``S.scale(loss).backward()`` counts as one.

``loss.backward()`` is a tensor's backward; ``optimizer.backward(loss)``, ``accelerator.backward(loss)``
and ``self.manual_backward(loss)`` hand the loss to an object that runs the mixed-precision recipe
itself (apex/fairseq optimizer wrappers, accelerate, Lightning, DeepSpeed engines).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

from .bindings import Bindings
from .control_flow import ControlFlow, ancestors, switch_polarity
from .module_analysis import ModuleAnalysis, binding_key, call_name
from .source_text import excerpt
from .torch_api import GRAD_SCALER_CONSTRUCTORS

_OPTIMIZER_NAME = re.compile(r"(^|_)(optim|opt)(\d+|_[a-z0-9]+)?$|optimi[sz]er", re.I)
# Objects whose .backward(loss) runs the whole mixed-precision recipe (or is not a tensor's backward).
_WRAPPER_NAME = re.compile(r"accelerator|fabric|engine|trainer|strategy|precision|deepspeed|scaler", re.I)
# A tensor's backward takes a gradient, not a loss: `y.backward(torch.ones_like(y))`, `y.backward(grad)`.
_GRADIENT_ARGUMENT = re.compile(r"grad|ones_like|ones\(", re.I)
AUTOGRAD_ENTRY_POINTS = frozenset({"torch.autograd.grad", "torch.autograd.backward"})
CLIPPERS = frozenset(
    {
        "torch.nn.utils.clip_grad_norm_",
        "torch.nn.utils.clip_grad_value_",
        "torch.nn.utils.clip_grad.clip_grad_norm_",
        "torch.nn.utils.clip_grad.clip_grad_value_",
    }
)

# The kinds of training events, in the order a correct step has them.
SCALED_BACKWARD = "scaled_backward"
PLAIN_BACKWARD = "plain_backward"
WRAPPER_BACKWARD = "wrapper_backward"
UNSCALE = "unscale"
CLIP = "clip"
SCALER_STEP = "scaler_step"
DIRECT_STEP = "direct_step"
UPDATE = "update"
ZERO_GRAD = "zero_grad"


@dataclass(frozen=True)
class TrainingEvent:
    kind: str
    call: ast.Call
    #: the scaler's source text for scaler events, the optimizer's for steps, unscale_ and zero_grad
    scaler: str | None = None
    optimizer: str | None = None
    #: for a clip through a helper of this module (``self._clip_gradients()``): the clipping function it calls
    via: str | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.call.lineno, self.call.col_offset


def receiver_text(call: ast.Call) -> str | None:
    """``scaler`` for ``scaler.step(opt)``, ``self.scaler`` for ``self.scaler.update()``."""
    if isinstance(call.func, ast.Attribute):
        return excerpt(call.func.value, limit=None)
    return None


class TrainingCalls:
    """Per-module facts about the training step. Use as ``analysis.derived(TrainingCalls)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._optimizer_keys: dict[str, bool] = {}

    @cached_property
    def bindings(self) -> Bindings:
        """Built when a question needs them (what an object is, what a loss was computed from)."""
        return self.analysis.derived(Bindings)

    # ---------------------------------------------------------------- module facts
    @cached_property
    def grad_scaler_constructions(self) -> list[ast.Call]:
        return self.analysis.calls_to(GRAD_SCALER_CONSTRUCTORS)

    @cached_property
    def uses_grad_scaler(self) -> bool:
        if self.grad_scaler_constructions:
            return True
        analysis = self.analysis
        names = {qualified.rpartition(".")[2] for qualified in GRAD_SCALER_CONSTRUCTORS}
        if any(node.attr in names and analysis.resolve(node) in GRAD_SCALER_CONSTRUCTORS for node in analysis.nodes(ast.Attribute)):
            return True
        # A bare name refers to a GradScaler class only if an import binds it to one.
        aliases = analysis.imports.local_names_for(GRAD_SCALER_CONSTRUCTORS)
        return bool(aliases) and any(node.id in aliases for node in analysis.nodes(ast.Name))

    @cached_property
    def trains(self) -> bool:
        """The module runs training: it calls ``backward``, ``zero_grad`` or builds an optimizer, or
        uses autocast or a GradScaler."""
        analysis = self.analysis
        if analysis.uses_autocast or self.uses_grad_scaler:
            return True
        for call in analysis.calls_named("backward", "zero_grad"):
            # `fused_softmax_cuda.backward(...)` inside a custom Function calls an extension module
            if isinstance(call.func, ast.Attribute) and analysis.resolve(call.func.value) is None:
                return True
        return any(self.is_optimizer_construction(call) for call in analysis.calls)

    @cached_property
    def updates_parameters(self) -> bool:
        """Something in the module updates parameters: an optimizer (built here, or stepped directly or
        through a scaler), a wrapper whose ``backward(loss)`` steps, or a loss scaled for one
        (``scaler.scale(loss).backward()``). A module whose only training call is a plain ``backward()``
        computes gradients (a gradient check, a saliency map) and trains nothing."""
        updates = (DIRECT_STEP, SCALER_STEP, WRAPPER_BACKWARD, SCALED_BACKWARD)
        for scope in self.scopes_with_events:
            if any(event.kind in updates for event in self.events(scope)):
                return True
        return any(self.is_optimizer_construction(call) for call in self.analysis.calls)

    def is_optimizer_construction(self, call: ast.Call) -> bool:
        qualified = self.analysis.resolve(call.func)
        return bool(qualified) and qualified.startswith("torch.optim.") and ".lr_scheduler." not in qualified  # type: ignore[union-attr]

    # ---------------------------------------------------------------- objects
    @cached_property
    def scalers(self) -> frozenset[str]:
        """Source texts of the expressions that hold a GradScaler."""
        found = set()
        constructions = set(self.grad_scaler_constructions)
        for call in constructions:
            statement = self.analysis.parents.get(call)
            if isinstance(statement, (ast.Assign, ast.AnnAssign)):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                found.update(excerpt(target, limit=None) for target in targets if isinstance(target, (ast.Name, ast.Attribute)))
        for call in self.analysis.calls_named("backward"):
            # S.scale(loss).backward()
            if isinstance(call.func, ast.Attribute):
                inner = call.func.value
                if isinstance(inner, ast.Call) and call_name(inner) == "scale":
                    text = receiver_text(inner)
                    if text:
                        found.add(text)
        for call in self.analysis.calls_named("unscale_"):
            # only a GradScaler has unscale_(optimizer): a scaler handed in as a parameter
            text = receiver_text(call)
            if text and len(call.args) == 1:
                found.add(text)
        return frozenset(found)

    def is_scaler(self, node: ast.AST) -> bool:
        return excerpt(node, limit=None) in self.scalers

    def scaler_method(self, call: ast.Call, *methods: str) -> str | None:
        """The scaler's text when ``call`` is ``<scaler>.<method>(...)`` for one of ``methods``."""
        if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
            text = receiver_text(call)
            if text in self.scalers:
                return text
        return None

    def is_optimizer(self, node: ast.AST) -> bool:
        """Built by a ``torch.optim`` class, handed to a scaler's ``step`` / ``unscale_`` (which take
        nothing else), or named like one (``optimizer``, ``opt_d``, ``self.optim``)."""
        key = binding_key(node)
        if key is not None and key in self._optimizer_keys:
            return self._optimizer_keys[key]
        found = (
            any(self.is_optimizer_construction(call) for call in self.bindings.constructions(node))
            or excerpt(node, limit=None) in self._stepped_by_a_scaler
            or bool(_OPTIMIZER_NAME.search(node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")))
        )
        if key is not None:
            self._optimizer_keys[key] = found
        return found

    @cached_property
    def _stepped_by_a_scaler(self) -> frozenset[str]:
        return frozenset(
            excerpt(call.args[0], limit=None)
            for call in self.analysis.calls_named("step", "unscale_")
            if call.args and self.scaler_method(call, "step", "unscale_")
        )

    # ---------------------------------------------------------------- backward calls
    def is_tensor_backward(self, call: ast.Call) -> bool:
        """``loss.backward()``, ``scaler.scale(loss).backward()``, ``y.backward(grad)``; not
        ``accelerator.backward(loss)``, ``optimizer.backward(loss)`` or an extension module's backward."""
        func = call.func
        if not isinstance(func, ast.Attribute) or func.attr != "backward":
            return False
        if call.args and not _GRADIENT_ARGUMENT.search(excerpt(call.args[0], limit=None)):
            return False  # X.backward(loss): X runs the backward of the loss it is handed
        receiver = func.value
        if isinstance(receiver, ast.Call):
            return call_name(receiver) == "scale" or not _WRAPPER_NAME.search(excerpt(receiver.func, limit=None))
        if self.analysis.resolve(receiver) is not None:
            return False  # an imported module's backward(): a custom op, not a tensor
        return not _WRAPPER_NAME.search(excerpt(receiver, limit=None))

    def is_loss_scaled_by_apex(self, call: ast.Call) -> bool:
        """``with amp.scale_loss(loss, optimizer) as scaled_loss: scaled_loss.backward()``: apex's loss
        scaler scaled the loss (and unscales and checks the gradients when the block exits)."""
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        if not isinstance(receiver, ast.Name):
            return False
        for _, parent in ancestors(call, self.analysis):
            if isinstance(parent, (ast.With, ast.AsyncWith)):
                for item in parent.items:
                    if (
                        isinstance(item.optional_vars, ast.Name)
                        and item.optional_vars.id == receiver.id
                        and isinstance(item.context_expr, ast.Call)
                        and call_name(item.context_expr) == "scale_loss"
                    ):
                        return True
        return False

    def is_wrapper_backward(self, call: ast.Call) -> bool:
        """``optimizer.backward(loss)``, ``accelerator.backward(loss)``, ``self.manual_backward(loss)``:
        the loss is handed to an object that scales it (or has no scaler to bypass)."""
        name = call_name(call)
        if name not in ("backward", "manual_backward") or not call.args:
            return False
        return not self.is_tensor_backward(call) and self.analysis.resolve(call.func) is None

    def scaled_backward_scaler(self, call: ast.Call) -> str | None:
        """The scaler that scaled the loss ``call`` differentiates: ``scaler.scale(loss).backward()``, or
        ``loss = scaler.scale(loss)`` then ``loss.backward()``. The rebinding may sit under a condition on
        the scaler itself (``if self.scaler is not None:``, ``if use_amp:``): the path that skips it has
        no scaler to bypass (audiocraft's solvers)."""
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == "backward"):
            return None
        if isinstance(func.value, ast.Call):
            return self.scaler_method(func.value, "scale")
        if not isinstance(func.value, ast.Name):
            return None
        flow = self.analysis.derived(ControlFlow)
        at_backward = flow.assumptions(call)
        for binding in self.bindings.reaching(func.value):
            value = binding.value
            scaler = self.scaler_method(value, "scale") if isinstance(value, ast.Call) else None
            if scaler is None:
                continue
            guards = flow.assumptions(binding.statement) - at_backward
            if all(scaler in fact.key or switch_polarity(fact.key) is not None for fact in guards):
                return scaler
        return None

    # ---------------------------------------------------------------- events
    @cached_property
    def _events(self) -> dict[ast.AST | None, list[TrainingEvent]]:
        analysis = self.analysis
        events: dict[ast.AST | None, list[TrainingEvent]] = defaultdict(list)
        for call in analysis.calls_to(CLIPPERS, or_named=("backward", "manual_backward", "step", "update", "unscale_", "zero_grad")):
            event = self._classify(call)
            if event is not None:
                events[analysis.context(call).function].append(event)
        for call, clipper in self._helper_clips():
            events[analysis.context(call).function].append(TrainingEvent(CLIP, call, via=clipper))
        for function_events in events.values():
            function_events.sort(key=lambda event: event.position)
        return events

    def _helper_clips(self) -> list[tuple[ast.Call, str]]:
        """Calls of a function of this module that clips gradients itself and does not unscale them
        first (``self._clip_gradients(max_norm)`` around ``clip_grad_norm_``), with the clipper's name:
        one step from the training loop, where trainers keep their clipping."""
        analysis = self.analysis
        clipping: dict[ast.AST, str] = {}
        for call in analysis.calls_to(CLIPPERS):
            function = analysis.context(call).function
            if function is not None:
                clipping.setdefault(function, analysis.resolve(call.func).rpartition(".")[2])  # type: ignore[union-attr]
        if not clipping:
            return []
        unscaling = {analysis.context(call).function for call in analysis.calls_named("unscale_")}
        for function in unscaling:
            clipping.pop(function, None)  # type: ignore[arg-type]
        if not clipping:
            return []
        from .summaries import Summaries  # summaries read training calls: imported where used

        summaries = analysis.derived(Summaries)
        for function in list(clipping):
            for call in summaries.calls_in(function.body):  # type: ignore[attr-defined]
                reference = summaries.call_reference(call)
                if reference and any(target in unscaling for target in summaries.local_targets(reference)):
                    clipping.pop(function)  # it unscales through a helper of its own first
                    break
        names = {getattr(function, "name", None) for function in clipping}
        found = []
        for call in analysis.calls_named(*[name for name in names if name]):
            reference = summaries.call_reference(call)
            for target in summaries.local_targets(reference) if reference else ():
                if target in clipping and analysis.context(call).function is not target:
                    found.append((call, clipping[target]))
                    break
        return found

    def events(self, scope: ast.AST | None) -> list[TrainingEvent]:
        """The training events of one function (None: the module body), in source order."""
        return self._events.get(scope, [])

    @property
    def scopes_with_events(self) -> list[ast.AST | None]:
        return list(self._events)

    # ---------------------------------------------------------------- what the backward depends on
    def feeds_a_backward(self, node: ast.AST) -> bool:
        """Whether the value ``node`` computes flows into a loss that some ``backward()`` (or
        ``autograd.grad``) differentiates: through the expressions around it, then the bindings that
        reach the names of those expressions, in this module."""
        slice_ = self._backward_slice
        if not slice_:
            return False
        current: ast.AST | None = node
        parents = self.analysis.parents
        while current is not None and not isinstance(current, ast.stmt):
            if current in slice_:
                return True
            current = parents.get(current)
        return False

    @cached_property
    def _backward_slice(self) -> set[ast.AST]:
        """Every expression whose value a differentiated loss depends on (computed once per module)."""
        work: list[ast.AST] = []
        for scope in self.scopes_with_events:
            for event in self.events(scope):
                loss = self._loss_of(event)
                if loss is not None:
                    work.append(loss)
        for call in self.analysis.calls_to(AUTOGRAD_ENTRY_POINTS):
            if call.args:
                work.append(call.args[0])
        seen: set[ast.AST] = set()
        reaching = self.bindings.reaching
        while work:
            expression = work.pop()
            if expression in seen:
                continue
            seen.add(expression)
            for node in ast.walk(expression):
                if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
                    for binding in reaching(node):
                        value = binding.value
                        if isinstance(value, ast.AugAssign):
                            work.append(value.value)
                            work += [b.value for b in reaching(value.target) if b.value is not None]
                        elif value is not None and value not in seen:
                            work.append(value)
        return seen

    @staticmethod
    def _loss_of(event: TrainingEvent) -> ast.AST | None:
        call = event.call
        if event.kind == PLAIN_BACKWARD:
            return call.func.value  # type: ignore[attr-defined]
        if event.kind == SCALED_BACKWARD:
            scale = call.func.value  # type: ignore[attr-defined]
            return scale.args[0] if scale.args else None
        if event.kind == WRAPPER_BACKWARD:
            return call.args[0] if call.args else None
        return None

    def _classify(self, call: ast.Call) -> TrainingEvent | None:
        name = call_name(call)
        if name in ("backward", "manual_backward"):
            scaler = self.scaled_backward_scaler(call)
            if scaler is not None:
                return TrainingEvent(SCALED_BACKWARD, call, scaler=scaler)
            if self.is_loss_scaled_by_apex(call):
                return TrainingEvent(WRAPPER_BACKWARD, call)
            if self.is_tensor_backward(call):
                return TrainingEvent(PLAIN_BACKWARD, call)
            if self.is_wrapper_backward(call):
                return TrainingEvent(WRAPPER_BACKWARD, call)
            return None
        scaler = self.scaler_method(call, "step", "update", "unscale_")
        if scaler is not None:
            optimizer = excerpt(call.args[0], limit=None) if call.args else None
            kind = {"step": SCALER_STEP, "update": UPDATE, "unscale_": UNSCALE}[name]  # type: ignore[index]
            return TrainingEvent(kind, call, scaler=scaler, optimizer=optimizer)
        func = call.func
        if name == "zero_grad" and isinstance(func, ast.Attribute):
            # an optimizer's or a model's (nn.Module.zero_grad): either way the gradients are gone
            return TrainingEvent(ZERO_GRAD, call, optimizer=receiver_text(call))
        if name == "step" and isinstance(func, ast.Attribute) and self.is_optimizer(func.value):
            if call.args:
                return None  # scheduler.step(epoch), a closure-taking optimizer: not a plain step
            return TrainingEvent(DIRECT_STEP, call, optimizer=receiver_text(call))
        if self.analysis.resolve(func) in CLIPPERS:
            return TrainingEvent(CLIP, call)
        return None
