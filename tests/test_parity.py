"""flake8 and pylint report the same findings: both are thin adapters over the same rule modules."""

from __future__ import annotations

import pytest

from expectations import expected_findings, fixture_codes
from flake8_amp.rules import ALL_RULES
from linter_runs import FIXTURE_FILES, flake8_findings, pylint_findings, run_flake8, run_pylint

# The float16-range rules, quiet in bfloat16 code.
FP16_RANGE_RULES = {"AMP007", "AMP008", "AMP016"}


def both_linters(*args: str) -> tuple[set, set]:
    """One flake8 run and one pylint run over every fixture. ``--select AMP`` and ``--enable=amp`` both
    name the whole family, so off-by-default rules are on in both."""
    flake8 = run_flake8(FIXTURE_FILES, *args)
    assert flake8.stderr == ""
    return flake8_findings(flake8.stdout), pylint_findings(run_pylint(FIXTURE_FILES, *args))


@pytest.fixture(scope="module")
def default_run() -> tuple[set, set]:
    return both_linters()


def test_flake8_and_pylint_report_the_same_findings_on_every_fixture(default_run):
    flake8, pylint = default_run
    assert sorted(flake8 - pylint) == [], "flake8 only"
    assert sorted(pylint - flake8) == [], "pylint only"
    missing = {rule.code for rule in ALL_RULES} - {code for *_, code in flake8}
    assert not missing, f"rules that no fixture finding exercises through the linters: {sorted(missing)}"


def test_the_linters_report_what_the_fixtures_expect(default_run):
    """The fixtures' ``# expect:`` lines hold through the linters, not only through the engine."""
    flake8, _ = default_run
    for path in FIXTURE_FILES:
        codes = fixture_codes(path)
        reported = {(line, code) for name, line, _, code in flake8 if name == path.name and code in codes}
        assert reported == expected_findings(path.read_text(), codes), path.name


def test_parity_holds_in_bf16_where_the_float16_range_rules_stay_quiet(default_run):
    flake8, pylint = both_linters("--amp-precision=bf16")
    assert flake8 == pylint
    assert not {code for *_, code in flake8} & FP16_RANGE_RULES
    assert FP16_RANGE_RULES <= {code for *_, code in default_run[0]}, "nothing for bf16 to silence"
