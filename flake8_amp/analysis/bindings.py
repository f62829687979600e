"""Which bindings of a name reach the place where it is read.

Every binding of the module is recorded once, by scope and name: assignments (``x = ...``, ``x: T = ...``,
``x += ...``, ``(x := ...)``), loop and ``with ... as`` targets, parameters, imports, ``def`` and
``class`` names, ``except ... as`` names. ``self.attr = ...`` is recorded under ``"self.attr"``.

A read inside a function sees the function's own bindings if it has any (Python makes such a name local
to the whole function): the last one before the read in source order, and earlier ones too while the
later ones sit in a branch or loop that the read is not inside (``x = a`` / ``if c: x = b`` / ``use(x)``
sees both); a binding in the other arm of an ``if`` around the read never reaches it. A name the
function does not bind is read from the enclosing function (any of its bindings), then the module,
where the bindings that reach the end of the module count: functions run once the module has run.
``self.attr`` sees every binding of the module. Loop back-edges are not followed: a read sees bindings
above it.

Each lookup is a binary search in its scope's sorted bindings plus a short walk back, memoised per read:
linear in the size of the module.
"""

from __future__ import annotations

import ast
import bisect
from collections import defaultdict

from .module_analysis import ModuleAnalysis, binding_key

FunctionScope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
#: Reads with more candidate bindings than this see only the latest ones (a generated module, not code).
_MAX_REACHING = 16
Position = tuple[int, int]
Arm = tuple[ast.AST, str]


class Binding:
    """One binding of a name. ``value`` is the bound expression, the ``AugAssign`` statement for
    ``x += y``, or None where the source does not say (loop targets, parameters, imports ...).
    ``unpacked``: ``a, b = pair`` (the value is the whole right-hand side). ``from_a_function``: made by
    a function for its ``global`` name, so it happens when the function runs, if it does. Compared by
    identity; a plain class with slots, as modules make thousands of them."""

    __slots__ = ("key", "scope", "statement", "value", "unpacked", "position", "from_a_function")

    def __init__(
        self,
        key: str,
        scope: ast.AST | None,
        statement: ast.AST,
        value: ast.AST | None,
        unpacked: bool = False,
        position: Position = (0, 0),
        from_a_function: bool = False,
    ) -> None:
        self.key = key
        self.scope = scope
        self.statement = statement
        self.value = value
        self.unpacked = unpacked
        self.position = position
        self.from_a_function = from_a_function

    def __repr__(self) -> str:
        return f"Binding({self.key!r} at {self.position})"


def parameter_names(function: ast.AST) -> set[str]:
    arguments = getattr(function, "args", None)
    if not isinstance(arguments, ast.arguments):
        return set()
    every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
    every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return {argument.arg for argument in every}


def alternatives(value: ast.expr) -> list[ast.expr]:
    """The values an expression may evaluate to: both arms of ``a if c else b``, each of ``a or b``."""
    found, pending = [], [value]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.IfExp):
            pending += [current.orelse, current.body]
        elif isinstance(current, ast.BoolOp):
            pending += reversed(current.values)
        else:
            found.append(current)
    return found


class Bindings:
    """Use as ``analysis.derived(Bindings)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._scope_of: dict[ast.AST, ast.AST | None] = {}
        self._by_key: dict[str, list[Binding]] = defaultdict(list)
        self._by_scope: dict[tuple[ast.AST | None, str], list[Binding]] = {}
        self._positions: dict[tuple[ast.AST | None, str], list[Position]] = {}
        self._arms: dict[ast.AST, tuple[Arm, ...]] = {}
        self._reaching: dict[ast.AST, list[Binding]] = {}
        self._constructions: dict[str, list[ast.Call]] = {}
        self._values: dict[str, list[ast.AST]] = {}
        self._classes: dict[str, set[str]] = {}
        self._module_end: dict[str, list[Binding]] = {}
        self._reached: dict[str, dict[Binding, list[ast.AST]]] = {}
        self._reads: dict[str, list[ast.AST]] | None = None
        self._by_statement: dict[ast.AST, list[Binding]] = defaultdict(list)
        self._globals: dict[ast.AST, set[str]] = defaultdict(set)
        for declaration in analysis.nodes(ast.Global):
            self._globals[self.scope_of(declaration)].update(declaration.names)
        self._record_all()
        self._index_arms()
        self._comprehension_targets = {
            target.id
            for node_type in _COMPREHENSIONS
            for comprehension in analysis.nodes(node_type)
            for generator in comprehension.generators  # type: ignore[attr-defined]
            for target in ast.walk(generator.target)
            if isinstance(target, ast.Name)
        }

    # ---------------------------------------------------------------- queries
    def bound_values(self, node: ast.AST) -> list[ast.AST]:
        """The values bound (anywhere in the module) to the name or ``self.attr`` in ``node``."""
        key = binding_key(node)
        if key is None:
            return []
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = [b.value for b in self._by_key.get(key, ()) if b.value is not None]
        return found

    def is_bound(self, key: str) -> bool:
        return key in self._by_key

    def constructions(self, node: ast.AST) -> list[ast.Call]:
        """The calls whose result the name or ``self.attr`` in ``node`` may hold (``crit = nn.BCELoss()``,
        ``self.norm = LayerNorm(d) if pre else None``), anywhere in the module: what class an object is."""
        key = binding_key(node)
        if key is None:
            return []
        found = self._constructions.get(key)
        if found is None:
            found = self._constructions[key] = [
                candidate
                for value in self.bound_values(node)
                if isinstance(value, ast.expr)
                for candidate in alternatives(value)
                if isinstance(candidate, ast.Call)
            ]
        return found

    def constructed_classes(self, node: ast.AST) -> set[str]:
        """Qualified names of the imported classes whose instances ``node`` may hold."""
        key = binding_key(node)
        if key is None:
            return set()
        found = self._classes.get(key)
        if found is None:
            resolve = self.analysis.resolve
            found = self._classes[key] = {q for call in self.constructions(node) if (q := resolve(call.func))}
        return found

    def reads_reached_by(self, binding: Binding) -> list[ast.AST]:
        """The reads ``binding`` may give their value to (the reverse of :meth:`reaching`), in source order."""
        index = self._reached.get(binding.key)
        if index is None:
            index = self._reached[binding.key] = defaultdict(list)
            for read in self.reads_of(binding.key):
                for reaching in self.reaching(read):
                    index[reaching].append(read)
        return index.get(binding, [])

    def bindings_of(self, key: str) -> list[Binding]:
        return self._by_key.get(key, [])

    def reads_of(self, key: str) -> list[ast.AST]:
        """Every read (load) of a name or ``self.attr`` in the module, in source order."""
        if self._reads is None:
            reads: dict[str, list[ast.AST]] = defaultdict(list)
            for node in self.analysis.nodes(ast.Name):
                if isinstance(node.ctx, ast.Load):
                    reads[node.id].append(node)
            for node in self.analysis.nodes(ast.Attribute):
                read_key = binding_key(node) if isinstance(node.ctx, ast.Load) else None
                if read_key is not None:
                    reads[read_key].append(node)
            self._reads = reads
        return self._reads.get(key, [])

    def made_by(self, statement: ast.AST) -> list[Binding]:
        """The bindings a statement (or a ``def``, a parameter list's function ...) makes."""
        return self._by_statement.get(statement, [])

    def reaching(self, node: ast.AST) -> list[Binding]:
        """The bindings that may give ``node`` (a read of a name or ``self.attr``) its value."""
        found = self._reaching.get(node)
        if found is None:
            found = self._reaching[node] = self._find_reaching(node)
        return found

    def reaching_values(self, node: ast.AST) -> list[ast.AST]:
        """The values of the reaching bindings; [] when any of them is not known (a parameter ...)."""
        bindings = self.reaching(node)
        if any(binding.value is None or binding.unpacked for binding in bindings):
            return []
        return [binding.value for binding in bindings]  # type: ignore[misc]

    def scope_of(self, node: ast.AST) -> ast.AST | None:
        """The function, lambda or class body ``node`` executes in; None for the module."""
        memo, parents = self._scope_of, self.analysis.parents
        chain = []
        current = node
        while True:
            if current in memo:
                scope = memo[current]
                break
            parent = parents.get(current)
            if parent is None:
                scope = None
                break
            chain.append(current)
            if isinstance(parent, Scope) and _inside_body(current, parent):
                scope = parent
                break
            current = parent
        for visited in chain:
            memo[visited] = scope
        return scope

    # ---------------------------------------------------------------- recording
    def _record_all(self) -> None:
        analysis = self.analysis
        for node in analysis.nodes(ast.Assign):
            for target in node.targets:
                self._record_target(target, node, node.value)
        for node in analysis.nodes(ast.AnnAssign):
            if node.value is not None:
                self._record_target(node.target, node, node.value)
        for node in analysis.nodes(ast.AugAssign):
            self._record_target(node.target, node, node)
        for node in analysis.nodes(ast.NamedExpr):
            self._record_target(node.target, node, node.value)
        for node in analysis.nodes(ast.Expr):
            root = _in_place_cast_root(node.value)
            if root is not None:
                self._record_target(root, node, node.value)
        for node in analysis.nodes(ast.For) + analysis.nodes(ast.AsyncFor):
            self._record_target(node.target, node, None)
        for node in analysis.nodes(ast.With) + analysis.nodes(ast.AsyncWith):
            for item in node.items:
                if item.optional_vars is not None:
                    self._record_target(item.optional_vars, node, None)
        for node in analysis.nodes(ast.Import) + analysis.nodes(ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    name = alias.asname or alias.name.partition(".")[0]
                    self._add(name, self.scope_of(node), node, None)
        for node in analysis.nodes(ast.FunctionDef) + analysis.nodes(ast.AsyncFunctionDef) + analysis.nodes(ast.ClassDef):
            self._add(node.name, self.scope_of(node), node, None)
        for node in analysis.nodes(ast.FunctionDef) + analysis.nodes(ast.AsyncFunctionDef) + analysis.nodes(ast.Lambda):
            for name in parameter_names(node):
                self._add(name, node, node, None, position=(0, 0))
        for node in analysis.nodes(ast.ExceptHandler):
            if node.name:
                self._add(node.name, self.scope_of(node), node, None)
        for bindings in self._by_scope.values():
            bindings.sort(key=lambda binding: binding.position)
        for scope_key, bindings in self._by_scope.items():
            self._positions[scope_key] = [binding.position for binding in bindings]

    def _record_target(self, target: ast.AST, statement: ast.AST, value: ast.AST | None, unpacked: bool = False) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._record_target(element, statement, value, unpacked=True)
            return
        if isinstance(target, ast.Starred):
            self._record_target(target.value, statement, value, unpacked=True)
            return
        key = binding_key(target)
        if key is None:
            return
        scope = None if key.startswith("self.") else self.scope_of(statement)
        self._add(key, scope, statement, value, unpacked)

    def _add(
        self,
        key: str,
        scope: ast.AST | None,
        statement: ast.AST,
        value: ast.AST | None,
        unpacked: bool = False,
        position: Position | None = None,
    ) -> None:
        from_a_function = scope is not None and key in self._globals.get(scope, ())
        if from_a_function:
            scope = None
        if position is None:
            position = (getattr(statement, "lineno", 0), getattr(statement, "col_offset", 0))
        binding = Binding(key, scope, statement, value, unpacked, position, from_a_function)
        self._by_statement[statement].append(binding)
        self._by_key[key].append(binding)
        self._by_scope.setdefault((scope, key), []).append(binding)

    def _index_arms(self) -> None:
        """Each statement's arms: the branches and loop bodies it sits in, within its scope."""
        arms = self._arms
        pending: list[tuple[list, tuple[Arm, ...]]] = [(self.analysis.tree.body, ())]
        while pending:
            statements, outer = pending.pop()
            for statement in statements:
                arms[statement] = outer
                if isinstance(statement, (ast.If, ast.For, ast.AsyncFor, ast.While)):
                    pending.append((statement.body, outer + ((statement, "body"),)))
                    pending.append((statement.orelse, outer + ((statement, "orelse"),)))
                elif isinstance(statement, (ast.With, ast.AsyncWith)):
                    pending.append((statement.body, outer))
                elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    pending.append((statement.body, ()))
                elif isinstance(statement, ast.Try) or type(statement).__name__ == "TryStar":
                    for name in ("body", "orelse", "finalbody"):
                        pending.append((getattr(statement, name), outer + ((statement, name),)))
                    for handler in statement.handlers:  # type: ignore[attr-defined]
                        pending.append((handler.body, outer + ((handler, "body"),)))
                elif type(statement).__name__ == "Match":
                    for case in statement.cases:  # type: ignore[attr-defined]
                        pending.append((case.body, outer + ((statement, f"case{id(case)}"),)))

    # ---------------------------------------------------------------- lookup
    def _find_reaching(self, node: ast.AST) -> list[Binding]:
        key = binding_key(node)
        if key is None or key not in self._by_key:
            return []
        if key.startswith("self."):
            return self._by_key[key]
        if key in self._comprehension_targets and _bound_by_comprehension(node, key, self.analysis):
            return []
        scope = self.scope_of(node)
        use = self.analysis.statement_of(node)
        first = True
        while True:
            if scope is not None and key in self._globals.get(scope, ()):
                scope = None
            bindings = self._by_scope.get((scope, key))
            if bindings:
                if first:
                    return self._ordered(scope, key, use)
                if scope is None:
                    return self._at_module_end(key)
                return bindings  # an enclosing function: any of its bindings may have run before the call
            if scope is None:
                return []
            scope = self._enclosing_function_scope(scope)
            first = False

    def _at_module_end(self, key: str) -> list[Binding]:
        """What a function sees of a module-level name: the bindings that reach the end of the module
        (functions run once the module has run: ``model = None`` ... ``if __name__ == "__main__": model =
        Net()`` gives both), one answer per name."""
        found = self._module_end.get(key)
        if found is None:
            found = self._module_end[key] = self._ordered(None, key, None)
        return found

    def _enclosing_function_scope(self, scope: ast.AST) -> ast.AST | None:
        """The scope a function reads free names from: class bodies in between are skipped."""
        current = self.scope_of(scope)
        while isinstance(current, ast.ClassDef):
            current = self.scope_of(current)
        return current

    def _ordered(self, scope: ast.AST | None, key: str, use: ast.AST | None) -> list[Binding]:
        """The bindings of ``scope`` that reach ``use`` (None: the end of the scope)."""
        bindings = self._by_scope[(scope, key)]
        if use is None:
            index, use_arms = len(bindings), ()
        else:
            position = (getattr(use, "lineno", 0), getattr(use, "col_offset", 0))
            # Bindings at the read's own statement come after the read (`x = x + 1` reads the previous x).
            index = bisect.bisect_left(self._positions[(scope, key)], position)
            use_arms = self._arms.get(use, ())
        found: list[Binding] = []
        covered: set[Arm] = set()  # arms of ifs around bindings found so far, where the read is not
        for position_index in range(index - 1, -1, -1):
            binding = bindings[position_index]
            binding_arms = self._arms.get(binding.statement, ())
            if _exclusive(binding_arms, use_arms):
                continue
            found.append(binding)
            if len(found) >= _MAX_REACHING:
                break
            if binding.from_a_function:
                continue  # it binds the name only if that function runs
            if use_arms[: len(binding_arms)] == binding_arms:
                break  # it always runs before the read: nothing earlier reaches past it
            if _both_arms_bound(binding_arms, use_arms, covered):
                break  # `if c: x = a else: x = b`: whichever arm ran, it bound the name
        return found


_MODULE_CASTS = frozenset({"half", "bfloat16", "float", "double", "to", "type"})
_CASTS_IN_PLACE = _MODULE_CASTS | {"cuda", "cpu"}


def _in_place_cast_root(value: ast.AST) -> ast.AST | None:
    """``model.half()`` or ``model.cuda().half()`` as a statement: ``nn.Module`` casts in place, so the
    statement rebinds ``model`` to the cast module (on a tensor the statement would do nothing at all)."""
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in _MODULE_CASTS):
        return None
    receiver = value.func.value
    while isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute) and receiver.func.attr in _CASTS_IN_PLACE:
        receiver = receiver.func.value
    return receiver if isinstance(receiver, (ast.Name, ast.Attribute)) and binding_key(receiver) else None


def _both_arms_bound(binding_arms: tuple[Arm, ...], use_arms: tuple[Arm, ...], covered: set[Arm]) -> bool:
    """Record the ``if`` arm where the binding's path leaves the read's; True once both arms of that
    ``if`` bind the name (with nothing else in between: the binding sits directly in the arm)."""
    depth = len(use_arms)
    if len(binding_arms) != depth + 1 or binding_arms[:depth] != use_arms:
        return False
    node, arm_field = binding_arms[depth]
    if not isinstance(node, ast.If):
        return False
    covered.add((node, arm_field))
    return (node, "body") in covered and (node, "orelse") in covered


def _exclusive(a: tuple[Arm, ...], b: tuple[Arm, ...]) -> bool:
    """The two arms of one ``if`` (or two cases of one ``match``): never both in one pass."""
    for (node_a, field_a), (node_b, field_b) in zip(a, b):
        if node_a is not node_b:
            return False
        if field_a != field_b:
            return isinstance(node_a, ast.If) or field_a.startswith("case")
    return False


def _inside_body(child: ast.AST, scope: ast.AST) -> bool:
    """A scope's decorators, defaults, annotations and bases run in the enclosing scope."""
    if isinstance(scope, ast.Lambda):
        return child is scope.body
    return isinstance(child, ast.stmt)


def _bound_by_comprehension(node: ast.AST, key: str, analysis: ModuleAnalysis) -> bool:
    """``[x.half() for x in xs]``: ``x`` belongs to the comprehension, not to the function."""
    return comprehension_iterable(node, key, analysis) is not None


def comprehension_iterable(node: ast.AST, key: str, analysis: ModuleAnalysis) -> ast.expr | None:
    """``xs`` for ``x`` in ``[f(x) for x in xs]``: the iterable whose elements a comprehension binds
    ``key`` to, or None where no comprehension around ``node`` binds it."""
    parent = analysis.parents.get(node)
    while parent is not None and not isinstance(parent, (ast.stmt, *FunctionScope)):
        if isinstance(parent, _COMPREHENSIONS):
            for generator in parent.generators:
                if any(isinstance(t, ast.Name) and t.id == key for t in ast.walk(generator.target)):
                    return generator.iter
        parent = analysis.parents.get(parent)
    return None
