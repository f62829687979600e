"""AMP013: the deprecated torch.cuda.amp / torch.cpu.amp spellings."""

from __future__ import annotations

import ast
import os
from typing import TYPE_CHECKING, Iterator

from ..analysis.bindings import Bindings
from ..analysis.control_flow import ancestors
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..fixes.edits import Edit, Fix, FixSafety, apply_edits
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ast_grep_py import SgNode

    from ..fixes.source import FixableModule

# Deprecated in torch 2.4 (FutureWarning), still so in 2.13: qualified name -> replacement.
DEPRECATED_AMP_API = {
    "torch.cuda.amp.autocast": 'torch.amp.autocast("cuda", ...)',
    "torch.cuda.amp.GradScaler": 'torch.amp.GradScaler("cuda", ...)',
    "torch.cuda.amp.custom_fwd": 'torch.amp.custom_fwd(device_type="cuda", ...)',
    "torch.cuda.amp.custom_bwd": 'torch.amp.custom_bwd(device_type="cuda")',
    "torch.cpu.amp.autocast": 'torch.amp.autocast("cpu", ...)',
    "torch.cpu.amp.GradScaler": 'torch.amp.GradScaler("cpu", ...)',
}
_SUBMODULES = {"torch.cuda.amp.autocast_mode.": "torch.cuda.amp.", "torch.cuda.amp.grad_scaler.": "torch.cuda.amp.",
               "torch.cpu.amp.autocast_mode.": "torch.cpu.amp.", "torch.cpu.amp.grad_scaler.": "torch.cpu.amp."}


_DEPRECATED_NAMES = frozenset(name.rpartition(".")[2] for name in DEPRECATED_AMP_API)


def deprecated_name(qualified: str | None) -> str | None:
    if qualified is None:
        return None
    for private, public in _SUBMODULES.items():
        if qualified.startswith(private):
            qualified = public + qualified[len(private) :]
    return qualified if qualified in DEPRECATED_AMP_API else None


class DeprecatedAmpApi(Rule):
    code = "AMP013"
    name = "deprecated-amp-api"
    severity = Severity.LOW
    summary = "Deprecated torch.cuda.amp / torch.cpu.amp autocast, GradScaler, custom_fwd, custom_bwd"
    why = "deprecated since torch 2.4 (FutureWarning on every use); torch.amp takes the device type explicitly"
    fix = "use the torch.amp spelling with its device type"
    # The API itself: tests break on it as well, and it is no low-precision hazard.
    exempt_in_tests = False
    low_precision_hazard = False

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "rewrites each deprecated spelling, imports included, to the torch.amp one with the device type the "
        "old one implied: `torch.cuda.amp.autocast()` becomes `torch.amp.autocast(\"cuda\")` (its positional "
        "`enabled`, `dtype` and `cache_enabled` passed by name), `GradScaler(...)` becomes "
        "`GradScaler(\"cuda\", ...)`, `@custom_fwd` becomes `@custom_fwd(device_type=\"cuda\")`, and "
        "`from torch.cuda.amp import autocast` becomes `from torch.amp import autocast`."
    )
    fix_safety_reason = (
        "The new spelling is the object the deprecated one forwards to, with the device type it implied, "
        "on every torch the project supports. That is read from its declared requirements (or "
        "`--min-torch`; 2.4 where none is declared). Where the oldest supported torch lacks the new spelling, "
        "a call is rewritten to a version-guarded form that AMP013 accepts as a fallback "
        "(`torch.amp.GradScaler(\"cuda\") if hasattr(torch, \"amp\") and hasattr(torch.amp, \"GradScaler\") "
        "else torch.cuda.amp.GradScaler()`), and an import, a decorator or an annotation gets an unsafe fix. "
        "An import that re-exports the name (in an `__init__.py`, listed in `__all__`, or imported and not "
        "used here) also gets an unsafe fix: the modules importing it from there call it without the device "
        "type the new spelling needs. "
        "Not fixed: a name used other than by calling it, decorating with it or in a type position "
        "(`make = torch.cuda.amp.autocast`), whose callers would need the device type too."
    )
    fix_min_torch = (
        "`torch.autocast` 1.10; `torch.amp.GradScaler` 2.3; `torch.amp.autocast`, `torch.amp.custom_fwd` and "
        "`torch.amp.custom_bwd` 2.4 (below 2.4, autocast is rewritten to `torch.autocast`)"
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        return rewrite_deprecated(finding, module)

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the deprecation warning torch issues at the call; for an import (reported once, not at its uses)
        # the warning its name drew wherever the script called it
        if evidence.warnings:
            return Verdict(Outcome.CONFIRMED, f"{evidence.steps_text()}: {evidence.warnings[0]}")
        imported = _imported_here(evidence.path, evidence.line)
        for path, line, text in run.deprecations:
            if any(f"`{name}(" in text for name in imported):
                where = f"{os.path.basename(path)}:{line}" if path else "a library"
                return Verdict(Outcome.CONFIRMED, f"imported here ({evidence.steps_text()}), called at {where}: {text}")
        if imported:
            names = ", ".join(sorted(imported))
            return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: imported, but {names} issued no "
                                                 "deprecation warning in the run (never called)")
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: no deprecation warning was issued here "
                                             "(a reference that is not a call, such as isinstance, issues none; "
                                             "nor does a torch before 2.4)")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        # `from torch.cuda.amp import autocast` is reported at the import, once per name; its uses are
        # not reported again. Spelled-out references (`torch.cuda.amp.autocast(...)`) at each use.
        for node in analysis.nodes(ast.ImportFrom):
            if node.level or not node.module:
                continue
            for alias in node.names:
                qualified = deprecated_name(f"{node.module}.{alias.name}")
                if qualified:
                    yield self._report(alias if hasattr(alias, "lineno") else node, qualified, imported=True)
        for node in analysis.nodes(ast.Attribute):
            if node.attr not in _DEPRECATED_NAMES:
                continue
            qualified = deprecated_name(analysis.resolve(node))
            if qualified and not isinstance(analysis.parents.get(node), ast.Attribute):
                if not _in_local_annotation(node, analysis):
                    yield self._report(node, qualified, imported=False)

    def _report(self, node: ast.AST, qualified: str, imported: bool) -> Finding:
        replacement = DEPRECATED_AMP_API[qualified]
        where = "imported" if imported else "used"
        return self.finding(node, f"deprecated {qualified} {where}", fix=f"use {replacement}")


def _in_local_annotation(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    """Inside the annotation of a variable annotated in a function body (``scaler: Optional[amp.GradScaler]
    = None``), which Python never evaluates (PEP 526): nothing there runs, now or once the API is gone."""
    statement = next(((child, parent) for child, parent in ancestors(node, analysis) if isinstance(parent, ast.stmt)),
                     None)
    if statement is None or not isinstance(statement[1], ast.AnnAssign) or statement[0] is not statement[1].annotation:
        return False
    scope = None
    for _, scope in ancestors(statement[1], analysis):
        pass
    return isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef))


def _imported_here(path: str, line: int) -> set[str]:
    """The deprecated names that ``from torch.cuda.amp import ...`` imports at that line of the file."""
    try:
        with open(path, "rb") as source:
            tree = ast.parse(source.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if getattr(alias, "lineno", node.lineno) == line:
                    qualified = deprecated_name(f"{node.module}.{alias.name}")
                    if qualified:
                        names.add(qualified)
    return names


# ---------------------------------------------------------------------------------------------- the fix
# What replaces each deprecated name: the device type it implied, and its name in torch.amp.
_DEVICE_AND_NAME = {name: (name.split(".")[1], name.rpartition(".")[2]) for name in DEPRECATED_AMP_API}
#: the torch release that brought each deprecated spelling: code that uses it runs on that or later
_DEPRECATED_SINCE = {
    "torch.cuda.amp.autocast": (1, 6),
    "torch.cuda.amp.GradScaler": (1, 6),
    "torch.cuda.amp.custom_fwd": (1, 6),
    "torch.cuda.amp.custom_bwd": (1, 6),
    "torch.cpu.amp.autocast": (1, 10),
    "torch.cpu.amp.GradScaler": (2, 3),
}
#: the torch release that has each new spelling
_NEW_SINCE = {
    "torch.autocast": (1, 10),
    "torch.amp.autocast": (2, 4),
    "torch.amp.GradScaler": (2, 3),
    "torch.amp.custom_fwd": (2, 4),
    "torch.amp.custom_bwd": (2, 4),
}
#: the deprecated autocast's positional parameters, which torch.autocast takes after device_type, by name
_AUTOCAST_POSITIONAL = ("enabled", "dtype", "cache_enabled")
_DEPRECATED_MODULES = frozenset({"torch.cuda.amp", "torch.cpu.amp"})

# How a reference to a deprecated name is used, which decides what its rewrite adds.
_CALL, _DECORATOR, _TYPE, _OTHER = "call", "decorator", "type", "other"
_TYPE_CHECKS = ("isinstance", "issubclass")


def rewrite_deprecated(finding: Finding, module: "FixableModule") -> Fix | None:
    """The fix of one AMP013 finding: an import (with every use of the names it binds), a reference through
    a module alias (``amp.GradScaler()`` after ``from torch.cuda import amp``), or a spelled-out one."""
    node = finding.node
    analysis = module.analysis
    statement = node if isinstance(node, ast.ImportFrom) else analysis.parents.get(node)
    if isinstance(statement, ast.ImportFrom):
        return _import_fix(statement, module)
    if not isinstance(node, ast.Attribute):
        return None
    qualified = deprecated_name(analysis.resolve(node))
    if qualified is None:
        return None
    root = node.value
    while isinstance(root, ast.Attribute):
        root = root.value
    if isinstance(root, ast.Name) and analysis.resolve(root) == "torch":
        return _use_fix(node, qualified, module, root.id)  # torch.cuda.amp.GradScaler: `torch` is in scope here
    if isinstance(node.value, ast.Name) and analysis.resolve(node.value) in _DEPRECATED_MODULES:
        return _best(_alias_fix(node.value.id, module), _use_fix(node, qualified, module, module.torch_name()))
    return _use_fix(node, qualified, module, module.torch_name())


def _best(*fixes: Fix | None) -> Fix | None:
    """The first safe fix, else the first unsafe one."""
    found = [fix for fix in fixes if fix is not None]
    return next((fix for fix in found if fix.safety is FixSafety.SAFE), found[0] if found else None)


def _floor(qualified: str, module: "FixableModule") -> tuple[int, int]:
    """The oldest torch the code runs on: the project's floor, or the release that brought the deprecated
    spelling it already uses, whichever is later."""
    return max(module.floor.version, _DEPRECATED_SINCE[qualified])


def _new_name(qualified: str, module: "FixableModule", package: str = "torch.amp") -> tuple[str, FixSafety]:
    """The replacement's qualified name (under ``package``: torch.amp, or torch for autocast below 2.4),
    and whether every supported torch has it."""
    device, name = _DEVICE_AND_NAME[qualified]
    floor = _floor(qualified, module)
    if name == "autocast" and package == "torch.amp" and floor < _NEW_SINCE["torch.amp.autocast"]:
        package = "torch"
    new = f"{package}.{name}"
    needs = _NEW_SINCE.get(new, _NEW_SINCE[f"torch.amp.{name}"])
    if needs > _DEPRECATED_SINCE[qualified]:
        module.floor_consulted = True
    return new, FixSafety.SAFE if floor >= needs else FixSafety.UNSAFE


def _use_kind(node: ast.AST, analysis: ModuleAnalysis) -> str:
    parents = analysis.parents
    parent = parents.get(node)
    if isinstance(parent, ast.Call) and parent.func is node:
        return _CALL
    if _decorates(node, analysis):
        return _DECORATOR
    child = node
    while isinstance(parent, (ast.Subscript, ast.Tuple, ast.List, ast.BinOp)):
        child, parent = parent, parents.get(parent)
    if (
        isinstance(parent, ast.arg) and parent.annotation is child
        or isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and parent.returns is child
        or isinstance(parent, ast.AnnAssign) and parent.annotation is child
        or isinstance(parent, ast.Call) and call_name(parent) in _TYPE_CHECKS and child in parent.args[1:]
    ):
        return _TYPE
    return _OTHER


def _use_edits(reference: ast.AST, qualified: str, module: "FixableModule", callee: str | None) -> list[Edit] | None:
    """The edits that make one use of a deprecated name a use of its replacement: the reference itself
    replaced by ``callee`` (None: it keeps its text, as an import now binds the replacement), and what its
    use needs: the device type, autocast's positional arguments by name."""
    device, name = _DEVICE_AND_NAME[qualified]
    kind = _use_kind(reference, module.analysis)
    edits = [module.replace(reference, callee)] if callee is not None else []
    if kind == _CALL:
        call = module.analysis.parents[reference]
        if name in ("custom_fwd", "custom_bwd"):
            added = module.insert_argument(call, f'device_type="{device}"', keyword=True)
            return None if added is None else [*edits, added]
        added = module.insert_argument(call, f'"{device}"')
        if added is None:
            return None
        if name == "autocast" and call.args:
            if len(call.args) > len(_AUTOCAST_POSITIONAL) or any(isinstance(arg, ast.Starred) for arg in call.args):
                return None
            added = Edit(added.start, added.end, added.replacement + f"{_AUTOCAST_POSITIONAL[0]}=")
            edits += [Edit(module.start(arg), module.start(arg), f"{parameter}=")
                      for arg, parameter in zip(call.args[1:], _AUTOCAST_POSITIONAL[1:])]
        return [*edits, added]
    if kind == _DECORATOR and name in ("custom_fwd", "custom_bwd"):
        end = module.end(reference)
        return [*edits, Edit(end, end, f'(device_type="{device}")')]
    if kind == _TYPE and name in ("GradScaler", "autocast"):
        return edits
    return None  # `make = torch.cuda.amp.autocast`: its callers would need the device type too


def _use_fix(reference: ast.Attribute, qualified: str, module: "FixableModule", torch: str | None) -> Fix | None:
    """One spelled-out use (``torch.cuda.amp.GradScaler()``, ``amp.autocast()``) rewritten where it stands;
    a call the oldest supported torch cannot make in the new spelling becomes a version-guarded one."""
    if torch is None:
        return None
    new, safety = _new_name(qualified, module)
    callee = torch + new[len("torch") :]
    edits = _use_edits(reference, qualified, module, callee)
    if edits is None:
        return None
    if safety is FixSafety.SAFE or _use_kind(reference, module.analysis) != _CALL:
        return Fix(tuple(edits), safety)
    call = module.analysis.parents[reference]
    if _DEVICE_AND_NAME[qualified][1] not in ("autocast", "GradScaler") or _decorates(call, module.analysis):
        return Fix(tuple(edits), safety)  # a conditional expression decorates only from Python 3.9 on
    return Fix((_guarded(call, edits, new, torch, module),), FixSafety.SAFE)


def _decorates(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    parent = analysis.parents.get(node)
    return isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node in parent.decorator_list


def _guarded(call: ast.Call, edits: list[Edit], new: str, torch: str, module: "FixableModule") -> Edit:
    """``<new call> if <torch has it> else <the call as written>``: the shape AMP013 reads as a fallback."""
    start = module.start(call)
    new_call = apply_edits(module.source(call), [Edit(e.start - start, e.end - start, e.replacement) for e in edits])
    if new == "torch.autocast":
        guard = f'hasattr({torch}, "autocast")'
    else:
        guard = f'hasattr({torch}, "amp") and hasattr({torch}.amp, "{new.rpartition(".")[2]}")'
    text = f"{new_call} if {guard} else {module.source(call)}"
    parent = module.analysis.parents.get(call)
    whole_value = isinstance(parent, (ast.Assign, ast.AnnAssign, ast.Return)) and parent.value is call
    return module.replace(call, text if whole_value else f"({text})")


def _wanted_at(node: ast.AST, module: "FixableModule") -> bool:
    """An AMP013 finding at ``node`` is being fixed (not ignored, not ``# noqa``)."""
    position = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    return any(f.code == "AMP013" and (f.line, f.col) == position for f in module.findings)


def _import_fix(statement: ast.ImportFrom, module: "FixableModule") -> Fix | None:
    """``from torch.cuda.amp import GradScaler, autocast``: the import made one of torch.amp (of torch for
    autocast below 2.4), and every use of each name it binds given what the new spelling needs. Names that
    stay (another name of the module, or one whose finding is not being fixed: ``# noqa``) keep the
    statement; the others move to an import of their own on the line after it."""
    analysis = module.analysis
    moved: dict[str, list[ast.alias]] = {}  # new package -> the aliases imported from it
    kept: list[ast.alias] = []
    edits: list[Edit] = []
    safety = FixSafety.SAFE
    unused: list[str] = []  # names moved that this module does not use (or lists in __all__)
    for alias in statement.names:
        qualified = deprecated_name(f"{statement.module}.{alias.name}")
        if qualified is None or not _wanted_at(alias if hasattr(alias, "lineno") else statement, module):
            kept.append(alias)
            continue
        new, alias_safety = _new_name(qualified, module)
        safety = FixSafety.UNSAFE if alias_safety is FixSafety.UNSAFE else safety
        moved.setdefault(new.rpartition(".")[0], []).append(alias)
        local = alias.asname or alias.name
        used = False
        for use in _loads_of(local, analysis):
            if deprecated_name(analysis.resolve(use)) != qualified or _bound_elsewhere(use, statement, analysis):
                continue
            use_edits = _use_edits(use, qualified, module, None)
            if use_edits is None:
                return None
            edits += use_edits
            used = True
        if qualified != "torch.cuda.amp.GradScaler" and (not used or local in _exported_names(analysis)):
            unused.append(local)
    if unused and (_reexports(unused, analysis) or not any(
        not _bound_elsewhere(use, statement, analysis)
        for alias in statement.names
        for use in _loads_of(alias.asname or alias.name, analysis)
    )):
        # A compatibility module's import, an ``__init__`` or ``__all__`` re-export: the modules importing the
        # name from here call it without the device type the new spelling needs (a cpu GradScaler() would
        # become a cuda one). A name this module does not use beside others it does is a left-over import.
        safety = FixSafety.UNSAFE
    if not moved:
        return None
    found = module.cst_node(statement, "import_from_statement")
    if found is None:
        return None
    name = found.field("module_name")
    items = [child for child in found.children() if child.kind() in ("dotted_name", "aliased_import")][1:]
    if not kept:  # the statement imports from the first new package; the other packages' names move
        package, staying = next(iter(moved.items()))
        edits.append(Edit(*module.cst_span(name), package))
        del moved[package]
        kept = staying
    if moved:
        leaving = [item for item, alias in zip(items, statement.names) if alias not in kept]
        removal = _without_items(found, items, leaving, module)
        indentation = module.indentation(statement)
        if removal is None or indentation is None:
            return None
        line_end = module.line_end(module.end(statement))
        start = module.newline + indentation
        added = "".join(f"{start}from {package} import {_names(aliases)}" for package, aliases in moved.items())
        edits += [*removal, Edit(line_end, line_end, added)]
    return Fix(tuple(edits), safety)


def _without_items(
    statement: "SgNode", items: list["SgNode"], leaving: list["SgNode"], module: "FixableModule"
) -> list[Edit] | None:
    """Edits that take ``leaving`` out of an import's names: the lines of those that stand on a line of their
    own (with their comma and comment), or, in a statement without comments, the names written again."""
    spans = [module.cst_span(item) for item in leaving]
    lines = []
    for start, end in spans:
        line_start, line_end = module.line_start(start), module.line_end(end)
        after = module.text[end:line_end].strip()
        alone = not module.text[line_start:start].strip()
        continued = module.text[:line_start].rstrip("\r\n").endswith("\\")  # `import a, \` + this line
        if continued or not alone or not (after in ("", ",") or after.lstrip(",").lstrip().startswith("#")):
            break
        lines.append(Edit(line_start, line_end + len(module.newline), ""))
    else:
        return lines
    if any(child.kind() == "comment" for child in statement.children()):
        return None
    staying = [item.text() for item in items if item not in leaving]
    return [Edit(module.cst_span(items[0])[0], module.cst_span(items[-1])[1], ", ".join(staying))]


def _reexports(names: list[str], analysis: ModuleAnalysis) -> bool:
    """Some of ``names`` are a package's (its ``__init__.py`` imports them) or listed in ``__all__``."""
    return os.path.basename(analysis.path or "") == "__init__.py" or bool(set(names) & _exported_names(analysis))


def _exported_names(analysis: ModuleAnalysis) -> set[str]:
    """The names a module-level ``__all__`` lists."""
    names: set[str] = set()
    for statement in analysis.tree.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        value = getattr(statement, "value", None)
        listed = isinstance(value, (ast.List, ast.Tuple))
        if listed and any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            names.update(e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return names


def _bound_elsewhere(use: ast.Name, statement: ast.ImportFrom, analysis: ModuleAnalysis) -> bool:
    """``use`` reads the name another statement binds, not ``statement`` (a function's own import of
    it, kept by ``# noqa``): that statement's fix, if any, rewrites it."""
    reaching = analysis.derived(Bindings).reaching(use)
    return bool(reaching) and all(binding.statement is not statement for binding in reaching)


def _loads_of(local: str, analysis: ModuleAnalysis) -> list[ast.Name]:
    return [use for use in analysis.nodes(ast.Name) if use.id == local and isinstance(use.ctx, ast.Load)]


def _names(aliases: list[ast.alias]) -> str:
    return ", ".join(alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in aliases)


def _alias_fix(local: str, module: "FixableModule") -> Fix | None:
    """``from torch.cuda import amp`` (or ``import torch.cuda.amp as amp``) whose every use is a deprecated
    name being fixed: the import made one of torch.amp, and each use given what the new spelling needs."""
    analysis = module.analysis
    binding = next(
        (
            statement
            for statement in analysis.tree.body
            if isinstance(statement, (ast.Import, ast.ImportFrom))
            and len(statement.names) == 1
            and (statement.names[0].asname or statement.names[0].name) == local
        ),
        None,
    )
    if binding is None:
        return None
    alias = binding.names[0]
    if isinstance(binding, ast.Import):
        old, replacement = alias.name, f"import torch.amp as {local}"
    elif binding.module in ("torch.cuda", "torch.cpu") and alias.name == "amp" and not binding.level:
        old = f"{binding.module}.amp"
        replacement = "from torch import amp" + (f" as {alias.asname}" if alias.asname else "")
    else:
        return None
    if old not in _DEPRECATED_MODULES:
        return None
    edits = [module.replace(binding, replacement)]
    safety = FixSafety.SAFE
    for use in _loads_of(local, analysis):
        reference = analysis.parents.get(use)
        qualified = deprecated_name(analysis.resolve(reference)) if isinstance(reference, ast.Attribute) else None
        if qualified is None or not _wanted_at(reference, module):
            return None  # another use of the alias: rewritten use by use instead
        new, use_safety = _new_name(qualified, module, package="torch.amp")
        if not new.startswith("torch.amp."):
            new, use_safety = f"torch.amp.{_DEVICE_AND_NAME[qualified][1]}", FixSafety.UNSAFE
        safety = FixSafety.UNSAFE if use_safety is FixSafety.UNSAFE else safety
        use_edits = _use_edits(reference, qualified, module, None)
        if use_edits is None:
            return None
        edits += use_edits
    return Fix(tuple(edits), safety)
