"""AMP013: the deprecated torch.cuda.amp / torch.cpu.amp spellings."""

from __future__ import annotations

import ast
import os
from typing import Iterator

from ..analysis.control_flow import ancestors
from ..analysis.module_analysis import ModuleAnalysis
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict
from .base import Finding, Rule, Severity

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
