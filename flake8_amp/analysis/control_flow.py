"""Which conditions hold where a statement runs, and which statements can run in one pass.

Conditions are facts: ``if use_amp:`` in two places of a function is one switch, so a statement under
the first and one under the second belong to one path, and the ``else:`` arms of both to the other. A
condition is known by its normalised text (``scaler is not None`` and ``scaler`` are the same fact);
``not``, ``and``, ``or``, ``is None`` and ``== False`` are taken apart, and the ``else`` of ``if a and
b:`` is known to exclude every path where both ``a`` and ``b`` hold. An ``if C: ... return`` with no
``else`` makes ``not C`` hold for the rest of its block.

Some facts are precision switches: a condition that names mixed precision (``use_amp``, ``args.fp16``,
``self.scaler``, ``dtype == torch.float16``), or an expression the module passes as ``enabled=`` to
autocast or a GradScaler. The arm where such a switch is off is the float32 path; the arm where it is on
is a precision the code chose on purpose.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

from .module_analysis import ModuleAnalysis, call_name

Boundary = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
Loop = (ast.For, ast.AsyncFor, ast.While)

_LOW_PRECISION_WORDS = re.compile(
    r"(?<![a-z0-9])(amp|apex|fp16|bf16|half|float16|bfloat16|mixed|autocast|scaler|scaling|loss_scale"
    r"|low_precision|mixed_precision)(?![a-z0-9])",
    re.I,
)
_FULL_PRECISION_WORDS = re.compile(r"(?<![a-z0-9])(fp32|float32|full_precision|single_precision|no_amp)(?![a-z0-9])", re.I)
# Conditions that configure a precision, either way: a cast under them is the configuration itself.
_PRECISION_SETTING = re.compile(r"fp16|bf16|half|float16|bfloat16|dtype|precision|amp", re.I)
_NEWER = re.compile(r"greater|(?<![a-z])ge(?![a-z])|geq|at_least|min(?![a-z])|newer|_ge_|_gte|minimum|is_torch_2", re.I)
_OLDER = re.compile(r"less|(?<![a-z])lt(?![a-z])|(?<![a-z])le(?![a-z])|_lt_|_le_|older|below|max(?![a-z])", re.I)
_FALLBACK_EXCEPTIONS = frozenset({"ImportError", "ModuleNotFoundError", "AttributeError", "TypeError", "Exception"})
_NEW_AMP_API = re.compile(r"torch\.amp|torch\.autocast|autocast|GradScaler|custom_fwd|custom_bwd")
_EXITS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


@dataclass(frozen=True)
class Fact:
    """A condition (by its normalised text) and whether it holds. A compound condition that says only
    that *some* of its parts hold (``a and b`` false, ``a or b`` true) carries those parts in ``one_of``:
    a path where every one of them fails cannot be the same pass."""

    key: str
    holds: bool
    one_of: tuple["Fact", ...] = field(default=(), compare=False)
    #: for ``x == C`` with ``C`` a constant (a literal, a dtype, an enum member): ``x`` and ``C``, by text.
    #: ``x == A`` and ``x == B`` cannot both hold in one pass when ``A`` and ``B`` differ.
    equates: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def negated(self) -> "Fact":
        return Fact(self.key, not self.holds, equates=self.equates)


Facts = frozenset  # of Fact
_NO_FACTS: frozenset[Fact] = frozenset()


def ancestors(node: ast.AST, analysis: ModuleAnalysis, *, cross_scopes: bool = False) -> Iterator[tuple[ast.AST, ast.AST]]:
    """(child, parent) pairs from ``node`` upwards, stopping at the enclosing function, lambda or class
    (or at the module with ``cross_scopes``)."""
    parents = analysis.parents
    child, parent = node, parents.get(node)
    while parent is not None:
        yield child, parent
        if not cross_scopes and isinstance(parent, Boundary):
            return
        child, parent = parent, parents.get(parent)


def facts_when(test: ast.AST, truth: bool) -> frozenset[Fact]:
    """What ``test`` evaluating to ``truth`` tells: ``not a`` false -> a; ``a and b`` true -> a, b;
    ``a or b`` false -> not a, not b; ``x is None`` true -> not x."""
    found: set[Fact] = set()
    pending = [(test, truth)]
    while pending:
        node, value = pending.pop()
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            pending.append((node.operand, not value))
        elif isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And) and value or isinstance(node.op, ast.Or) and not value:
                pending += [(operand, value) for operand in node.values]
            else:
                # `a and b` false, `a or b` true: some operand has this truth value, which one is open
                alternatives = tuple(fact for operand in node.values for fact in _single_fact(operand, value))
                if len(alternatives) == len(node.values):
                    found.add(Fact(_normalised(node), value, alternatives))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and _is_none_or_bool(node.comparators[0]):
            op, constant = node.ops[0], node.comparators[0].value  # type: ignore[attr-defined]
            positive = isinstance(op, (ast.Is, ast.Eq))
            if constant is None:
                pending.append((node.left, value != positive))  # `x is None` true: x does not hold
            elif isinstance(op, (ast.Is, ast.Eq, ast.IsNot, ast.NotEq)):
                pending.append((node.left, value == (positive == constant)))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.NotEq):
            equal = ast.Compare(left=node.left, ops=[ast.Eq()], comparators=node.comparators)
            found.add(Fact(_normalised(equal), not value, equates=_equates(equal)))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            found.add(Fact(_normalised(node), value, equates=_equates(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "bool" and len(node.args) == 1:
            pending.append((node.args[0], value))
        else:
            found.add(Fact(_normalised(node), value))
    return frozenset(found)


def _single_fact(node: ast.AST, value: bool) -> list[Fact]:
    """The one fact ``node`` evaluating to ``value`` tells, or nothing when it tells several or none."""
    facts = facts_when(node, value)
    return list(facts) if len(facts) == 1 and not next(iter(facts)).one_of else []


# Spellings of one dtype: ``dtype == torch.half`` and ``dtype == torch.float16`` are the same condition.
_DTYPE_ALIASES = {
    "half": "float16", "float": "float32", "double": "float64", "long": "int64", "int": "int32", "short": "int16",
    "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}
_DTYPES = frozenset(
    {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool", "complex32",
     "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}
)


def _equates(compare: ast.Compare) -> tuple[str, str] | None:
    """``x == C`` (or ``C == x``) with ``C`` a constant and ``x`` free of calls: ``(x, C)``, the constant
    as ``kind:value`` (a string, a number, a torch dtype, a member of one enum class), else None."""
    left, right = compare.left, compare.comparators[0]
    for subject, constant in ((left, right), (right, left)):
        value = _constant_text(constant)
        if value is not None and _constant_text(subject) is None and not any(isinstance(n, ast.Call) for n in ast.walk(subject)):
            return _normalised(subject), value
    return None


def _constant_text(node: ast.AST) -> str | None:
    """A value no assignment can change, with its kind: a literal (``str:'fp16'``, ``number:2.0``), a torch
    dtype (``dtype:float16`` for ``torch.half``) or an enum member (``AmpType:APEX``). Constants of
    different kinds are not compared (a str Enum's member may equal a string)."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value is not None:
        if isinstance(node.value, (int, float)):
            return f"number:{float(node.value)!r}"
        return f"{type(node.value).__name__}:{node.value!r}"
    if not isinstance(node, ast.Attribute):
        return None
    parts = [node.attr]
    root = node.value
    while isinstance(root, ast.Attribute):
        parts.append(root.attr)
        root = root.value
    if not isinstance(root, ast.Name):
        return None
    if root.id == "torch" and len(parts) == 1:
        dtype = _DTYPE_ALIASES.get(node.attr, node.attr)
        return f"dtype:{dtype}" if dtype in _DTYPES else None
    enum_class = parts[1] if len(parts) > 1 else root.id  # Cls.MEMBER, module.Cls.MEMBER
    if enum_class[:1].isupper() and not enum_class.isupper() and node.attr.isupper():
        return f"{_normalised(node.value)}:{node.attr}"
    return None


def _is_none_or_bool(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool))


def _normalised(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except RecursionError:  # a condition nested beyond what unparse can print: known by its position
        return f"<condition at {getattr(node, 'lineno', 0)}:{getattr(node, 'col_offset', 0)}>"


def consistent(a: frozenset[Fact], b: frozenset[Fact]) -> bool:
    """Whether two sets of facts can hold in one pass: no condition both true and false, and no "some of
    these" (the ``else`` of ``if use_amp and fp16:``) whose every part the other set denies."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if any(fact.negated in large for fact in small):
        return False
    if _equal_to_different_constants(small, large):
        return False
    return not (_denies_every_alternative(a, b) or _denies_every_alternative(b, a))


def _equal_to_different_constants(small: frozenset[Fact], large: frozenset[Fact]) -> bool:
    """``x == A`` holds in one set and ``x == B`` in the other, ``A`` and ``B`` different constants
    (``if amp_type == AmpType.APEX:`` ... ``if amp_type == AmpType.PYTORCH:``)."""
    held = {fact.equates[0]: fact.equates[1] for fact in small if fact.holds and fact.equates}
    if not held:
        return False
    for fact in large:
        if fact.holds and fact.equates and fact.equates[0] in held:
            mine, theirs = held[fact.equates[0]], fact.equates[1]
            if mine != theirs and mine.rpartition(":")[0] == theirs.rpartition(":")[0]:
                return True  # two constants of one kind (two strings, two dtypes, two members of one enum)
    return False


def _denies_every_alternative(facts: frozenset[Fact], others: frozenset[Fact]) -> bool:
    return any(fact.one_of and all(part.negated in others for part in fact.one_of) for fact in facts)


_XLA_DEVICE = re.compile(r"tpu|xla", re.I)


def excluded_by_cuda_amp(fact: Fact) -> bool:
    """A fact every pass of CUDA mixed precision (a GradScaler, CUDA autocast) implies: not on a TPU / XLA
    device (``if is_torch_tpu_available(): xm.optimizer_step(opt) elif use_amp: scaler.step(opt)``)."""
    return not fact.holds and bool(_XLA_DEVICE.search(fact.key))


def switch_polarity(key: str) -> bool | None:
    """For a precision switch, the truth value that means low precision is on; None for other facts."""
    if _LOW_PRECISION_WORDS.search(key):
        return True
    if _FULL_PRECISION_WORDS.search(key):
        return False
    return None


class ControlFlow:
    """Use as ``analysis.derived(ControlFlow)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self._statement_facts: dict[ast.AST, frozenset[Fact]] = {}
        self._indexed_blocks: set[int] = set()

    # ---------------------------------------------------------------- facts on a path
    def assumptions(self, node: ast.AST) -> frozenset[Fact]:
        """The facts that hold wherever ``node`` runs, within its function."""
        statement = self.analysis.statement_of(node)
        facts = self._facts_of_statement(statement)
        if statement not in self._statements_with_conditional_expressions:
            return facts
        extra: set[Fact] = set()
        for child, parent in ancestors(node, self.analysis):
            if parent is statement:
                break
            if isinstance(parent, ast.IfExp) and child is not parent.test:
                extra |= facts_when(parent.test, child is parent.body)
        return facts | extra if extra else facts

    def _facts_of_statement(self, statement: ast.AST) -> frozenset[Fact]:
        facts = self._statement_facts.get(statement)
        if facts is None:
            self._index_scope_of(statement)
            facts = self._statement_facts.get(statement, _NO_FACTS)
        return facts

    def _index_scope_of(self, statement: ast.AST) -> None:
        """Facts for every statement of the scope holding ``statement``, in one pass over its blocks."""
        scope_body = self._scope_body(statement)
        if id(scope_body) in self._indexed_blocks:
            self._statement_facts.setdefault(statement, _NO_FACTS)
            return
        self._indexed_blocks.add(id(scope_body))
        pending: list[tuple[list, frozenset[Fact]]] = [(scope_body, _NO_FACTS)]
        while pending:
            block, facts = pending.pop()
            for child in block:
                self._statement_facts[child] = facts
                if isinstance(child, ast.If):
                    pending.append((child.body, facts | facts_when(child.test, True)))
                    pending.append((child.orelse, facts | facts_when(child.test, False)))
                    body_exits, else_exits = _always_exits(child.body), _always_exits(child.orelse)
                    if body_exits and not else_exits:
                        facts = facts | facts_when(child.test, False)
                    elif else_exits and not body_exits:
                        facts = facts | facts_when(child.test, True)
                    if not (body_exits and else_exits):
                        facts = facts | _not_on_a_nested_exit(child)
                elif isinstance(child, (*Loop, ast.With, ast.AsyncWith)):
                    pending.append((child.body, facts))
                    pending.append((getattr(child, "orelse", []), facts))
                elif isinstance(child, ast.Try) or type(child).__name__ == "TryStar":
                    for name in ("body", "orelse", "finalbody"):
                        pending.append((getattr(child, name), facts))
                    for handler in child.handlers:  # type: ignore[attr-defined]
                        pending.append((handler.body, facts))
                elif type(child).__name__ == "Match":
                    for case in child.cases:  # type: ignore[attr-defined]
                        pending.append((case.body, facts))

    def _scope_body(self, statement: ast.AST) -> list:
        for _, parent in ancestors(statement, self.analysis):
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                return parent.body
        return self.analysis.tree.body

    @cached_property
    def _statements_with_conditional_expressions(self) -> set[ast.AST]:
        return {self.analysis.statement_of(node) for node in self.analysis.nodes(ast.IfExp)}

    def may_share_a_pass(self, a: ast.AST, b: ast.AST) -> bool:
        return consistent(self.assumptions(a), self.assumptions(b))

    # ---------------------------------------------------------------- precision switches
    @cached_property
    def _enabled_switches(self) -> dict[str, bool]:
        """Facts the module passes as ``enabled=`` to autocast or a GradScaler, with their "on" value."""
        from .torch_api import AUTOCAST_CONSTRUCTORS, GRAD_SCALER_CONSTRUCTORS  # data only

        switches: dict[str, bool] = {}
        constructors = set(AUTOCAST_CONSTRUCTORS) | set(GRAD_SCALER_CONSTRUCTORS)
        for call in self.analysis.calls_to(constructors):
            for keyword in call.keywords:
                if keyword.arg == "enabled" and not isinstance(keyword.value, ast.Constant):
                    for fact in facts_when(keyword.value, True):
                        if not fact.one_of:  # enabled=(fp16 or bf16): each one alone does not switch it on
                            switches[fact.key] = fact.holds
        return switches

    def switch_on_value(self, key: str) -> bool | None:
        on = self._enabled_switches.get(key)
        return on if on is not None else switch_polarity(key)

    def on_float32_path(self, node: ast.AST) -> bool:
        """In the arm of a precision switch where low precision is off (``else:`` of ``if use_amp:``)."""
        return any(not fact.one_of and self.switch_on_value(fact.key) == (not fact.holds) for fact in self.assumptions(node))

    def on_low_precision_path(self, node: ast.AST) -> bool:
        """In the arm of a precision switch where low precision is on (``if args.fp16:``)."""
        return any(not fact.one_of and self.switch_on_value(fact.key) == fact.holds for fact in self.assumptions(node))

    def under_precision_setting(self, node: ast.AST) -> bool:
        """Under any condition on a precision setting, either arm (``if args.fp16:``, ``if dtype ==
        torch.float16:``): code that implements a configurable precision on purpose."""
        return any(_PRECISION_SETTING.search(fact.key) for fact in self.assumptions(node))

    # ---------------------------------------------------------------- version fallbacks
    def in_version_fallback(self, node: ast.AST) -> bool:
        """In code kept for older torch releases: the arm of a version check taken on an old torch
        (``if TORCH_VERSION < (1, 10):``, the ``else`` of ``if _TORCH_GREATER_EQUAL_2_4:``, either arm
        when the direction is not clear), or an ``except ImportError/AttributeError`` after trying the
        torch.amp API."""
        for child, parent in ancestors(node, self.analysis, cross_scopes=True):
            if isinstance(parent, (ast.If, ast.IfExp, ast.While)) and child is not parent.test:
                arm = child in parent.body if isinstance(parent.body, list) else child is parent.body
                old_when = _old_torch_when(parent.test)
                if old_when == "either" or old_when is arm:
                    return True
            elif isinstance(parent, ast.ExceptHandler) and _is_api_fallback(parent, self.analysis):
                return True
        return False

    # ---------------------------------------------------------------- loops
    def enclosing_loop(self, node: ast.AST) -> ast.AST | None:
        for _, parent in ancestors(node, self.analysis):
            if isinstance(parent, Loop):
                return parent
        return None


def _always_exits(block: list) -> bool:
    return bool(block) and isinstance(block[-1], _EXITS)


_MAX_EXIT_PATHS = 8


def _not_on_a_nested_exit(statement: ast.If) -> frozenset[Fact]:
    """What the statements after ``statement`` know from the exits nested in it: after
    ``if a: ... if b: break``, not both ``a`` and ``b`` hold (imaginaire's ``if clip: ... if skip_grad:
    step(); update(); break``). An arm that always exits is left to the caller, which knows more (the
    opposite of its condition). Only ``if`` and ``with`` blocks are entered: a ``break`` inside a
    nested loop leaves that loop, not this block."""
    found: set[Fact] = set()
    for index, path in enumerate(_exit_paths(statement, depth=0, top=True)[:_MAX_EXIT_PATHS]):
        if not path or any(fact.one_of for fact in path):
            continue  # a compound condition on the way: "not all of them" is not expressible
        parts = tuple(sorted((fact.negated for fact in path), key=lambda fact: (fact.key, fact.holds)))
        # A key no consumer can read as a precision switch or setting: only consistent() uses this fact.
        key = f"<no exit {statement.lineno}:{statement.col_offset}:{index}>"
        found.add(Fact(key, True, parts) if len(parts) > 1 else parts[0])
    return frozenset(found)


def _captured_exactly(test: ast.AST, truth: bool) -> bool:
    """Whether ``facts_when(test, truth)`` says all that ``test`` being ``truth`` means, as plain facts: a
    conjunction of conditions it keeps whole (not ``a or (b and c)``, whose parts it drops, nor a
    compound "one of these" fact)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _captured_exactly(test.operand, not truth)
    if isinstance(test, ast.BoolOp):
        splits = isinstance(test.op, ast.And) and truth or isinstance(test.op, ast.Or) and not truth
        return splits and all(_captured_exactly(operand, truth) for operand in test.values)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and _is_none_or_bool(test.comparators[0]):
        op, constant = test.ops[0], test.comparators[0].value  # type: ignore[attr-defined]
        if not isinstance(op, (ast.Is, ast.Eq, ast.IsNot, ast.NotEq)):
            return False  # `x < None`: not a condition facts_when reads
        positive = isinstance(op, (ast.Is, ast.Eq))
        inner = truth != positive if constant is None else truth == (positive == constant)
        return _captured_exactly(test.left, inner)
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "bool" and len(test.args) == 1:
        return _captured_exactly(test.args[0], truth)
    return True


def _exit_paths(statement: ast.If, *, depth: int, top: bool) -> list[frozenset[Fact]]:
    """The conditions (from ``statement`` down) of each way into an arm that ends in an exit."""
    if depth > 4:
        return []
    paths: list[frozenset[Fact]] = []
    for arm, truth in ((statement.body, True), (statement.orelse, False)):
        if not arm or not _captured_exactly(statement.test, truth):
            continue  # "not all of" a condition known only in part would say more than is true
        arm_facts = facts_when(statement.test, truth)
        if _always_exits(arm):
            if not top:  # the top statement's own exiting arm is handled where it is indexed
                paths.append(arm_facts)
            continue
        pending = list(arm)
        while pending:
            inner = pending.pop()
            if isinstance(inner, ast.If):
                paths += [arm_facts | path for path in _exit_paths(inner, depth=depth + 1, top=False)]
            elif isinstance(inner, (ast.With, ast.AsyncWith)) and not any(
                isinstance(item.context_expr, ast.Call) and call_name(item.context_expr) == "suppress" for item in inner.items
            ):
                pending += inner.body  # (contextlib.suppress swallows a raise: not followed)
        if len(paths) > _MAX_EXIT_PATHS:
            break
    return paths


def _old_torch_when(test: ast.AST) -> bool | str | None:
    """Which truth value of ``test`` means an old torch: True, False, "either" (a version check of
    unclear direction), or None (not a version check)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _old_torch_when(test.operand)
        return (not inner) if isinstance(inner, bool) else inner
    if isinstance(test, ast.BoolOp):
        results = [_old_torch_when(operand) for operand in test.values]
        versions = [result for result in results if result is not None]
        if not versions:
            return None
        if "either" in versions:
            return "either"
        if isinstance(test.op, ast.And):
            # `old and x` true: old. `new1 and new2` false: one of them failed: old.
            if True in versions:
                return True
            return False if len(versions) == len(results) else None
        # `new or x` false: not new. `old1 or old2` true: old.
        if False in versions:
            return False
        return True if len(versions) == len(results) else None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op = test.left, test.ops[0]
        installed_left = _torch_version_text(left)
        if not (installed_left or _torch_version_text(test.comparators[0])):
            return None
        if isinstance(op, (ast.Lt, ast.LtE)):
            return installed_left  # installed < X: old when true
        if isinstance(op, (ast.Gt, ast.GtE)):
            return not installed_left
        return "either"
    text = _normalised(test).lower()
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id in ("hasattr", "getattr"):
        return False if "torch" in text else None  # hasattr(torch.amp, "GradScaler"): new when true
    if "torch" in text and ("version" in text or re.search(r"\d", text)):
        if _NEWER.search(text):
            return False
        if _OLDER.search(text):
            return True
        return "either"
    return None


def _torch_version_text(node: ast.AST) -> bool:
    """``torch.__version__``, ``TORCH_VERSION``, ``digit_version(torch.__version__)``."""
    text = _normalised(node).lower()
    return "torch" in text and "version" in text


def _is_api_fallback(handler: ast.ExceptHandler, analysis: ModuleAnalysis) -> bool:
    caught = handler.type
    names = []
    if caught is None:
        names = ["Exception"]
    else:
        for node in caught.elts if isinstance(caught, ast.Tuple) else [caught]:
            names.append(node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ""))
    if not _FALLBACK_EXCEPTIONS.intersection(names):
        return False
    try_node = analysis.parents.get(handler)
    body = getattr(try_node, "body", [])
    return any(_NEW_AMP_API.search(_normalised(statement)) for statement in body)
