"""Runs every rule over one module. The front ends (flake8, pylint, verify) call :func:`lint_tree`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterable, Sequence

from .analysis.module_analysis import ModuleAnalysis
from .rules import ALL_RULES
from .rules.base import Finding, Rule

INTERNAL_ERROR_CODE = "AMP000"
PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class LintOptions:
    #: "fp16" or "bf16"; None infers the precision from the module's autocast dtypes and casts
    precision: str | None = None


def mentions_torch(lines: Iterable[str]) -> bool:
    """The cheap pre-check: a module whose text never says "torch" cannot hold an AMP hazard."""
    return any("torch" in line for line in lines)


def lint_tree(
    tree: ast.Module, options: LintOptions = LintOptions(), rules: Sequence[Rule] = ALL_RULES
) -> list[Finding]:
    """All findings for one parsed module, sorted by position.

    A rule that fails on a file must not take the other rules' findings down with it: its failure
    becomes an AMP000 finding that says which rule broke, so it gets reported instead of hidden.
    """
    analysis = ModuleAnalysis(tree, precision=options.precision)
    findings: list[Finding] = []
    for rule in rules:
        try:
            findings.extend(rule.check(analysis))
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
    analysis.release()
    findings.sort(key=lambda f: (f.line, f.col, f.code))
    return findings


def lint_source(source: str, options: LintOptions = LintOptions()) -> list[Finding]:
    """Parse and lint source text (for tests, the CLI and verify; flake8 passes its own tree)."""
    if not mentions_torch(source.splitlines()):
        return []
    return lint_tree(ast.parse(source), options)
