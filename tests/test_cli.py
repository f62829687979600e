"""The flake8-amp command: explain and rules, from the checkout and from a wheel in a fresh venv."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from flake8_amp.cli import main
from flake8_amp.rules import ALL_RULES

REPOSITORY = Path(__file__).resolve().parent.parent


def test_explain_prints_the_rule_doc(capsys):
    assert main(["explain", "AMP003"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# AMP003")
    assert "## Use instead" in out


def test_explain_accepts_lower_case_and_topic_pages(capsys):
    assert main(["explain", "amp001"]) == 0
    assert capsys.readouterr().out.startswith("# AMP001")


def test_explain_unknown_code_is_one_clear_line(capsys):
    assert main(["explain", "AMP999"]) == 2
    err = capsys.readouterr().err
    assert "unknown rule or topic 'AMP999'" in err and "AMP001" in err
    assert "Traceback" not in err


def test_rules_table_lists_every_rule(capsys):
    assert main(["rules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["CODE", "SEVERITY", "STATUS", "NAME"]
    assert [line.split()[0] for line in lines[1:]] == [rule.code for rule in ALL_RULES]
    assert [line.split()[2] for line in lines[1:]] == ["preview" if rule.preview else "stable" for rule in ALL_RULES]


def test_rules_json_is_machine_readable(capsys):
    assert main(["rules", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["code"] for row in rows] == [rule.code for rule in ALL_RULES]
    assert {"code", "severity", "status", "name", "symbol", "summary", "default_enabled"} <= set(rows[0])
    assert all(row["severity"] in ("HIGH", "MEDIUM", "LOW") for row in rows)
    assert {row["code"]: row["status"] for row in rows}["AMP006"] == "preview"
    assert {row["code"]: row["status"] for row in rows}["AMP013"] == "stable"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "explain" in capsys.readouterr().out


@pytest.fixture(scope="module")
def installed_wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with only the built wheel installed (no checkout on its path)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPOSITORY)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{built.stderr[-2000:]}")
    wheel = next((root / "dist").glob("flake8_amp-*.whl"))
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return env_dir


def test_explain_and_rules_work_from_a_wheel_in_a_fresh_venv(installed_wheel_venv, tmp_path):
    script = installed_wheel_venv / "bin" / "flake8-amp"
    explain = subprocess.run([str(script), "explain", "AMP003"], capture_output=True, text=True, cwd=tmp_path)
    assert explain.returncode == 0, explain.stderr
    assert explain.stdout.startswith("# AMP003")
    rules = subprocess.run([str(script), "rules", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert rules.returncode == 0, rules.stderr
    assert [row["code"] for row in json.loads(rules.stdout)] == [rule.code for rule in ALL_RULES]
    where = subprocess.run(
        [str(installed_wheel_venv / "bin" / "python"), "-c", "import flake8_amp.rule_docs as d; print(d.docs_directory())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "site-packages" in where.stdout, "docs must come from the wheel, not the checkout"


def test_python_m_flake8_amp_is_the_flake8_amp_command(tmp_path):
    import subprocess
    import sys

    source = tmp_path / "train.py"
    source.write_text("import torch\nscaler = torch.cuda.amp.GradScaler()\n")
    result = subprocess.run([sys.executable, "-m", "flake8_amp", "fix", "--diff", str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert '+scaler = torch.amp.GradScaler("cuda")' in result.stdout and source.read_text().endswith("GradScaler()\n")
