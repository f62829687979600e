"""Every fixture raises exactly the findings its comments expect (for the rules it is about), at the
columns they state, with the messages of its snapshot; multi-module fixtures likewise, through the
project index."""

from __future__ import annotations

import pytest

from expectations import (
    FIXTURE_FILES,
    PROJECT_FOLDERS,
    actual_findings,
    check_snapshot,
    copy_project,
    expected_findings,
    fixture_codes,
    lint_file,
    lint_fixture,
    project_files,
    snapshot_lines,
)
from flake8_amp.rules import ALL_RULES


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_raises_exactly_the_expected_findings(path):
    codes = fixture_codes(path)
    expected = expected_findings(path.read_text(encoding="utf-8"), codes)
    actual = actual_findings(path, codes)
    assert sorted(actual - expected) == [], "unexpected findings (line, column, code)"
    assert sorted(expected - actual) == [], "missing findings (line, column, code)"


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_messages_match_the_snapshot(path):
    check_snapshot(path.stem, snapshot_lines(lint_fixture(path), fixture_codes(path)))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_no_finding_is_reported_twice(path):
    # On Python 3.9, where import aliases have no position, two names of one import share a position
    # but not a message: only the same message at the same place is a duplicate.
    findings = [(f.line, f.col, f.message) for f in lint_fixture(path)]
    assert sorted(f for f in set(findings) if findings.count(f) > 1) == []


@pytest.mark.parametrize("folder", PROJECT_FOLDERS, ids=lambda p: p.name)
def test_project_fixture_raises_exactly_the_expected_findings(folder, tmp_path):
    project = copy_project(folder, tmp_path)
    codes = fixture_codes(folder)
    expected, actual, lines = set(), set(), []
    for path in project_files(project):
        name = path.relative_to(project).as_posix()
        expected |= {(name, *item) for item in expected_findings(path.read_text(encoding="utf-8"), codes)}
        actual |= {(name, *item) for item in actual_findings(path, codes, lint=lint_file)}
        lines += snapshot_lines(lint_file(path), codes, prefix=f"{name}:")
    assert sorted(actual - expected) == [], "unexpected findings (file, line, column, code)"
    assert sorted(expected - actual) == [], "missing findings (file, line, column, code)"
    check_snapshot(f"projects/{folder.name}", lines)


def test_every_rule_has_fixtures_that_expect_findings():
    sources = [(path, path.read_text(encoding="utf-8")) for path in FIXTURE_FILES]
    sources += [(folder, path.read_text(encoding="utf-8")) for folder in PROJECT_FOLDERS for path in project_files(folder)]
    expected_codes = {code for path, source in sources for *_, code in expected_findings(source, fixture_codes(path))}
    missing = {rule.code for rule in ALL_RULES} - expected_codes
    assert not missing, f"rules with no fixture line that must be flagged: {sorted(missing)}"
