"""Runs every rule over one module. The front ends (flake8, pylint, verify) call :func:`lint_tree`."""

from __future__ import annotations

import ast
import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from .analysis.exemptions import ExemptionPolicy
from .analysis.module_analysis import ModuleAnalysis
from .analysis.precision import BF16, module_precision
from .analysis.project_index import ProjectIndex
from .rules import ALL_RULES
from .rules.base import Finding, Rule

INTERNAL_ERROR_CODE = "AMP000"
PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class LintOptions:
    #: "fp16" or "bf16"; None infers the precision from the module's autocast dtypes and casts
    precision: str | None = None
    #: read the project's other modules for facts one step away (see analysis.project_index)
    project_index: bool = True
    #: run the preview rules too (``Rule.preview``); by default only the stable ones run
    preview: bool = False


def mentions_torch(lines: Iterable[str]) -> bool:
    """The cheap pre-check: a module whose text never says "torch" cannot hold an AMP hazard."""
    return any("torch" in line for line in lines)


def lint_tree(
    tree: ast.Module,
    options: LintOptions = LintOptions(),
    rules: Sequence[Rule] = ALL_RULES,
    path: str | None = None,
) -> list[Finding]:
    """All findings for one parsed module, sorted by position. ``path`` names the file (for the
    project index and the test-module exemption); without it the module is linted alone.

    A rule that fails on a file must not take the other rules' findings down with it: its failure
    becomes an AMP000 finding that says which rule broke, so it gets reported instead of hidden.
    """
    with analysed(tree, options, rules, path) as (_, findings):
        return [finding.detached() for finding in findings]


@contextmanager
def analysed(
    tree: ast.Module,
    options: LintOptions = LintOptions(),
    rules: Sequence[Rule] = ALL_RULES,
    path: str | None = None,
) -> Iterator[tuple[ModuleAnalysis, list[Finding]]]:
    """The module's analysis and its findings with their nodes, for as long as the block runs: what
    ``flake8-amp fix`` needs, as a fix edits the source at a finding's node and asks the analysis again.
    The analysis is released when the block ends (see :meth:`ModuleAnalysis.release`)."""
    with _collector_paused():
        analysis = _analysis(tree, options, path)
        try:
            yield analysis, _findings(analysis, options, rules)
        finally:
            analysis.release()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """CPython's cyclic collector paused while one module is analysed, and left as it was found.

    The analysis builds many small containers (per-node facts, bindings, memo tables) that live until the
    module is done, and each full collection walks all of them: on a module of 50,000 lines that turns a
    linear analysis into about 2.3x per doubling of the size (benchmarks/lint_scaling.py). Freed by
    reference counting when the analysis is released, they need no collector; anything cyclic is
    collected at the next collection after this. (mypy raises its collection threshold for the same
    reason.) The host process (flake8, pylint, an editor) gets its collector back as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _analysis(tree: ast.Module, options: LintOptions, path: str | None) -> ModuleAnalysis:
    project = ProjectIndex.for_file(path) if options.project_index and path else None
    return ModuleAnalysis(tree, precision=options.precision, path=path, project=project)


def _findings(analysis: ModuleAnalysis, options: LintOptions, rules: Sequence[Rule]) -> list[Finding]:
    findings: list[Finding] = []
    policy = None
    for rule in rules:
        if rule.preview and not options.preview:
            continue
        try:
            if rule.quiet_in_bf16 and analysis.derived(module_precision) == BF16:
                continue
            for finding in rule.check(analysis):
                policy = policy or analysis.derived(ExemptionPolicy)
                if finding.node is None or policy.exemption(finding.node, rule) is None:
                    findings.append(finding)
        except Exception as exc:  # noqa: BLE001 - reported as a finding, see docstring
            findings.append(
                Finding(
                    line=1,
                    col=0,
                    code=INTERNAL_ERROR_CODE,
                    what=f"flake8-amp rule {rule.code} failed on this file ({type(exc).__name__}: {exc})",
                    fix="please report it with this file; the other rules ran",
                )
            )
    findings.sort(key=lambda f: (f.line, f.col, f.code))
    return findings


def lint_source(source: str, options: LintOptions = LintOptions(), path: str | None = None) -> list[Finding]:
    """Parse and lint source text (for tests, the CLI and verify; flake8 passes its own tree)."""
    if not mentions_torch(source.splitlines()):
        return []
    return lint_tree(ast.parse(source), options, path=path)
