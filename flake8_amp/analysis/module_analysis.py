"""One walk over the tree flake8 parsed, and the facts every rule asks of it.

The walk records parents, nodes by type and imports. Everything else (the autocast regions around a
node, the bindings that reach a name, which names hold GradScalers) is derived on demand from those
records and cached, so a rule pays only for what it asks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Collection, Iterator, TypeVar

from .autocast_regions import AutocastRegion, region_from_call
from .names import ImportTable
from .source_text import excerpt
from .torch_api import AUTOCAST_CONSTRUCTORS, GRAD_DISABLING_CONTEXTS

if TYPE_CHECKING:
    from .project_index import ProjectIndex

NodeT = TypeVar("NodeT", bound=ast.AST)
DerivedT = TypeVar("DerivedT")
FunctionNode = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Context:
    """What is in force at a statement: its function, the autocast regions around it (outermost
    first) and whether gradients are disabled there."""

    function: ast.AST | None
    regions: tuple[AutocastRegion, ...]
    grad_disabled: bool

    @property
    def innermost_region(self) -> AutocastRegion | None:
        return self.regions[-1] if self.regions else None

    @property
    def in_enabled_autocast(self) -> bool:
        """Inside a region that is (or may be) on, with no ``enabled=False`` region nested inside it."""
        region = self.innermost_region
        return region is not None and region.may_be_enabled

    @property
    def in_disabled_autocast(self) -> bool:
        """Inside ``autocast(enabled=False)`` nested in an enabled region."""
        region = self.innermost_region
        return region is not None and region.enabled is False and any(r.may_be_enabled for r in self.regions)


_MODULE_CONTEXT = Context(function=None, regions=(), grad_disabled=False)


def binding_key(node: ast.AST) -> str | None:
    """The key under which assignments to ``name`` or ``self.attr`` are recorded."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
        return f"self.{node.attr}"
    return None


def call_name(call: ast.Call) -> str | None:
    """The last identifier of the callee: ``step`` for ``opt.step()``, ``criterion`` for ``criterion(x)``."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


class ModuleAnalysis:
    """Everything the rules know about one module."""

    def __init__(
        self, tree: ast.Module, precision: str | None = None, path: str | None = None, project: "ProjectIndex | None" = None
    ) -> None:
        self.tree = tree
        self.configured_precision = precision
        #: the file's path as the front end named it, or None (source text)
        self.path = path
        #: facts about the rest of the project (None: this module alone)
        self.project = project
        self.imports = ImportTable()
        self._star_imports_bound = False
        self.parents: dict[ast.AST, ast.AST] = {}
        self._by_type: dict[type, list[ast.AST]] = defaultdict(list)
        self._contexts: dict[ast.AST, Context] = {}
        self._statements: dict[ast.AST, ast.stmt] = {}
        self._resolved: dict[ast.AST, str | None] = {}
        self._chain_ends: dict[ast.AST, ast.AST] = {}
        self._derived: dict[Callable, object] = {}
        self._walk()

    # ---------------------------------------------------------------- the walk
    def _walk(self) -> None:
        # The hot path of the whole plugin: a pre-order walk (so node lists come out in source order)
        # that reads only the fields that can hold child nodes, directly rather than through
        # ast.iter_child_nodes, and skips the shared leaf singletons (Load, Store, Add, Eq ...), which
        # are a third of all nodes.
        parents = self.parents
        by_type = self._by_type
        stack: list[ast.AST] = [self.tree]
        pop, push = stack.pop, stack.append
        AST = ast.AST
        known_fields = _CHILD_FIELDS
        while stack:
            node = pop()
            node_type = type(node)
            by_type[node_type].append(node)
            fields = known_fields.get(node_type)
            if fields is None:
                fields = _child_fields_reversed(node_type)
            for field in fields:
                value = getattr(node, field, None)
                if type(value) is list:
                    for item in reversed(value):
                        if isinstance(item, AST):
                            parents[item] = node
                            push(item)
                elif isinstance(value, AST):
                    parents[value] = node
                    push(value)
        for node in by_type[ast.Import] + by_type[ast.ImportFrom]:
            self.imports.add(node)  # type: ignore[arg-type]

    def derived(self, factory: Callable[["ModuleAnalysis"], DerivedT]) -> DerivedT:
        """A heavier analysis built on this one (Bindings, LowPrecisionFlow ...), built once per module."""
        if factory not in self._derived:
            self._derived[factory] = factory(self)
        return self._derived[factory]  # type: ignore[return-value]

    def release(self) -> None:
        """Drop the derived analyses. They point back at this one, and the cycle would keep the whole
        module (tree, parents, contexts) alive until the garbage collector's next full pass, which
        in a long flake8 run traverses every result gathered so far."""
        self._derived.clear()

    # ---------------------------------------------------------------- lookups
    def nodes(self, node_type: type[NodeT]) -> list[NodeT]:
        """All nodes of a type, in source order."""
        return self._by_type.get(node_type, [])  # type: ignore[return-value]

    @property
    def calls(self) -> list[ast.Call]:
        return self.nodes(ast.Call)

    def calls_named(self, *names: str) -> list[ast.Call]:
        """The calls whose callee ends in one of ``names`` (see :func:`call_name`), in source order:
        ``calls_named("step")`` finds ``opt.step()`` and ``step()``. Rules ask for the few calls they
        care about instead of each scanning every call of the module."""
        positions = self._call_positions
        if len(names) == 1:
            found = positions.get(names[0], ())
        else:
            found = sorted(position for name in names for position in positions.get(name, ()))
        calls = self.calls
        return [calls[position] for position in found]

    def calls_to(self, qualified_names: Collection[str], *, or_named: Collection[str] = ()) -> list[ast.Call]:
        """The calls whose callee resolves to one of ``qualified_names`` or ends in one of ``or_named``,
        each once, in source order: only calls named like one of them, or like a local alias of one
        (``from torch import save as tsave``), are resolved."""
        names = {qualified.rpartition(".")[2] for qualified in qualified_names} | set(or_named)
        names |= self.imports.local_names_for(qualified_names)
        return [
            call
            for call in self.calls_named(*names)
            if call_name(call) in or_named or self.resolve(call.func) in qualified_names
        ]

    @cached_property
    def _call_positions(self) -> dict[str | None, list[int]]:
        positions: dict[str | None, list[int]] = defaultdict(list)
        for position, call in enumerate(self.calls):
            positions[call_name(call)].append(position)
        return positions

    def resolve(self, node: ast.AST) -> str | None:
        """The qualified name ``node`` refers to through the module's imports (memoised per node: every
        rule resolves the same callees)."""
        resolved = self._resolved
        if node in resolved:
            return resolved[node]
        qualified = self.imports.resolve(node)
        if qualified is None and self.imports.star_modules and not self._star_imports_bound:
            self._bind_star_imports()
            qualified = self.imports.resolve(node)
        resolved[node] = qualified
        return qualified

    def _bind_star_imports(self) -> None:
        """``from models import *``: the names the project index reads off ``models`` (``torch`` among them)."""
        self._star_imports_bound = True
        if self.project is None or not self.path:
            return
        for module in self.imports.star_modules:
            for local, qualified in self.project.star_bindings(self.path, module).items():
                self.imports.bind(local, qualified)

    def statement_of(self, node: ast.AST) -> ast.stmt:
        """The statement ``node`` is part of (memoised: deep expressions cost one walk)."""
        statements = self._statements
        chain = []
        while not isinstance(node, ast.stmt):
            known = statements.get(node)
            if known is not None:
                node = known
                break
            chain.append(node)
            node = self.parents[node]
        for visited in chain:
            statements[visited] = node  # type: ignore[assignment]
        return node  # type: ignore[return-value]

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        return self.context(node).function  # type: ignore[return-value]

    # ---------------------------------------------------------------- contexts
    def context(self, node: ast.AST) -> Context:
        """The context in force where ``node`` executes."""
        chain = []
        current = node
        while current not in self._contexts:
            parent = self.parents.get(current)
            if parent is None:
                self._contexts[current] = _MODULE_CONTEXT
                break
            chain.append(current)
            current = parent
        context = self._contexts[current]
        for child in reversed(chain):
            parent = self.parents[child]
            context = self._child_context(parent, child, context)
            self._contexts[child] = context
        return context

    def _child_context(self, parent: ast.AST, child: ast.AST, parent_context: Context) -> Context:
        if isinstance(parent, FunctionNode) and isinstance(child, ast.stmt):
            regions, grad_disabled = self._decorator_effects(parent)
            if not regions:
                inherited = self._inherited_region(parent)
                regions = (inherited,) if inherited is not None else ()
            return Context(function=parent, regions=regions, grad_disabled=grad_disabled)
        if isinstance(parent, ast.Lambda) and child is parent.body:
            return Context(function=parent, regions=(), grad_disabled=False)
        if isinstance(parent, ast.ClassDef) and isinstance(child, ast.stmt):
            return _MODULE_CONTEXT
        if isinstance(parent, (ast.With, ast.AsyncWith)) and isinstance(child, ast.stmt):
            regions = list(parent_context.regions)
            grad_disabled = parent_context.grad_disabled
            for item in parent.items:
                region = self.region_of_with_item(item.context_expr, parent)
                if region is not None:
                    regions.append(region)
                elif self._disables_grad(item.context_expr):
                    grad_disabled = True
            if len(regions) == len(parent_context.regions) and grad_disabled == parent_context.grad_disabled:
                return parent_context
            return Context(parent_context.function, tuple(regions), grad_disabled)
        return parent_context

    def _inherited_region(self, function: ast.AST) -> AutocastRegion | None:
        """The region a call reaches this function from (see :mod:`.summaries`)."""
        if not self.regions and self.project is None:
            return None
        from .summaries import Summaries  # summaries are derived from this analysis

        return self.derived(Summaries).inherited_region(function)

    def _decorator_effects(self, function: ast.AST) -> tuple[tuple[AutocastRegion, ...], bool]:
        regions = []
        grad_disabled = False
        for decorator in function.decorator_list:  # type: ignore[attr-defined]
            if isinstance(decorator, ast.Call):
                region = region_from_call(decorator, function, self.resolve)
                if region is not None:
                    regions.append(region)
                    continue
            if self._disables_grad(decorator):
                grad_disabled = True
        return tuple(regions), grad_disabled

    def region_of_with_item(self, expr: ast.AST, owner: ast.AST) -> AutocastRegion | None:
        """The autocast region a ``with`` item opens: a constructor call, or a name bound to one
        (``ctx = nullcontext() if cpu else torch.autocast("cuda")`` ... ``with ctx:``)."""
        if isinstance(expr, ast.Call):
            return region_from_call(expr, owner, self.resolve) or self._region_returned_by(expr, owner)
        if not isinstance(expr, (ast.Name, ast.Attribute)) or not self._calls_a_region_constructor:
            return None
        from .bindings import Bindings, alternatives  # bindings are derived from this analysis

        found = []
        for value in self.derived(Bindings).bound_values(expr):
            options = alternatives(value)  # type: ignore[arg-type]
            for candidate in options:
                if isinstance(candidate, ast.Call):
                    region = region_from_call(candidate, owner, self.resolve)
                    if region is not None:
                        found.append((region, len(options) > 1))
        if not found:
            return None
        region, conditional = found[0]
        if conditional or len(found) > 1:
            # The name may hold autocast or a null context: it is a region of unknown state.
            return AutocastRegion(owner, region.api, region.device_type, region.dtype, None, region.dtype_known)
        return region

    def _region_returned_by(self, call: ast.Call, owner: ast.AST) -> AutocastRegion | None:
        """``with _get_fp16_context():`` where the module's function returns ``torch.cuda.amp.autocast()``
        (or, on some path, a null context: then a region of unknown state)."""
        if not isinstance(call.func, ast.Name) or not self._calls_a_region_constructor:
            return None
        from .bindings import Bindings  # bindings are derived from this analysis

        functions = [b.statement for b in self.derived(Bindings).reaching(call.func) if isinstance(b.statement, FunctionNode)]
        if len(functions) != 1:
            return None
        returned = [node.value for node in ast.walk(functions[0]) if isinstance(node, ast.Return) and node.value is not None]
        regions = [r for value in returned if isinstance(value, ast.Call) and (r := region_from_call(value, owner, self.resolve))]
        if not regions:
            return None
        region = regions[0]
        if len(regions) < len(returned):
            return AutocastRegion(owner, region.api, region.device_type, region.dtype, None, region.dtype_known)
        return region

    @cached_property
    def _calls_a_region_constructor(self) -> bool:
        """Some call of the module may open an autocast region (see ``region_from_call``): without one,
        no name or function of the module can hold or return a region, and their bindings are not read."""
        names = set(self._call_positions)
        if "autocast" in names or any(name and name.endswith("custom_fwd") for name in names):
            return True
        return bool(names & self.imports.local_names_for(_AUTOCAST_CONSTRUCTOR_NAMES))

    def _disables_grad(self, expr: ast.AST) -> bool:
        target = expr.func if isinstance(expr, ast.Call) else expr
        qualified = self.resolve(target)
        if qualified in GRAD_DISABLING_CONTEXTS:
            return True
        return (
            qualified == "torch.set_grad_enabled"
            and isinstance(expr, ast.Call)
            and bool(expr.args)
            and isinstance(expr.args[0], ast.Constant)
            and expr.args[0].value is False
        )

    def autocast_regions(self) -> Iterator[AutocastRegion]:
        """Every region in the module, in source order."""
        for node in self.nodes(ast.With) + self.nodes(ast.AsyncWith):
            for item in node.items:  # type: ignore[attr-defined]
                region = self.region_of_with_item(item.context_expr, node)
                if region is not None:
                    yield region
        for function in self.nodes(ast.FunctionDef) + self.nodes(ast.AsyncFunctionDef):
            yield from self._decorator_effects(function)[0]

    # ---------------------------------------------------------------- module facts
    @cached_property
    def regions(self) -> list[AutocastRegion]:
        return list(self.autocast_regions())

    @cached_property
    def uses_autocast(self) -> bool:
        """The module opens an autocast region that can be enabled: ``autocast(enabled=False)`` alone,
        which only turns autocast off, is no evidence that anything here runs under it; nor is a region
        that only restores the state an earlier one recorded (activation checkpointing's recompute:
        ``ctx.had_autocast = torch.is_autocast_enabled()`` ... ``autocast(enabled=ctx.had_autocast)``),
        which is on only where something else turned autocast on."""
        return any(region.may_be_enabled and not self._restores_recorded_state(region) for region in self.regions)

    def _restores_recorded_state(self, region: AutocastRegion) -> bool:
        if region.enabled_expr is not None:
            return self._is_recorded_state(region.enabled_expr, region.node, depth=0)
        if region.settings_expr is not None:  # autocast(**ctx.autocast_kwargs)
            return self._is_recorded_state(region.settings_expr, region.node, depth=0, key="enabled")
        return False

    def _is_recorded_state(self, expr: ast.AST, where: ast.AST, *, depth: int, key: str | None = None) -> bool:
        """``expr`` is the autocast state recorded where it was read: ``torch.is_autocast_enabled()`` (or a
        project wrapper of that name), an attribute every assignment of which stores one, or the parameter
        of a function every call of which in the module passes one. With ``key``, a dict holding one under
        that key (``{"enabled": torch.is_autocast_enabled(), ...}``)."""
        if depth > 3:
            return False
        if key is not None:
            if isinstance(expr, ast.Dict):
                values = [v for k, v in zip(expr.keys, expr.values) if isinstance(k, ast.Constant) and k.value == key]
                return bool(values) and all(self._is_recorded_state(v, where, depth=depth + 1) for v in values)
            if isinstance(expr, ast.Call) and call_name(expr) == "dict":
                values = [kw.value for kw in expr.keywords if kw.arg == key]
                return bool(values) and all(self._is_recorded_state(v, where, depth=depth + 1) for v in values)
        if isinstance(expr, ast.Call) and key is None:
            return call_name(expr) in _AUTOCAST_STATE_READERS
        if isinstance(expr, ast.Attribute):
            text = excerpt(expr, limit=None)
            stored = [
                (node, node.value)
                for node in self.nodes(ast.Assign)
                for target in node.targets  # type: ignore[attr-defined]
                if isinstance(target, ast.Attribute) and excerpt(target, limit=None) == text
            ]
            if any(
                isinstance(getattr(node, "target", None), ast.Attribute) and excerpt(node.target, limit=None) == text  # type: ignore[attr-defined]
                for node in self.nodes(ast.AnnAssign) + self.nodes(ast.AugAssign)  # type: ignore[operator]
            ) or any(
                isinstance(target, ast.Tuple) and any(excerpt(e, limit=None) == text for e in target.elts)
                for node in self.nodes(ast.Assign)
                for target in node.targets  # type: ignore[attr-defined]
            ):
                return False  # stored in a way not read here: not known to be a recorded state
            return bool(stored) and all(self._is_recorded_state(v, node, depth=depth + 1, key=key) for node, v in stored)
        if isinstance(expr, ast.Name) and key is None:
            passed = self._arguments_for_parameter(expr.id, where)
            return bool(passed) and all(self._is_recorded_state(v, where, depth=depth + 1) for v in passed)
        return False

    def _arguments_for_parameter(self, name: str, where: ast.AST) -> list[ast.AST]:
        """What the module's calls of the function around ``where`` pass for its parameter ``name``; []
        when ``name`` is not its parameter, a call passes it in a way not read here, or none is seen."""
        function = self.context(where).function
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return []
        positional = [a.arg for a in function.args.posonlyargs + function.args.args]
        if name not in positional and name not in [a.arg for a in function.args.kwonlyargs]:
            return []
        passed: list[ast.AST] = []
        for call in self.calls_named(function.name):
            func = call.func
            if self.resolve(func) is not None:
                continue  # another function of that name: torch.cuda.amp.autocast(enabled) inside `def autocast`
            local = isinstance(func, ast.Name) or isinstance(func.value, ast.Name) and func.value.id in ("self", "cls")  # type: ignore[attr-defined]
            if not local:
                return []  # `obj.autocast(True)`: perhaps this function, with another argument
            if any(isinstance(a, ast.Starred) for a in call.args):
                return []
            keyword = next((kw.value for kw in call.keywords if kw.arg == name), None)
            if keyword is not None:
                passed.append(keyword)
                continue
            offset = 1 if isinstance(call.func, ast.Attribute) and positional[:1] in (["self"], ["cls"]) else 0
            index = positional.index(name) - offset if name in positional else -1
            if not 0 <= index < len(call.args):
                return []
            passed.append(call.args[index])
        return passed


_AUTOCAST_CONSTRUCTOR_NAMES = frozenset(AUTOCAST_CONSTRUCTORS)
# What reads the autocast state in force (to restore it later): torch's, or a project's wrapper so named.
_AUTOCAST_STATE_READERS = frozenset({"is_autocast_enabled", "is_autocast_cpu_enabled"})

_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}
# Fields that never hold a node worth visiting, in any Python version: the shared singletons (ctx, op,
# ops) and identifiers, strings and numbers ("name" is not among them: 3.12's TypeAlias.name is a Name).
# Leaving them out is only a saving, as the walk still checks that what it pushes is a node.
_LEAF_FIELDS = frozenset(
    {"ctx", "op", "ops", "id", "attr", "arg", "asname", "module", "level", "kind", "type_comment", "is_async",
     "conversion", "tag", "rest", "kwd_attrs"}
)
_LEAF_VALUE_TYPES = tuple(getattr(ast, name) for name in ("Constant", "MatchSingleton") if hasattr(ast, name))


def _child_fields_reversed(node_type: type) -> tuple[str, ...]:
    """The fields of a node type that can hold child nodes, last first, so that a stack pops them in
    source order; remembered in _CHILD_FIELDS, which the walk reads first."""
    leaves = _LEAF_FIELDS | ({"value"} if issubclass(node_type, _LEAF_VALUE_TYPES) else set())
    fields = tuple(reversed([f for f in node_type._fields if f not in leaves]))  # type: ignore[attr-defined]
    _CHILD_FIELDS[node_type] = fields
    return fields


def method_chain_end(call: ast.Call, analysis: ModuleAnalysis) -> ast.AST:
    """``Net().half().cuda()``: the last call chained onto ``call``, stopping before a cast back to full
    precision (``.float()``, ``.double()``), which makes the chain's value a different thing. Every call
    of a chain is answered at once, so a chain of any length costs time linear in its length."""
    ends = analysis._chain_ends
    if call in ends:
        return ends[call]
    chain: list[ast.AST] = [call]
    outer: ast.AST = call
    parents = analysis.parents
    parent = parents.get(outer)
    while (
        isinstance(parent, ast.Attribute)
        and parent.attr not in ("float", "double")
        and isinstance(grandparent := parents.get(parent), ast.Call)
        and grandparent.func is parent
    ):
        outer = grandparent
        if outer in ends:
            outer = ends[outer]
            break
        chain.append(outer)
        parent = parents.get(outer)
    for link in chain:
        ends[link] = outer
    return outer


def method_chain_root(expr: ast.expr) -> ast.expr:
    """``model.to(device).half()`` -> ``model``: the receiver a chain of method calls starts from."""
    while isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        expr = expr.func.value
    return expr
