"""pylint_amp: every AMP rule as a pylint message, through the same rule modules as flake8."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import pylint_amp
from flake8_amp.engine import INTERNAL_ERROR_CODE
from flake8_amp.rules import ALL_RULES, RULES_BY_CODE, Severity
from linter_runs import run_pylint
from pylint_amp import AmpChecker, pylint_messages

BCE = "torch.nn.functional.binary_cross_entropy"
# AMP002 (a stable rule) at line 3, column 11 (pylint's 0-based column)
HAZARD = f"import torch\nwith torch.autocast('cuda'):\n    loss = {BCE}(model(x), y)\nscaler.scale(loss).backward()\n"
DEPRECATED = "import torch\nscaler = torch.cuda.amp.GradScaler()\n"


@pytest.fixture
def script(tmp_path):
    def write(source: str, name: str = "train.py"):
        path = tmp_path / name
        path.write_text(source)
        return path

    return write


def test_one_message_per_rule_in_the_external_range_with_the_rule_symbol():
    ids = [rule.pylint_id for rule in ALL_RULES]
    assert len(set(ids)) == len(ids)
    for rule in ALL_RULES:
        msgid = rule.pylint_id
        assert re.fullmatch(r"[EWC]51\d\d", msgid) and msgid.endswith(rule.code[-2:])
        assert msgid[0] == {Severity.HIGH: "E", Severity.MEDIUM: "W", Severity.LOW: "C"}[rule.severity]
        text, symbol, description, options = AmpChecker.msgs[msgid]
        assert symbol == rule.symbol == f"amp-{rule.name}"
        assert description.startswith(f"{rule.code} ({rule.severity.value}): {rule.summary}")
        assert options == {"default_enabled": rule.default_enabled}
    assert RULES_BY_CODE["AMP001"].pylint_id == "E5101"


def test_messages_start_with_the_amp_code_at_pylints_zero_based_column(script):
    messages = run_pylint([script(HAZARD)])
    assert [(m.msg_id, m.symbol, m.line, m.column) for m in messages] == [
        ("E5102", "amp-unsafe-binary-cross-entropy", 3, 11)
    ]
    assert messages[0].msg.startswith("AMP002 ") and messages[0].msg.endswith("(flake8-amp explain AMP002)")


def test_the_plugin_reports_among_pylints_own_messages(script):
    symbols = {m.symbol for m in run_pylint([script(HAZARD)], "--enable=missing-module-docstring")}
    assert symbols == {"amp-unsafe-binary-cross-entropy", "missing-module-docstring"}


def test_line_level_disable_by_symbol_or_id(script):
    path = script(
        "import torch\n"
        "with torch.autocast('cuda'):\n"
        f"    a = {BCE}(p, y)\n"
        f"    b = {BCE}(p, y)  # pylint: disable=amp-unsafe-binary-cross-entropy\n"
        f"    c = {BCE}(p, y)  # pylint: disable=E5102\n"
        "scaler.scale(a + b + c).backward()\n"
    )
    assert [m.line for m in run_pylint([path])] == [3]


def test_module_level_and_command_line_disable(script):
    disabled = script("# pylint: disable=amp-unsafe-binary-cross-entropy\n" + HAZARD, name="disabled.py")
    assert run_pylint([disabled]) == []
    assert run_pylint([script(HAZARD)], "--disable=amp-unsafe-binary-cross-entropy") == []


def test_help_msg_prints_the_summary_and_where_the_doc_is():
    for rule in (RULES_BY_CODE["AMP003"], ALL_RULES[-1]):
        result = subprocess.run(
            [sys.executable, "-m", "pylint", "--load-plugins=pylint_amp", f"--help-msg={rule.symbol}"],
            capture_output=True,
            text=True,
        )
        out = " ".join(result.stdout.split())
        assert f"{rule.symbol} ({rule.pylint_id})" in out
        assert rule.summary in out
        assert f"flake8-amp explain {rule.code}" in out and f"{rule.code}.md" in out


def test_opinionated_rules_are_disabled_by_default(script, monkeypatch):
    rule = RULES_BY_CODE["AMP013"]
    monkeypatch.setattr(type(rule), "default_enabled", False)
    monkeypatch.setattr(AmpChecker, "msgs", pylint_messages(ALL_RULES))
    path = script(DEPRECATED)

    def amp_symbols(*args: str) -> list[str]:
        return [m.symbol for m in run_pylint([path], *args, only_amp=False) if m.symbol.startswith("amp-")]

    assert amp_symbols() == []
    for enable in (rule.symbol, rule.pylint_id, "amp"):
        assert amp_symbols(f"--enable={enable}") == [rule.symbol]


def test_a_failing_rule_is_reported_and_the_other_rules_still_run(script, monkeypatch):
    def broken(self, analysis):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(RULES_BY_CODE["AMP013"]), "check", broken)
    messages = run_pylint([script(HAZARD)])
    assert [(m.msg_id, m.symbol) for m in messages] == [
        ("F5100", "amp-internal-error"),
        ("E5102", "amp-unsafe-binary-cross-entropy"),
    ]
    assert messages[0].msg.startswith(f"{INTERNAL_ERROR_CODE} flake8-amp rule AMP013 failed on this file (RuntimeError")


def test_files_without_torch_are_skipped_and_syntax_errors_left_to_pylint(script, monkeypatch):
    parsed = []
    monkeypatch.setattr(pylint_amp, "lint_tree", lambda tree, options, **_: parsed.append(tree) or [])
    assert run_pylint([script("import numpy\nx = numpy.zeros(3).astype('float16')\n")]) == []
    assert parsed == []
    messages = run_pylint([script("import torch\ndef broken(:\n", name="broken.py")], only_amp=False)
    assert [m.symbol for m in messages] == ["syntax-error"]


def test_encoding_cookie_and_bom_keep_lines_right(script):
    latin1 = "# -*- coding: latin-1 -*-\n# caf\xe9\n" + HAZARD
    (path := script("", name="latin1.py")).write_bytes(latin1.encode("latin-1"))
    (bom := script("", name="bom.py")).write_bytes(b"\xef\xbb\xbf" + HAZARD.encode())
    assert sorted((m.module, m.line) for m in run_pylint([path, bom])) == [("bom", 3), ("latin1", 5)]


def test_parallel_jobs_report_every_file(script):
    paths = [script(HAZARD, name=f"train{n}.py") for n in range(3)]
    result = subprocess.run(
        [sys.executable, "-m", "pylint", "--load-plugins=pylint_amp", "--disable=all", "--enable=amp", "-j", "2",
         "--amp-precision=bf16", *map(str, paths)],
        capture_output=True,
        text=True,
    )
    assert sorted(re.findall(r"(train\d)\.py:3:11: E5102: AMP002 ", result.stdout)) == ["train0", "train1", "train2"]
