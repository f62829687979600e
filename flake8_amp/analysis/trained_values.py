"""Whether a value is trained, and where: the question behind a manual cast being a hazard.

A cast's value is *trained* when it reaches training: the model's ``.parameters()`` go to an optimizer,
the model or tensor is used (with gradients on) in a function that trains, or in an autocast region of
one, or it is handed to a function that trains, or returned by a builder whose caller trains it. Reads
that cannot train it are not uses: ``.float()``, ``.state_dict()``, ``.detach()``, ``.shape``, a
``torch.save`` or ``print`` of it, a comparison.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

from .bindings import Binding, Bindings
from .control_flow import ancestors
from .dtypes import cast_dtype
from .module_analysis import ModuleAnalysis, binding_key, call_name, method_chain_end
from .torch_api import LOW_PRECISION_DTYPES
from .summaries import Summaries
from .training_calls import DIRECT_STEP, PLAIN_BACKWARD, SCALED_BACKWARD, SCALER_STEP, WRAPPER_BACKWARD, TrainingCalls

_HARMLESS_ATTRIBUTES = frozenset(
    {"float", "double", "state_dict", "cpu", "numpy", "tolist", "item", "detach", "shape", "dtype", "device",
     "size", "dim", "ndim", "numel", "eval", "requires_grad_", "named_buffers", "buffers"}
)
_HARMLESS_CALLS = frozenset({"save", "print", "len", "isinstance", "type", "id", "str", "repr", "deepcopy", "copy"})
# Optimizers that keep float32 master weights of a float16 model themselves (apex's FP16_Optimizer and
# *AMP optimizers, DeepSpeed/Megatron mixed-precision optimizers).
_MASTER_WEIGHT_OPTIMIZER = re.compile(r"AMP$|FP16_?Optimizer|MixedPrecision|Float16Optimizer|MasterWeight", re.I)
_TRAINING_KINDS = frozenset({SCALED_BACKWARD, PLAIN_BACKWARD, WRAPPER_BACKWARD, DIRECT_STEP, SCALER_STEP})
#: how far a value is followed through builders' returns, and how many re-casts of it
_MAX_RETURN_DEPTH = 2
_MAX_FOLLOWED = 64


@dataclass(frozen=True)
class TrainingUse:
    node: ast.AST
    #: "autocast" (read in an autocast region of code that trains), "training" (read in code that trains),
    #: "trainer" (handed to a function that trains), "optimizer" (its parameters go to an optimizer)
    how: str
    #: the optimizer keeps float32 master weights itself: a half model is what it expects
    master_weights: bool = False
    #: the optimizer is a torch.optim class
    torch_optimizer: bool = False


# When a value is used several ways, the message names the most telling one.
_PRIORITY = {"autocast": 0, "training": 1, "trainer": 2, "optimizer": 3}


class TrainedValues:
    """Use as ``analysis.derived(TrainedValues)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self.bindings = analysis.derived(Bindings)
        self.summaries = analysis.derived(Summaries)
        self.training = analysis.derived(TrainingCalls)

    def use_of_cast(self, cast: ast.Call, depth: int = 0) -> TrainingUse | None:
        """Where the value a cast produces is trained, or None."""
        end = method_chain_end(cast, self.analysis)
        parent = self.analysis.parents.get(end)
        statement = self.analysis.statement_of(end)
        carriers = [b for b in self.bindings.made_by(statement) if b.value is end or b.value is cast]
        if carriers:
            return self._use_of_bindings(carriers, depth)
        returned = self._returned_at(end)
        if returned is not None:
            return self._use_of_returned(*returned, depth)
        return self._use_of_read(end)

    def _returned_at(self, node: ast.AST) -> tuple[ast.Return, int | None] | None:
        """``return node`` (index None) or ``return a, node`` (its index in the tuple)."""
        parent = self.analysis.parents.get(node)
        if isinstance(parent, ast.Return):
            return parent, None
        if isinstance(parent, ast.Tuple) and isinstance(self.analysis.parents.get(parent), ast.Return):
            return self.analysis.parents[parent], parent.elts.index(node)  # type: ignore[return-value]
        return None

    def _follow_cast(self, call: ast.Call, depth: int) -> TrainingUse | None:
        if call not in self._followed:
            self._followed[call] = None  # a cycle reads as "not trained"
            self._followed[call] = self.use_of_cast(call, depth) if len(self._followed) < _MAX_FOLLOWED else None
        return self._followed[call]

    @cached_property
    def _followed(self) -> dict[ast.Call, TrainingUse | None]:
        return {}

    def _use_of_bindings(self, carriers: list[Binding], depth: int) -> TrainingUse | None:
        """The most telling use among every read the bindings reach; an optimizer with master weights
        among them settles it (the half model is what that optimizer expects)."""
        found: TrainingUse | None = None
        for binding in carriers:
            for read in self.bindings.reads_reached_by(binding):
                returned = self._returned_at(read)
                if returned is not None:
                    use = self._use_of_returned(*returned, depth)
                else:
                    use = self._use_of_read_memoised(read, depth)
                if use is None:
                    continue
                if use.master_weights:
                    return use
                if found is None or _PRIORITY[use.how] < _PRIORITY[found.how]:
                    found = use
        return found

    def _use_of_read_memoised(self, read: ast.AST, depth: int) -> TrainingUse | None:
        if read not in self._read_uses:
            self._read_uses[read] = self._use_of_read(read, depth)
        return self._read_uses[read]

    @cached_property
    def _read_uses(self) -> dict[ast.AST, TrainingUse | None]:
        return {}

    def _use_of_read(self, read: ast.AST, depth: int = 0) -> TrainingUse | None:
        """Whether this one read of the value trains it."""
        analysis = self.analysis
        if self._harmless(read):
            return None
        parent = analysis.parents.get(read)
        call = analysis.parents.get(parent) if isinstance(parent, ast.Attribute) else None
        if isinstance(call, ast.Call) and call.func is parent and cast_dtype(call, analysis.resolve) in LOW_PRECISION_DTYPES:
            return self._follow_cast(call, depth)  # cast again: where that value goes
        optimizer = self._optimizer_over(read)
        if optimizer is not None:
            return optimizer
        context = analysis.context(read)
        if context.grad_disabled:
            return None
        function = self.summaries.function_of(read)
        if not self._trains(function):
            return self._handed_to_a_trainer(read)
        if context.in_enabled_autocast:
            return TrainingUse(read, "autocast")
        return TrainingUse(read, "training")

    def _trains(self, function: ast.AST | None) -> bool:
        if function is None:
            events = self.training.events(None)
            if any(event.kind in _TRAINING_KINDS for event in events):
                return True
            return any(
                (facts := self.summaries.callee_facts(call)) is not None and facts.get("trains")
                for call in self.summaries.calls_in(self.analysis.tree.body)
            )
        return bool(self.summaries.facts(function).get("trains"))

    def _handed_to_a_trainer(self, read: ast.AST) -> TrainingUse | None:
        """``train(model, loader)`` where ``train`` trains (here or in another module)."""
        parent = self.analysis.parents.get(read)
        if isinstance(parent, ast.keyword):
            parent = self.analysis.parents.get(parent)
        if isinstance(parent, ast.Call) and read is not parent.func:
            facts = self.summaries.callee_facts(parent)
            if facts is not None and facts.get("trains"):
                return TrainingUse(parent, "trainer")
        return None

    def _optimizer_over(self, read: ast.AST) -> TrainingUse | None:
        """``Opt(model.parameters())``: the read's parameters go to an optimizer."""
        parent = self.analysis.parents.get(read)
        if not (isinstance(parent, ast.Attribute) and parent.attr in ("parameters", "named_parameters")):
            return None
        for _, ancestor in ancestors(parent, self.analysis):
            if isinstance(ancestor, ast.stmt):
                break
            if isinstance(ancestor, ast.Call) and ancestor.args and _contains(ancestor.args[0], parent):
                name = _callee_text(ancestor)
                master = bool(_MASTER_WEIGHT_OPTIMIZER.search(name)) or any(
                    kw.arg == "master_weights" for kw in ancestor.keywords
                )
                torch_optimizer = self.training.is_optimizer_construction(ancestor)
                if torch_optimizer or master or re.search(r"optim|adam|sgd|lamb|lion", name, re.I):
                    return TrainingUse(ancestor, "optimizer", master_weights=master, torch_optimizer=torch_optimizer)
        return None

    def _use_of_returned(self, returned: ast.Return, index: int | None, depth: int) -> TrainingUse | None:
        """A builder returns the value: trained if a caller in this module trains what it gets
        (``model, opt = build()``: the element at the value's place in the returned tuple)."""
        if depth >= _MAX_RETURN_DEPTH:
            return None
        function = self.summaries.function_of(returned)
        name = self.summaries.qualname_of.get(function) if function is not None else None
        if name is None:
            return None
        for call in self.analysis.calls_named(function.name):  # type: ignore[union-attr]
            reference = self.summaries.call_reference(call)
            if reference != f"@{name}":
                continue
            end = method_chain_end(call, self.analysis)
            statement = self.analysis.statement_of(end)
            carriers = [b for b in self.bindings.made_by(statement) if b.value is end]
            if index is not None and isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Tuple):
                elements = statement.targets[0].elts
                key = binding_key(elements[index]) if index < len(elements) else None
                carriers = [b for b in carriers if b.key == key]
            use = self._use_of_bindings(carriers, depth + 1) if carriers else self._use_of_read(end)
            if use is not None:
                return use
        return None

    def _harmless(self, read: ast.AST) -> bool:
        parent = self.analysis.parents.get(read)
        if isinstance(parent, ast.Attribute) and parent.attr in _HARMLESS_ATTRIBUTES:
            return True
        if isinstance(parent, ast.Attribute) and parent.attr == "to":
            call = self.analysis.parents.get(parent)
            return isinstance(call, ast.Call) and cast_dtype(call, self.analysis.resolve) in ("float32", "float64")
        if isinstance(parent, ast.keyword):
            parent = self.analysis.parents.get(parent)
        if isinstance(parent, ast.Call) and read is not parent.func and call_name(parent) in _HARMLESS_CALLS:
            return True
        return isinstance(parent, (ast.Compare, ast.Delete))


def _contains(root: ast.AST, node: ast.AST) -> bool:
    return any(inner is node for inner in ast.walk(root))


def _callee_text(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""
