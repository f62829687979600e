"""Fixture files state their expected findings in comments, flake8-bugbear style.

A line that must raise a finding ends with ``# expect: AMP003`` (several: ``# expect: AMP001, AMP005``).
Every other line must raise nothing of the codes the fixture is about.
"""

from __future__ import annotations

import re
from pathlib import Path

from flake8_amp.engine import LintOptions, lint_source

EXPECT = re.compile(r"#\s*expect:\s*(AMP\d{3}(?:\s*,\s*AMP\d{3})*)")
FIXTURES = Path(__file__).parent / "fixtures"


def expected_findings(source: str, codes: set[str]) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(source.splitlines(), start=1):
        match = EXPECT.search(line)
        if match:
            for code in re.split(r"\s*,\s*", match.group(1)):
                if code in codes:
                    expected.add((number, code))
    return expected


def actual_findings(source: str, codes: set[str], options: LintOptions = LintOptions()) -> set[tuple[int, str]]:
    return {(f.line, f.code) for f in lint_source(source, options) if f.code in codes}


def fixture_codes(path: Path) -> set[str]:
    """``amp003_loss_outside_autocast.py`` is about AMP003."""
    return {match.upper() for match in re.findall(r"amp\d{3}", path.stem)}
