"""Configuration: --amp-precision from the command line and config files of both linters; turning rules
on and off the way flake8 and pylint users expect."""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys

import pytest
from flake8.main.cli import main as flake8_main

from expectations import FIXTURES
from flake8_amp.plugin import AmpChecker
from flake8_amp.rules import RULES_BY_CODE
from linter_runs import run_flake8, run_pylint

# A fixture the float16-range rule AMP007 fires on, and bf16 silences.
FP16_RANGE_FIXTURE = FIXTURES / "amp007_fp16_overflow_literal.py"
HAZARD = "import torch\nwith torch.autocast('cuda'):\n    loss = model(x.half())\nscaler.scale(loss).backward()\n"
DEPRECATED = "import torch\nscaler = torch.cuda.amp.GradScaler()\n" + HAZARD


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.py"
    shutil.copy(FP16_RANGE_FIXTURE, path)
    return path


def amp_codes(stdout: str) -> set[str]:
    return {line.split()[1] for line in stdout.splitlines()}


# ---------------------------------------------------------------- flake8: --amp-precision
def test_flake8_amp_precision_on_the_command_line(model):
    assert "AMP007" in amp_codes(run_flake8([model], cwd=model.parent).stdout)
    assert "AMP007" not in amp_codes(run_flake8([model], "--amp-precision=bf16", cwd=model.parent).stdout)
    assert "AMP007" in amp_codes(run_flake8([model], "--amp-precision=fp16", cwd=model.parent).stdout)


@pytest.mark.parametrize("config_file", ["setup.cfg", "tox.ini", ".flake8"])
def test_flake8_amp_precision_from_its_config_files(model, config_file):
    (model.parent / config_file).write_text("[flake8]\namp-precision = bf16\n")
    result = run_flake8([model], cwd=model.parent)
    assert result.returncode == 0 and "AMP007" not in amp_codes(result.stdout)
    # the command line wins over the config file
    assert "AMP007" in amp_codes(run_flake8([model], "--amp-precision=auto", cwd=model.parent).stdout)


def test_flake8_rejects_an_invalid_precision_naming_the_option_and_the_choices(model):
    invalid = run_flake8([model], "--amp-precision=fp8", cwd=model.parent)
    assert invalid.returncode == 2 and invalid.stdout == ""
    assert "--amp-precision: invalid choice: 'fp8' (choose from 'auto', 'fp16', 'bf16')" in invalid.stderr
    (model.parent / "setup.cfg").write_text("[flake8]\namp-precision = fp8\n")
    invalid = run_flake8([model], cwd=model.parent)
    assert invalid.returncode == 2 and invalid.stdout == ""
    assert invalid.stderr.strip().splitlines() == [
        "flake8: error: amp-precision = 'fp8' in the flake8 configuration is not one of: auto, fp16, bf16"
    ]


# ---------------------------------------------------------------- pylint: amp-precision
@pytest.mark.parametrize(
    "config_file, content",
    [
        ("pyproject.toml", '[tool.pylint.amp]\namp-precision = "bf16"\n'),
        ("pylintrc", "[AMP]\namp-precision = bf16\n"),
        (".pylintrc", "[MAIN]\namp-precision = bf16\n"),
    ],
)
def test_pylint_amp_precision_from_its_config_files(model, monkeypatch, config_file, content):
    monkeypatch.chdir(model.parent)
    assert "amp-fp16-overflow-literal" in {m.symbol for m in run_pylint([model])}
    (model.parent / config_file).write_text(content)
    assert "amp-fp16-overflow-literal" not in {m.symbol for m in run_pylint([model])}
    assert "amp-fp16-overflow-literal" in {m.symbol for m in run_pylint([model], "--amp-precision=fp16")}


def run_pylint_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pylint", "--load-plugins=pylint_amp", *args], capture_output=True, text=True, cwd=cwd
    )


def test_pylint_help_lists_the_option():
    out = run_pylint_cli("--help").stdout
    assert "--amp-precision <auto|fp16|bf16>" in out and "(default: auto)" in out


@pytest.mark.parametrize("where", ["command line", "pyproject.toml"])
def test_pylint_rejects_an_invalid_precision_naming_the_option_and_the_choices(model, where):
    args = ["--amp-precision=fp8"] if where == "command line" else []
    if where == "pyproject.toml":
        (model.parent / "pyproject.toml").write_text('[tool.pylint.amp]\namp-precision = "fp8"\n')
    result = run_pylint_cli(*args, model.name, cwd=model.parent)
    assert result.returncode != 0 and "Module model" not in result.stdout  # 2 from the command line, 32 from a file
    assert "argument --amp-precision: invalid choice: 'fp8' (choose from 'auto', 'fp16', 'bf16')" in result.stderr


# ---------------------------------------------------------------- turning rules off and on
def test_any_rule_is_switched_off_the_usual_way(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(DEPRECATED)
    assert amp_codes(run_flake8([script]).stdout) == {"AMP001", "AMP013"}
    assert amp_codes(run_flake8([script], "--extend-ignore=AMP013").stdout) == {"AMP001"}
    (tmp_path / "setup.cfg").write_text("[flake8]\nper-file-ignores = train.py: AMP013\n")
    assert amp_codes(run_flake8([script.name], cwd=tmp_path).stdout) == {"AMP001"}
    assert {m.symbol for m in run_pylint([script], "--disable=amp-deprecated-amp-api")} == {"amp-manual-half-cast"}


@pytest.fixture
def opinionated_amp013(monkeypatch):
    """AMP013 as if it were off by default; flake8 runs in-process, so the plugin's class state is restored."""
    monkeypatch.setattr(type(RULES_BY_CODE["AMP013"]), "default_enabled", False)
    monkeypatch.setattr(AmpChecker, "options", AmpChecker.options)
    monkeypatch.setattr(AmpChecker, "selected", AmpChecker.selected)


@pytest.mark.parametrize(
    "args, reported",
    [
        # a plain run leaves an off-by-default rule off (flake8's extend_default_ignore) ...
        ([], False),
        (["--extend-ignore=E501"], False),
        (["--select=AMP001"], False),
        # ... naming it, or the whole AMP family, turns it on: an explicit selection beats a default ignore
        (["--extend-select=AMP013"], True),
        (["--select=AMP"], True),
        (["--select=AMP001", "--extend-select=AMP013"], True),
        # flake8 semantics: an explicit --ignore replaces the default ignore list, extensions included
        (["--ignore=E501"], True),
    ],
)
def test_flake8_off_by_default_rules(tmp_path, capsys, opinionated_amp013, args, reported):
    script = tmp_path / "train.py"
    script.write_text(DEPRECATED)
    flake8_main(["--jobs=1", "--isolated", *args, str(script)])
    assert (" AMP013 " in capsys.readouterr().out) is reported


def test_the_plugin_does_no_work_when_no_amp_code_can_be_reported(monkeypatch):
    monkeypatch.setattr(AmpChecker, "options", AmpChecker.options)
    monkeypatch.setattr(AmpChecker, "selected", AmpChecker.selected)
    checker_args = (ast.parse(HAZARD), HAZARD.splitlines(True))
    for select, extend, expected in [
        (None, None, True),  # flake8's default selection reports every plugin's codes
        (["E9"], None, False),
        (["E9"], ["AMP013"], True),
        (["E9", "A"], None, True),
        (["AMP0"], None, True),
    ]:
        AmpChecker.parse_options(argparse.Namespace(amp_precision="auto", select=select, extend_select=extend))
        assert AmpChecker.selected is expected, (select, extend)
        assert bool(list(AmpChecker(*checker_args).run())) is expected
