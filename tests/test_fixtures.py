"""Every fixture file raises exactly the findings its comments expect (for the rules it is about)."""

from __future__ import annotations

import pytest

from expectations import FIXTURES, actual_findings, expected_findings, fixture_codes

FIXTURE_FILES = sorted(FIXTURES.glob("amp*.py"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_raises_exactly_the_expected_findings(path):
    source = path.read_text()
    codes = fixture_codes(path)
    expected = expected_findings(source, codes)
    actual = actual_findings(source, codes)
    assert expected, f"{path.name} expects no finding at all: it tests nothing"
    assert sorted(actual - expected) == [], "unexpected findings (line, code)"
    assert sorted(expected - actual) == [], "missing findings (line, code)"


def test_every_rule_has_a_fixture():
    from flake8_amp.rules import ALL_RULES

    covered = set().union(*(fixture_codes(p) for p in FIXTURE_FILES))
    assert {rule.code for rule in ALL_RULES} <= covered
