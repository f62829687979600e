"""Whether a value is trained, and where: the question behind a manual cast being a hazard.

A cast's value is *trained* when it reaches training: the model's ``.parameters()`` go to an optimizer,
or the model or tensor (with gradients on) feeds a loss that ``backward()`` differentiates (in an
autocast region or not) in a module that updates parameters (a backward alone, as in a gradient check,
trains nothing), or it is handed to a function that trains, or returned by a builder whose caller trains
it. A frozen model (``requires_grad_(False)``, ``eval()``) is used, not trained. Reads that
cannot train it are not uses: ``.float()``, ``.state_dict()``, ``.detach()``, ``.shape``, a
``torch.save`` or ``print`` of it, a comparison.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property

from .bindings import Binding, Bindings
from .control_flow import ancestors
from .dtypes import cast_dtype
from .module_analysis import ModuleAnalysis, binding_key, call_name, method_chain_end
from .torch_api import LOW_PRECISION_DTYPES
from .summaries import Summaries
from .training_calls import TrainingCalls

_HARMLESS_ATTRIBUTES = frozenset(
    {"float", "double", "state_dict", "cpu", "numpy", "tolist", "item", "detach", "shape", "dtype", "device",
     "size", "dim", "ndim", "numel", "eval", "requires_grad_", "named_buffers", "buffers"}
)
_HARMLESS_CALLS = frozenset({"save", "print", "len", "isinstance", "type", "id", "str", "repr", "deepcopy", "copy"})
# Optimizers that keep float32 master weights of a float16 model themselves (apex's FP16_Optimizer and
# *AMP optimizers, DeepSpeed/Megatron mixed-precision optimizers).
_MASTER_WEIGHT_OPTIMIZER = re.compile(r"AMP$|AMP_?Optimizer|FP16_?Optimizer|MixedPrecision|Float16Optimizer|MasterWeight", re.I)
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
# nn.Module's own methods: an object read as their receiver is a model.
_MODULE_METHODS = frozenset(
    {"parameters", "named_parameters", "modules", "named_modules", "children", "train", "eval", "state_dict",
     "load_state_dict", "requires_grad_", "zero_grad", "register_forward_hook", "register_buffer"}
)
# Wrappers that train the model they are given, parameters and all.
_WRAPPERS = frozenset(
    {
        "torch.compile",
        "torch.nn.DataParallel",
        "torch.nn.parallel.DataParallel",
        "torch.nn.parallel.DistributedDataParallel",
        "torch.nn.parallel.distributed.DistributedDataParallel",
        "torch.distributed.fsdp.FullyShardedDataParallel",
        "torch.distributed.fsdp.fully_sharded_data_parallel.FullyShardedDataParallel",
    }
)
# Frameworks whose entry points take the model and optimizer and run mixed precision themselves.
_PRECISION_FRAMEWORKS = ("colossalai.", "deepspeed.", "apex.")
_PRECISION_ENTRY_POINTS = frozenset({"initialize", "boost", "FP16_Optimizer", "FP16Optimizer"})


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
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            return None  # stored where the source cannot follow it (`pipe.encoder = pipe.encoder.half()`)
        return self._use_of_read(end)

    def _returned_at(self, node: ast.AST) -> tuple[ast.Return, int | None] | None:
        """``return node`` (index None) or ``return a, node`` (its index in the tuple)."""
        parent = self.analysis.parents.get(node)
        if isinstance(parent, ast.Return):
            return parent, None
        if isinstance(parent, ast.Tuple) and isinstance(self.analysis.parents.get(parent), ast.Return):
            return self.analysis.parents[parent], parent.elts.index(node)  # type: ignore[return-value]
        return None

    def _frozen(self, binding: Binding, depth: int = 0) -> bool:
        """The object a binding holds is frozen: one of its reads is ``X.requires_grad_(False)``,
        ``X.eval()``, ``X.train(False)``, ``X.requires_grad = False`` or ``for p in X.parameters():
        p.requires_grad = False``; or it is an in-place cast (``X.half()``) of a frozen object."""
        if binding in self._frozen_memo:
            return self._frozen_memo[binding]
        self._frozen_memo[binding] = False  # a cycle reads as "not frozen"
        found = any(self._freezes(read) for read in self.bindings.reads_reached_by(binding))
        if not found and depth < _MAX_FOLLOWED and isinstance(binding.statement, ast.Expr):
            receiver = _receiver_of_chain(binding.value)
            if receiver is not None:
                found = any(self._frozen(earlier, depth + 1) for earlier in self.bindings.reaching(receiver))
        self._frozen_memo[binding] = found
        return found

    @cached_property
    def _frozen_memo(self) -> dict[Binding, bool]:
        return {}

    def _freezes(self, read: ast.AST) -> bool:
        parents = self.analysis.parents
        parent = parents.get(read)
        if not isinstance(parent, ast.Attribute):
            return False
        call = parents.get(parent)
        if isinstance(call, ast.Call) and call.func is parent:
            off = bool(call.args) and isinstance(call.args[0], ast.Constant) and call.args[0].value is False
            if parent.attr == "eval" and not call.args or parent.attr in ("requires_grad_", "train") and off:
                return True
            loop = parents.get(call)
            if parent.attr in ("parameters", "named_parameters") and isinstance(loop, ast.For) and loop.iter is call:
                return any(_switches_grad_off(statement) for statement in loop.body)
        if parent.attr == "requires_grad" and isinstance(parents.get(parent), ast.Assign):
            value = parents[parent].value  # type: ignore[attr-defined]
            return isinstance(value, ast.Constant) and value.value is False
        return False

    def _follow_cast(self, call: ast.Call, depth: int) -> TrainingUse | None:
        """Where the value of ``call`` (a further cast, or a wrapper around the cast model) is trained."""
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
            frozen = self._frozen(binding) or self._left_out_of_every_optimizer(binding)
            for read in self.bindings.reads_reached_by(binding):
                returned = self._returned_at(read)
                if returned is not None:
                    use = self._use_of_returned(*returned, depth)
                else:
                    use = self._use_of_read_memoised(read, depth)
                if use is None or frozen and use.how != "optimizer":
                    continue  # a frozen model (requires_grad_(False), eval()) is used, not trained
                if use.master_weights:
                    return use
                if found is None or _PRIORITY[use.how] < _PRIORITY[found.how]:
                    found = use
        return found

    # ---------------------------------------------------------------- which models the optimizers train
    def _left_out_of_every_optimizer(self, binding: Binding) -> bool:
        """A model whose parameters no optimizer of the module takes, where every optimizer shows whose
        parameters it takes (``Adam8bit(control_net.prepare_optimizer_params())`` trains the adapter, not
        the float16 base model it is inserted in): used in training, not trained."""
        owners = self._optimizer_owners
        return bool(owners) and binding.key not in owners and self._model_like(binding)

    @cached_property
    def _optimizer_owners(self) -> set[str] | None:
        """The names whose parameters the module's optimizers take; None (no conclusion) where an
        optimizer takes something the source does not trace to an object (``Adam(params)``)."""
        owners: set[str] = set()
        for call in self.analysis.calls:
            if not call.args or not _is_an_optimizer_construction(call, self.training):
                continue
            found = {
                key
                for node in ast.walk(call.args[0])
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and (key := binding_key(_receiver_of_chain(node.func.value) or node.func.value))
            }
            if not found:
                return None
            owners |= found
        return owners

    def _model_like(self, binding: Binding, depth: int = 0) -> bool:
        """The binding holds a model, not a tensor: it is built by a class (``Net()``,
        ``UNet.from_pretrained(...)``), read as one (``.parameters()``, ``.train()``, ``.eval()``), or is an
        in-place cast of one (``unet.half()``)."""
        receiver = _receiver_of_chain(binding.value) if isinstance(binding.value, ast.Call) else None
        if isinstance(binding.statement, ast.Expr) and receiver is not None and depth < _MAX_RETURN_DEPTH:
            if any(self._model_like(earlier, depth + 1) for earlier in self.bindings.reaching(receiver)):
                return True
        if isinstance(binding.value, ast.Call):
            root = binding.value
            while isinstance(root, ast.Call) and isinstance(root.func, ast.Attribute) and isinstance(root.func.value, ast.Call):
                root = root.func.value
            name = call_name(root) or ""
            if name[:1].isupper() or name == "from_pretrained":
                return True
        keys = {binding.key} | ({binding_key(receiver)} if receiver is not None else set())
        return any(
            isinstance(parent := self.analysis.parents.get(read), ast.Attribute) and parent.attr in _MODULE_METHODS
            for key in keys if key
            for read in self.bindings.reads_of(key)
        )

    def precision_managed(self, node: ast.AST) -> bool:
        """The code around ``node`` hands its model to something that keeps float32 master weights and
        scales the loss itself (a ColossalAI booster or engine, DeepSpeed, apex, an ``*AMPOptimizer``):
        a low-precision model is what it expects."""
        function = self.summaries.function_of(node)
        managed = self._precision_managed_scopes
        if function not in managed:  # once per function: a module of many casts asks it of each
            body = function.body if function is not None else self.analysis.tree.body  # type: ignore[attr-defined]
            managed[function] = any(self._manages_precision(call) for call in self.summaries.calls_in(body))
        return managed[function]

    @cached_property
    def _precision_managed_scopes(self) -> dict[ast.AST | None, bool]:
        return {}

    def _manages_precision(self, call: ast.Call) -> bool:
        qualified = self.analysis.resolve(call.func) or ""
        name = call_name(call) or ""
        if _MASTER_WEIGHT_OPTIMIZER.search(name) or qualified.startswith(_PRECISION_FRAMEWORKS) and name in _PRECISION_ENTRY_POINTS:
            return True
        if name == "boost" and isinstance(call.func, ast.Attribute):  # booster.boost(model, optimizer)
            return any(q.startswith("colossalai.") for q in self.bindings.constructed_classes(call.func.value))
        return False

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
        if isinstance(parent, ast.Call) and parent.args and parent.args[0] is read and analysis.resolve(parent.func) in _WRAPPERS:
            return self._follow_cast(parent, depth)  # DDP(model), torch.compile(model): the same parameters
        optimizer = self._optimizer_over(read)
        if optimizer is not None:
            return optimizer
        context = analysis.context(read)
        if context.grad_disabled:
            return None
        if not (self.training.updates_parameters and self.training.feeds_a_backward(read)):
            return self._handed_to_a_trainer(read)  # a backward with no update anywhere trains nothing
        if context.in_enabled_autocast:
            return TrainingUse(read, "autocast")
        return TrainingUse(read, "training")

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


def _receiver_of_chain(value: ast.AST | None) -> ast.AST | None:
    """``model`` of ``model.cuda().half()``."""
    while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
        value = value.func.value
    return value if isinstance(value, (ast.Name, ast.Attribute)) else None


def _switches_grad_off(statement: ast.stmt) -> bool:
    """``p.requires_grad = False`` or ``p.requires_grad_(False)`` in a loop over parameters."""
    if isinstance(statement, ast.Assign):
        target = statement.targets[0]
        return (
            isinstance(target, ast.Attribute)
            and target.attr == "requires_grad"
            and isinstance(statement.value, ast.Constant)
            and statement.value.value is False
        )
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        return (
            isinstance(call.func, ast.Attribute)
            and call.func.attr == "requires_grad_"
            and bool(call.args)
            and isinstance(call.args[0], ast.Constant)
            and call.args[0].value is False
        )
    return False


def _is_an_optimizer_construction(call: ast.Call, training: TrainingCalls) -> bool:
    if training.is_optimizer_construction(call):
        return True
    name = call_name(call) or ""
    return name[:1].isupper() and bool(re.search(r"optim|adam|sgd|lamb|lion|adafactor|rmsprop|adagrad", name, re.I))
