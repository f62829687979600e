"""``flake8 --select AMP --format=amp``: findings grouped by file with severity, why and fix, then counts."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from flake8.main.cli import main as flake8_main

from flake8_amp.engine import LintOptions, lint_source
from flake8_amp.plugin import AmpChecker
from flake8_amp.report_format import split_message
from flake8_amp.rules import RULES_BY_CODE, Severity
from flake8_amp.rules.base import FIX_SEPARATOR
from expectations import copied
from linter_runs import FIXTURE_FILES, REPOSITORY, run_flake8

# AMP002, a stable HIGH rule, at line 4
HAZARD = (
    "import os\nimport torch\nwith torch.autocast('cuda'):\n"
    "    loss = torch.nn.functional.binary_cross_entropy(model(x), y)\nscaler.scale(loss).backward()\n"
)
#: every rule, preview rules included, so that the report is checked on every rule's findings
EVERY_RULE = LintOptions(preview=True)
# The report names files as flake8 is given them: relative paths, from the folder of the fixtures' copies.
FIXTURE_FOLDER = copied(FIXTURE_FILES[0]).parent
RELATIVE_FIXTURES = [copied(path).relative_to(FIXTURE_FOLDER) for path in FIXTURE_FILES]


def expected_report(paths: list[Path]) -> str:
    """The report, built from the engine's findings and the rule registry."""
    blocks, severities, files, total = [], Counter(), 0, 0
    for path in sorted(paths, key=str):
        findings = lint_source((FIXTURE_FOLDER / path).read_text(), EVERY_RULE)
        if not findings:
            continue
        files += 1
        lines = [f"File: {path}"]
        for finding in findings:
            rule = RULES_BY_CODE[finding.code]
            severities[rule.severity] += 1
            total += 1
            lines.append(f"Line {finding.line}: [{rule.severity.value}] {finding.code} {finding.what}")
            lines.append(f"  -> {rule.why}")
            lines.append(f"  -> fix: {finding.fix}")
        blocks.append("\n".join(lines))
    counts = ", ".join(f"{severities[severity]} {severity.value}" for severity in Severity)
    summary = f"{total} findings in {files} files: {counts}"
    return "\n\n".join(blocks) + "\n\n" + summary + "\n"


@pytest.fixture(scope="module")
def fixtures_report() -> str:
    result = run_flake8(RELATIVE_FIXTURES, "--format=amp", "--amp-preview=on", "--jobs=1", cwd=FIXTURE_FOLDER)
    assert result.returncode == 1 and result.stderr == ""
    return result.stdout


def test_every_fixture_finding_is_grouped_by_file_with_severity_why_and_fix(fixtures_report):
    assert fixtures_report == expected_report(RELATIVE_FIXTURES)


def test_the_summary_counts_what_the_report_lists(fixtures_report):
    severities = re.findall(r"^Line \d+: \[(\w+)\] AMP", fixtures_report, re.M)
    files = len(re.findall(r"^File: ", fixtures_report, re.M))
    counts = ", ".join(f"{severities.count(severity.value)} {severity.value}" for severity in Severity)
    assert fixtures_report.splitlines()[-1] == f"{len(severities)} findings in {files} files: {counts}"


def test_parallel_jobs_give_the_same_report(fixtures_report):
    parallel = run_flake8(RELATIVE_FIXTURES, "--format=amp", "--amp-preview=on", "--jobs=2", cwd=FIXTURE_FOLDER)
    assert parallel.stdout == fixtures_report


def test_output_file_receives_the_report(tmp_path, fixtures_report):
    output = tmp_path / "report.txt"
    result = run_flake8(
        RELATIVE_FIXTURES, "--format=amp", "--amp-preview=on", f"--output-file={output}", cwd=FIXTURE_FOLDER
    )
    assert result.returncode == 1 and result.stdout == ""
    assert output.read_text() == fixtures_report


def test_clean_code_says_so_and_passes():
    result = run_flake8([REPOSITORY / "examples" / "train_fixed.py"], "--format=amp")
    assert (result.returncode, result.stdout) == (0, "No AMP findings.\n")


def test_other_selected_codes_print_without_severity_or_fix(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(HAZARD)
    result = run_flake8([script], "--extend-select=F401", "--format=amp")
    lines = result.stdout.splitlines()
    assert lines[0] == f"File: {script}"
    assert lines[1] == "Line 1: F401 'os' imported but unused"
    assert lines[2].startswith("Line 4: [HIGH] AMP002 ")
    assert lines[-1] == "2 findings in 1 file: 1 HIGH, 0 MEDIUM, 0 LOW, 1 other"


def test_no_finding_text_holds_the_separator_the_report_splits_on():
    """The report takes each message apart at FIX_SEPARATOR: it must occur exactly once."""
    for path in FIXTURE_FILES + sorted((REPOSITORY / "examples").glob("*.py")):
        for finding in lint_source(path.read_text(), EVERY_RULE):
            assert FIX_SEPARATOR not in finding.what and FIX_SEPARATOR not in finding.fix, (path.name, finding)
            body = finding.message.removeprefix(f"{finding.code} ")
            assert split_message(finding.code, body) == (finding.what, finding.fix)


def test_split_message_leaves_a_message_without_fix_whole():
    assert split_message("AMP000", "something else entirely") == ("something else entirely", None)


def test_a_failing_rule_shows_as_amp000_and_the_other_rules_still_report(tmp_path, capsys, monkeypatch):
    def broken(self, analysis):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(RULES_BY_CODE["AMP013"]), "check", broken)
    monkeypatch.setattr(AmpChecker, "options", AmpChecker.options)  # flake8 in-process sets the plugin's state
    monkeypatch.setattr(AmpChecker, "selected", AmpChecker.selected)
    script = tmp_path / "train.py"
    script.write_text(HAZARD)
    flake8_main(["--jobs=1", "--isolated", "--select=AMP", "--format=amp", str(script)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("Line 1: AMP000 ") and "AMP013" in lines[1] and "boom" in lines[1]
    assert lines[2].startswith("  -> ") and "flake8-amp explain" not in out
    assert lines[3].startswith("Line 4: [HIGH] AMP002 ")
    assert lines[-1] == "2 findings in 1 file: 1 HIGH, 0 MEDIUM, 0 LOW, 1 other"
