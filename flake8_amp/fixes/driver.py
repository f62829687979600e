"""One module's fixes: lint, ask each finding's rule for its fix, apply the fixes that do not conflict,
lint again, until nothing is left to fix.

Passes make the fixes of one module consistent with each other: an import rewritten in one pass and the
finding a rewritten call raises next (``log(softmax(x))`` becomes ``log_softmax(x)``, which may need a
``dtype=``) are seen by the next lint. Edits of two findings that touch the same text wait for the next
pass, where the first fix is part of the source. After every pass the text must parse; if a fix ever
produced code that does not, the module is left exactly as it was and the outcome says so.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..engine import LintOptions, analysed, mentions_torch
from ..rules import ALL_RULES
from ..rules.base import Finding, Rule
from .edits import Edit, Fix, FixSafety, apply_edits
from .source import FixableModule
from .torch_floor import ASSUMED, TorchFloor

#: a module whose fixes keep producing new fixable findings stops after this many passes
MAX_PASSES = 8

#: which of a module's findings to fix: (findings, the module's current text) -> the ones to fix
#: (``fix`` keeps those that flake8's select, ignore, per-file-ignores and ``# noqa`` would report)
FindingFilter = Callable[[list[Finding], str], list[Finding]]


def every_finding(findings: list[Finding], text: str) -> list[Finding]:
    return findings


@dataclass
class FixOutcome:
    """What fixing one module did."""

    #: the fixed text (the original one when nothing was fixed, or when fixing failed)
    text: str
    #: findings fixed, by code
    fixed: Counter = field(default_factory=Counter)
    #: the findings left after fixing (those the filter keeps), nodes dropped
    remaining: list[Finding] = field(default_factory=list)
    #: how many of them an unsafe fix would fix (with ``unsafe=True``)
    unsafe_fixable: int = 0
    #: why the module was left unchanged although fixes were found (a fix produced invalid code)
    error: str | None = None
    #: a fix's spelling depended on a torch floor that was assumed, not declared
    floor_assumed: bool = False
    #: failures of rules' fixes, one line each (the other fixes applied)
    fix_failures: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return sum(self.fixed.values()) > 0


def fix_source(
    text: str,
    *,
    path: str | None = None,
    options: LintOptions = LintOptions(),
    wanted: FindingFilter = every_finding,
    unsafe: bool = False,
    floor: TorchFloor = TorchFloor(ASSUMED),
    rules: Sequence[Rule] = ALL_RULES,
) -> FixOutcome:
    """Fix ``text`` (the module at ``path``, for the project index and test-code exemptions). Raises
    SyntaxError (or ValueError for null bytes) when ``text`` itself does not parse."""
    outcome = FixOutcome(text=text)
    if not mentions_torch(text.splitlines()):
        return outcome
    tree = ast.parse(text)
    current = text
    by_code = {rule.code: rule for rule in rules}
    for pass_number in range(MAX_PASSES + 1):
        with analysed(tree, options, rules, path) as (analysis, findings):
            findings = wanted(findings, current)
            module = FixableModule(current, analysis, floor, findings)
            last = pass_number == MAX_PASSES
            edits, fixed = ([], Counter()) if last else _chosen_fixes(module, by_code, unsafe, outcome)
            if not edits:
                outcome.remaining = [finding.detached() for finding in findings]
                outcome.unsafe_fixable = 0 if unsafe else _unsafe_fixable(module, by_code)
            outcome.floor_assumed |= module.floor_consulted and floor.assumed
        if not edits:
            break
        fixed_text = apply_edits(current, edits)
        try:
            tree = ast.parse(fixed_text)
        except (SyntaxError, ValueError) as error:
            line = getattr(error, "lineno", None)
            return FixOutcome(
                text=text,
                error=f"the fixes for {', '.join(sorted(fixed))} produced code that does not parse"
                + (f" (line {line})" if line else "")
                + ": left unchanged; please report it with this file",
                fix_failures=outcome.fix_failures,
            )
        current = fixed_text
        outcome.fixed.update(fixed)
    outcome.text = current
    return outcome


def _chosen_fixes(
    module: FixableModule, by_code: dict[str, Rule], unsafe: bool, outcome: FixOutcome
) -> tuple[list[Edit], Counter]:
    """The edits of every finding whose fix is allowed and touches nothing another chosen fix touches
    (the first in source order wins; the others wait for the next pass), and the codes fixed."""
    chosen: list[Edit] = []
    fixed: Counter = Counter()
    for finding in module.findings:
        fix = _fix_for(finding, by_code.get(finding.code), module, outcome)
        if fix is None or (fix.safety is FixSafety.UNSAFE and not unsafe):
            continue
        if any(edit.conflicts_with(other) for edit in fix.edits for other in chosen):
            continue
        chosen.extend(edit for edit in fix.edits if edit not in chosen)
        fixed[finding.code] += 1
    return chosen, fixed


def _fix_for(finding: Finding, rule: Rule | None, module: FixableModule, outcome: FixOutcome | None) -> Fix | None:
    """The rule's fix for the finding; a rule whose fix fails is reported in ``outcome`` (when given), and
    the finding left unfixed."""
    if rule is None or rule.fix_safety is None or finding.node is None:
        return None
    try:
        return rule.rewrite(finding, module)
    except Exception as exc:  # noqa: BLE001 - one rule's broken fix must not stop the others
        if outcome is not None:
            outcome.fix_failures.append(
                f"the fix of {finding.code} at line {finding.line} failed ({type(exc).__name__}: {exc}); "
                "please report it with this file"
            )
        return None


def _unsafe_fixable(module: FixableModule, by_code: dict[str, Rule]) -> int:
    """How many of the findings left have an unsafe fix (what ``--unsafe-fixes`` would add)."""
    fixes = [_fix_for(finding, by_code.get(finding.code), module, None) for finding in module.findings]
    return sum(1 for fix in fixes if fix is not None and fix.safety is FixSafety.UNSAFE)
