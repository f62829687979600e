"""The front ends over the same rules: pylint, flake8's grouped report, configuration, parity."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flake8_amp.engine import LintOptions, lint_source
from flake8_amp.rules import ALL_RULES, RULES_BY_CODE

pytest.importorskip("pylint")
from pylint.lint import Run  # noqa: E402
from pylint.reporters import CollectingReporter  # noqa: E402

from pylint_amp import AmpChecker, message_id  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
FIXTURES = sorted((REPOSITORY / "tests" / "fixtures").glob("amp*.py"))
FLAKE8_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+):\d+: (?P<code>AMP\d{3}) ")


def run_flake8(paths, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "AMP", *args, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def run_pylint(paths, *args) -> list:
    reporter = CollectingReporter()
    Run(
        ["--load-plugins=pylint_amp", "--disable=all", "--enable=amp", "--persistent=n", *args, *map(str, paths)],
        reporter=reporter,
        exit=False,
    )
    return reporter.messages


# ---------------------------------------------------------------- parity
def test_flake8_and_pylint_report_the_same_findings_on_every_fixture():
    flake8 = run_flake8(FIXTURES)
    flake8_findings = set()
    for line in flake8.stdout.splitlines():
        match = FLAKE8_LINE.match(line)
        assert match, line
        flake8_findings.add((Path(match["path"]).name, int(match["line"]), match["code"]))
    pylint_findings = {
        (Path(m.path).name, m.line, m.msg.split()[0]) for m in run_pylint(FIXTURES) if m.symbol.startswith("amp-")
    }
    assert flake8_findings == pylint_findings
    assert {code for _, _, code in flake8_findings} == {rule.code for rule in ALL_RULES}


# ---------------------------------------------------------------- pylint
def test_pylint_message_ids_symbols_and_categories():
    for rule in ALL_RULES:
        msgid = message_id(rule)
        assert re.fullmatch(r"[EWR]51\d\d", msgid)
        text, symbol, description, _ = AmpChecker.msgs[msgid]
        assert symbol == f"amp-{rule.name}" and rule.code in description
    assert message_id(RULES_BY_CODE["AMP001"]) == "E5101"
    assert message_id(RULES_BY_CODE["AMP004"]) == "W5104"
    assert message_id(RULES_BY_CODE["AMP013"]) == "R5113"


def test_pylint_messages_start_with_the_amp_code_and_honour_disable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "with torch.autocast('cuda'):\n"
        "    a = x.half()\n"
        "    b = x.half()  # pylint: disable=amp-manual-half-cast\n"
    )
    messages = run_pylint([script])
    assert [(m.line, m.symbol) for m in messages] == [(3, "amp-manual-half-cast")]
    assert messages[0].msg.startswith("AMP001 ")
    assert messages[0].column == 8


def test_pylint_module_level_disable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "# pylint: disable=amp-manual-half-cast\nimport torch\nwith torch.autocast('cuda'):\n    a = x.half()\n"
    )
    assert run_pylint([script]) == []


def test_pylint_help_msg_names_the_summary_and_the_doc():
    result = subprocess.run(
        [sys.executable, "-m", "pylint", "--load-plugins=pylint_amp", "--help-msg=amp-loss-outside-autocast"],
        capture_output=True,
        text=True,
    )
    out = " ".join(result.stdout.split())
    assert "amp-loss-outside-autocast (E5103)" in out
    assert RULES_BY_CODE["AMP003"].summary in out
    assert "flake8-amp explain AMP003" in out and "AMP003.md" in out


# ---------------------------------------------------------------- grouped report
def test_grouped_report_groups_by_file_with_severity_why_fix_and_summary():
    result = run_flake8([REPOSITORY / "examples"], "--format=amp", cwd=REPOSITORY)
    out = result.stdout
    assert result.returncode == 1
    assert out.index("File: ") < out.index("Line ")
    block = re.search(r"Line 50: \[HIGH\] AMP002 BCELoss is unsafe to autocast\n  -> (.+)\n  -> fix: (.+)\n", out)
    assert block, out
    assert block[1] == RULES_BY_CODE["AMP002"].why
    assert "BCEWithLogitsLoss" in block[2] and "flake8-amp explain" not in block[2]
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ findings in 2 files: \d+ HIGH, \d+ MEDIUM, \d+ LOW", summary), summary
    count = len(re.findall(r"^Line \d+:", out, re.M))
    assert summary.startswith(f"{count} findings")


def test_grouped_report_on_clean_code_and_with_other_codes(tmp_path):
    clean = run_flake8([REPOSITORY / "examples" / "train_fixed.py"], "--format=amp")
    assert clean.stdout.strip() == "No AMP findings." and clean.returncode == 0
    script = tmp_path / "train.py"
    script.write_text("import os\nimport torch\nwith torch.autocast('cuda'):\n    a = x.half()\n")
    mixed = subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "AMP,F401", "--format=amp", str(script)],
        capture_output=True,
        text=True,
    )
    assert "Line 1: F401 'os' imported but unused" in mixed.stdout
    assert mixed.stdout.strip().endswith("2 findings in 1 file: 1 HIGH, 0 MEDIUM, 0 LOW, 1 other")


# ---------------------------------------------------------------- configuration
BF16_SENSITIVE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Attention(nn.Module):
        def forward(self, scores, mask):
            return scores.masked_fill(mask, -1e9)
    """
)


def test_precision_bf16_silences_the_fp16_range_rules_in_the_engine():
    assert [f.code for f in lint_source(BF16_SENSITIVE)] == ["AMP007"]
    assert lint_source(BF16_SENSITIVE, LintOptions(precision="bf16")) == []
    assert [f.code for f in lint_source(BF16_SENSITIVE, LintOptions(precision="fp16"))] == ["AMP007"]


def test_flake8_reads_amp_precision_from_the_command_line_and_config_files(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(BF16_SENSITIVE)
    assert "AMP007" in run_flake8([script], cwd=tmp_path).stdout
    assert run_flake8([script], "--amp-precision=bf16", cwd=tmp_path).stdout == ""
    (tmp_path / "setup.cfg").write_text("[flake8]\namp-precision = bf16\n")
    assert run_flake8([script], cwd=tmp_path).stdout == ""
    invalid = run_flake8([script], "--amp-precision=fp8", cwd=tmp_path)
    assert invalid.returncode != 0 and "amp-precision" in invalid.stderr and "bf16" in invalid.stderr


@pytest.mark.parametrize(
    "filename, content",
    [
        ("pyproject.toml", '[tool.pylint.amp]\namp-precision = "bf16"\n'),
        ("pylintrc", "[AMP]\namp-precision = bf16\n"),
    ],
)
def test_pylint_reads_amp_precision_from_its_config_files(tmp_path, monkeypatch, filename, content):
    script = tmp_path / "model.py"
    script.write_text(BF16_SENSITIVE)
    monkeypatch.chdir(tmp_path)
    assert [m.symbol for m in run_pylint([script])] == ["amp-fp16-overflow-literal"]
    (tmp_path / filename).write_text(content)
    assert run_pylint([script]) == []


def test_rules_are_switched_off_the_usual_way(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\nscaler = torch.cuda.amp.GradScaler()\n")
    assert "AMP013" in run_flake8([script]).stdout
    assert run_flake8([script], "--extend-ignore=AMP013").stdout == ""
    assert run_pylint([script], "--disable=amp-deprecated-amp-api") == []


def test_deselected_plugin_does_no_work():
    import argparse
    import ast

    from flake8_amp.plugin import AmpChecker as Flake8Checker

    source = "import torch\nwith torch.autocast('cuda'):\n    a = x.half()\n"
    checker_args = (ast.parse(source), source.splitlines(True))
    try:
        for select, extend, expected in [
            (None, None, True),  # flake8's default selection
            (["E9"], None, False),
            (["E9"], ["AMP013"], True),
            (["E9", "A"], None, True),
            (["AMP0"], None, True),
        ]:
            Flake8Checker.parse_options(
                argparse.Namespace(amp_precision="auto", select=select, extend_select=extend)
            )
            assert Flake8Checker.selected is expected, (select, extend)
            assert bool(list(Flake8Checker(*checker_args).run())) is expected
    finally:
        Flake8Checker.parse_options(argparse.Namespace(amp_precision="auto", select=None, extend_select=None))
