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

# A fixture the float16-range rule AMP008 (stable) fires on, and bf16 silences.
FP16_RANGE_FIXTURE = FIXTURES / "amp008_fp16_vanishing_epsilon.py"
# AMP010 (stable) at line 5 and AMP001 (preview) at line 3.
HAZARD = (
    "import torch\nwith torch.autocast('cuda'):\n    loss = model(x.half())\nscaler.scale(loss).backward()\n"
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\nscaler.step(opt)\n"
)
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
    assert "AMP008" in amp_codes(run_flake8([model], cwd=model.parent).stdout)
    assert "AMP008" not in amp_codes(run_flake8([model], "--amp-precision=bf16", cwd=model.parent).stdout)
    assert "AMP008" in amp_codes(run_flake8([model], "--amp-precision=fp16", cwd=model.parent).stdout)


@pytest.mark.parametrize("config_file", ["setup.cfg", "tox.ini", ".flake8"])
def test_flake8_amp_precision_from_its_config_files(model, config_file):
    (model.parent / config_file).write_text("[flake8]\namp-precision = bf16\n")
    result = run_flake8([model], cwd=model.parent)
    assert result.stderr == "" and "AMP008" not in amp_codes(result.stdout)
    # the command line wins over the config file
    assert "AMP008" in amp_codes(run_flake8([model], "--amp-precision=auto", cwd=model.parent).stdout)


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
    assert "amp-fp16-vanishing-epsilon" in {m.symbol for m in run_pylint([model])}
    (model.parent / config_file).write_text(content)
    assert "amp-fp16-vanishing-epsilon" not in {m.symbol for m in run_pylint([model])}
    assert "amp-fp16-vanishing-epsilon" in {m.symbol for m in run_pylint([model], "--amp-precision=fp16")}


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
    assert amp_codes(run_flake8([script]).stdout) == {"AMP010", "AMP013"}
    assert amp_codes(run_flake8([script], "--extend-ignore=AMP013").stdout) == {"AMP010"}
    (tmp_path / "setup.cfg").write_text("[flake8]\nper-file-ignores = train.py: AMP013\n")
    assert amp_codes(run_flake8([script.name], cwd=tmp_path).stdout) == {"AMP010"}
    assert {m.symbol for m in run_pylint([script], "--disable=amp-deprecated-amp-api")} == {"amp-clip-before-unscale"}


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


# ---------------------------------------------------------------- preview rules: --amp-preview
def findings_at(stdout: str) -> set[tuple[int, str]]:
    """(line, code) of every flake8 finding."""
    return {(int(line.split(":")[1]), line.split()[1]) for line in stdout.splitlines()}


STABLE_ONLY = {(2, "AMP013"), (7, "AMP010")}
WITH_PREVIEW = STABLE_ONLY | {(5, "AMP001")}


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(DEPRECATED)
    return path


def test_flake8_runs_only_the_stable_rules_unless_preview_is_on(script):
    # --select AMP names the whole family; a preview rule still needs --amp-preview
    assert findings_at(run_flake8([script], cwd=script.parent).stdout) == STABLE_ONLY
    assert findings_at(run_flake8([script], "--amp-preview=on", cwd=script.parent).stdout) == WITH_PREVIEW
    assert findings_at(run_flake8([script], "--amp-preview=off", cwd=script.parent).stdout) == STABLE_ONLY


@pytest.mark.parametrize("config_file", ["setup.cfg", "tox.ini", ".flake8"])
@pytest.mark.parametrize("value", ["on", "true", "yes", "1"])
def test_flake8_amp_preview_from_its_config_files(script, config_file, value):
    (script.parent / config_file).write_text(f"[flake8]\namp-preview = {value}\n")
    assert findings_at(run_flake8([script], cwd=script.parent).stdout) == WITH_PREVIEW
    # the command line wins over the config file
    assert findings_at(run_flake8([script], "--amp-preview=off", cwd=script.parent).stdout) == STABLE_ONLY


def test_flake8_rejects_an_invalid_preview_value_naming_the_option(script):
    for args, config in ((["--amp-preview=maybe"], None), ([], "[flake8]\namp-preview = maybe\n")):
        if config:
            (script.parent / "setup.cfg").write_text(config)
        result = run_flake8([script], *args, cwd=script.parent)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines() == ["flake8: error: amp-preview = 'maybe' is not one of: on, off"]


def test_pylint_runs_only_the_stable_rules_unless_preview_is_on(script, monkeypatch):
    monkeypatch.chdir(script.parent)
    stable = {"amp-deprecated-amp-api", "amp-clip-before-unscale"}
    assert {m.symbol for m in run_pylint([script])} == stable
    assert {m.symbol for m in run_pylint([script], "--amp-preview=y")} == stable | {"amp-manual-half-cast"}
    (script.parent / "pyproject.toml").write_text("[tool.pylint.amp]\namp-preview = true\n")
    assert {m.symbol for m in run_pylint([script])} == stable | {"amp-manual-half-cast"}


def test_preview_status_is_listed_where_users_look():
    preview = sorted(rule.code for rule in RULES_BY_CODE.values() if rule.preview)
    help_text = run_flake8([], "--help").stdout
    assert "--amp-preview on|off" in help_text and ", ".join(preview[:3]) in " ".join(help_text.split())
    assert "--amp-preview <y or n>" in run_pylint_cli("--help").stdout
