"""Every fixture file raises exactly the findings its comments expect (for the rules it is about)."""

from __future__ import annotations

import pytest

from flake8_amp.engine import lint_source

from expectations import FIXTURES, actual_findings, expected_findings, fixture_codes

FIXTURE_FILES = sorted(FIXTURES.glob("amp*.py"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_raises_exactly_the_expected_findings(path):
    source = path.read_text()
    codes = fixture_codes(path)
    expected = expected_findings(source, codes)
    actual = actual_findings(source, codes)
    assert sorted(actual - expected) == [], "unexpected findings (line, code)"
    assert sorted(expected - actual) == [], "missing findings (line, code)"


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_no_finding_is_reported_twice(path):
    # On Python 3.9, where import aliases have no position, two names of one import share a position
    # but not a message: only the same message at the same place is a duplicate.
    findings = [(f.line, f.col, f.message) for f in lint_source(path.read_text())]
    assert sorted(f for f in set(findings) if findings.count(f) > 1) == []


def test_every_rule_has_fixtures_that_expect_findings():
    from flake8_amp.rules import ALL_RULES

    expected_codes = {
        code for path in FIXTURE_FILES for _, code in expected_findings(path.read_text(), fixture_codes(path))
    }
    missing = {rule.code for rule in ALL_RULES} - expected_codes
    assert not missing, f"rules with no fixture line that must be flagged: {sorted(missing)}"
