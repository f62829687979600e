"""flake8 and pylint report the same findings: both are thin adapters over the same rule modules. Every
fixture, single files (grouped by their ``# options:`` header) and multi-module folders (through the
project index), in one run of each linter per group."""

from __future__ import annotations

from collections import defaultdict

import pytest

from expectations import (
    FIXTURE_FILES,
    PROJECT_FOLDERS,
    copied,
    copy_project,
    expected_findings,
    fixture_arguments,
    fixture_codes,
    project_files,
)
from flake8_amp.rules import ALL_RULES
from linter_runs import flake8_findings, pylint_findings, run_flake8, run_pylint

# The float16-range rules, quiet in bfloat16 code.
FP16_RANGE_RULES = {"AMP007", "AMP008", "AMP016"}


def both_linters(paths, *args: str) -> tuple[set, set]:
    """One flake8 run and one pylint run over ``paths``, preview rules on. ``--select AMP`` and
    ``--enable=amp`` both name the whole family, so off-by-default rules are on in both."""
    flake8 = run_flake8(paths, "--amp-preview=on", *args)
    assert flake8.stderr == ""
    pylint_args = [argument.replace("--amp-project-index=off", "--amp-project-index=n") for argument in args]
    return flake8_findings(flake8.stdout), pylint_findings(run_pylint(paths, "--amp-preview=y", *pylint_args))


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, ...], tuple[set, set]]:
    """(options) -> (flake8 findings, pylint findings) over every single-file fixture with those options."""
    groups = defaultdict(list)
    for path in FIXTURE_FILES:
        groups[tuple(fixture_arguments(path.read_text(encoding="utf-8")))].append(copied(path))
    return {options: both_linters(paths, *options) for options, paths in groups.items()}


def test_flake8_and_pylint_report_the_same_findings_on_every_fixture(runs):
    reported = set()
    for options, (flake8, pylint) in runs.items():
        assert sorted(flake8 - pylint) == [], f"flake8 only, with {options}"
        assert sorted(pylint - flake8) == [], f"pylint only, with {options}"
        reported |= {code for *_, code in flake8}
    project_codes = {code for folder in PROJECT_FOLDERS for code in fixture_codes(folder)}
    missing = {rule.code for rule in ALL_RULES} - reported - project_codes
    assert not missing, f"rules that no fixture finding exercises through the linters: {sorted(missing)}"


def test_the_linters_report_what_the_fixtures_expect(runs):
    """The fixtures' ``# expect:`` lines hold through the linters, columns included, not only through the engine."""
    flake8 = {finding for found, _ in runs.values() for finding in found}
    for path in FIXTURE_FILES:
        codes = fixture_codes(path)
        reported = {(line, col + 1, code) for name, line, col, code in flake8 if name == path.name and code in codes}
        assert reported == expected_findings(path.read_text(encoding="utf-8"), codes), path.name


@pytest.mark.parametrize("folder", PROJECT_FOLDERS, ids=lambda p: p.name)
def test_the_linters_agree_on_every_project_fixture(folder, tmp_path):
    project = copy_project(folder, tmp_path)
    paths = project_files(project)
    flake8, pylint = both_linters(paths)
    assert flake8 == pylint
    codes = fixture_codes(folder)
    expected = {
        (path.name, line, col, code)
        for path in paths
        for line, col, code in expected_findings(path.read_text(encoding="utf-8"), codes)
    }
    assert {(name, line, col + 1, code) for name, line, col, code in flake8 if code in codes} == expected


def test_parity_holds_in_bf16_where_the_float16_range_rules_stay_quiet(runs):
    flake8, pylint = both_linters([copied(path) for path in FIXTURE_FILES], "--amp-precision=bf16")
    assert flake8 == pylint
    assert not {code for *_, code in flake8} & FP16_RANGE_RULES
    assert FP16_RANGE_RULES <= {code for *_, code in runs[()][0]}, "nothing for bf16 to silence"
