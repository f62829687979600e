"""``flake8-amp check``: what ``flake8 --select AMP`` prints, byte for byte, without a flake8 run; its noqa
handling, configuration files, exit codes, --jobs and the JSON format.

flake8 runs as a subprocess (as users run it); ``check`` runs in-process, through the CLI's ``main``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
import pytest

from expectations import FIXTURE_FILES, PROJECT_FOLDERS, copied, copy_project, fixture_arguments
from flake8_amp.cli import main as cli_main
from flake8_amp.rule_docs import doc_url
from linter_runs import Run, cli_runner, run_flake8

# AMP013 (stable, LOW) at line 2, column 10 (0-based); AMP010 (stable, HIGH) at line 6
DEPRECATED = "import torch\nscaler = torch.cuda.amp.GradScaler()\n"
HAZARD = (
    "import torch\nwith torch.autocast('cuda'):\n    loss = model(x)\nscaler.scale(loss).backward()\n"
    "opt.zero_grad()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\nscaler.step(opt)\n"
)
# A float16-range hazard (AMP008, stable) that --amp-precision=bf16 silences
FP16_RANGE = FIXTURE_FILES[0].parent / "amp008_fp16_vanishing_epsilon.py"


@pytest.fixture
def run_check(monkeypatch, capsys):
    """``flake8-amp check ARGS`` in-process, from ``cwd``."""
    return cli_runner("check", monkeypatch, capsys)


def same_as_flake8(run_check, *args: object, cwd: Path) -> Run:
    """Run both; their output and exit status must be the same. Returns check's run."""
    flake8 = run_flake8([], *map(str, args), cwd=cwd)
    check = run_check(*args, cwd=cwd)
    assert check.out == flake8.stdout
    assert check.status == flake8.returncode
    return check


# ---------------------------------------------------------------- parity on every fixture
def fixture_groups() -> dict[tuple[str, ...], list[str]]:
    """The fixtures' copies by the options their header asks for (one flake8 run per group)."""
    groups = defaultdict(list)
    for path in FIXTURE_FILES:
        groups[tuple(fixture_arguments(path.read_text(encoding="utf-8")))].append(copied(path).name)
    return groups


@pytest.mark.parametrize("output_format", ["default", "amp"])
def test_check_prints_what_flake8_prints_on_every_fixture(run_check, output_format):
    folder = copied(FIXTURE_FILES[0]).parent
    groups = fixture_groups()
    assert sum(map(len, groups.values())) == len(FIXTURE_FILES)
    for arguments, names in groups.items():
        check = same_as_flake8(
            run_check, "--amp-preview=on", f"--format={output_format}", *arguments, *names, cwd=folder
        )
        assert check.status == 1 and check.err == ""


def test_check_prints_what_flake8_prints_on_every_project_fixture(run_check, tmp_path):
    for folder in PROJECT_FOLDERS:
        copy_project(folder, tmp_path)
    check = same_as_flake8(run_check, "--amp-preview=on", ".", cwd=tmp_path)
    reported = {line.split("/")[1] for line in check.out.splitlines()}
    # every project whose files expect a finding (a project may expect silence)
    assert reported >= {
        folder.name for folder in PROJECT_FOLDERS if any("# expect:" in p.read_text() for p in folder.rglob("*.py"))
    }


def test_parallel_jobs_print_what_one_job_prints(run_check):
    folder = copied(FIXTURE_FILES[0]).parent
    names = fixture_groups()[()]
    for output_format in ("default", "amp", "json"):
        one = run_check("--amp-preview=on", "--jobs=1", f"--format={output_format}", *names, cwd=folder)
        two = run_check("--amp-preview=on", "--jobs=2", f"--format={output_format}", *names, cwd=folder)
        assert two == one and one.status == 1


# ---------------------------------------------------------------- noqa
NOQA_CASES = """import torch
a = torch.cuda.amp.GradScaler()  # noqa
b = torch.cuda.amp.GradScaler()  # noqa: AMP013
c = torch.cuda.amp.GradScaler()  # noqa:AMP
d = torch.cuda.amp.GradScaler()  # NOQA: E501,AMP01
e = torch.cuda.amp.GradScaler()  # noqa: E501
f = torch.cuda.amp.GradScaler()  # noqa: AMP010
g = torch.cuda.amp.GradScaler(
    enabled=True,
)  # noqa: AMP013
h = torch.cuda.amp.GradScaler(); doc = '''
'''  # noqa: AMP013
i = torch.cuda.amp.GradScaler()
"""


def test_noqa_comments_work_as_in_flake8(run_check, tmp_path):
    (tmp_path / "train.py").write_text(NOQA_CASES)
    check = same_as_flake8(run_check, "train.py", cwd=tmp_path)
    # a bare noqa, the code, a prefix of it, and a noqa at the end of a string that spans the line silence it;
    # another code does not, nor a comment at the end of a bracketed statement's last line (flake8's rule)
    assert [int(line.split(":")[1]) for line in check.out.splitlines()] == [6, 7, 8, 13]
    assert len(same_as_flake8(run_check, "--disable-noqa", "train.py", cwd=tmp_path).out.splitlines()) == 9


def test_a_flake8_noqa_line_skips_the_file(run_check, tmp_path):
    (tmp_path / "train.py").write_text("# flake8: noqa\n" + DEPRECATED)
    assert same_as_flake8(run_check, "train.py", cwd=tmp_path) == Run(0, "", "")


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("config_file", ["setup.cfg", "tox.ini", ".flake8"])
def test_the_flake8_configuration_files_are_read(run_check, tmp_path, config_file):
    (tmp_path / "train.py").write_text(DEPRECATED + HAZARD)
    (tmp_path / "model.py").write_text(FP16_RANGE.read_text())
    before = {line.split()[1] for line in run_check(".", cwd=tmp_path).out.splitlines()}
    assert {"AMP008", "AMP010", "AMP013"} <= before
    (tmp_path / config_file).write_text("[flake8]\nextend-ignore = AMP013\namp-precision = bf16\n")
    check = same_as_flake8(run_check, ".", cwd=tmp_path)
    assert {line.split()[1] for line in check.out.splitlines()} == before - {"AMP008", "AMP013"}


def test_per_file_ignores_and_excludes_from_the_configuration(run_check, tmp_path):
    for folder in ("src", "scripts", "build"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.py").write_text(DEPRECATED + HAZARD)
    (tmp_path / "setup.cfg").write_text(
        "[flake8]\nper-file-ignores =\n    scripts/*: AMP013\n    src/train.py: AMP01\nextend-exclude = build\n"
    )
    check = same_as_flake8(run_check, ".", cwd=tmp_path)
    assert [line.split()[:2] for line in check.out.splitlines()] == [
        ["./scripts/train.py:8:1:", "AMP010"]
    ]


def test_the_command_line_wins_over_the_configuration(run_check, tmp_path):
    (tmp_path / "train.py").write_text(DEPRECATED + HAZARD)
    # select in the configuration is overridden by the --select AMP that check starts from, as in flake8
    (tmp_path / "tox.ini").write_text("[flake8]\nselect = E,W,F\nextend-ignore = AMP013\n")
    assert same_as_flake8(run_check, "train.py", cwd=tmp_path).out.split()[1] == "AMP010"
    assert same_as_flake8(run_check, "--extend-ignore=AMP010", "train.py", cwd=tmp_path).out.split()[1] == "AMP013"
    assert same_as_flake8(run_check, "--isolated", "train.py", cwd=tmp_path).out.count("\n") == 2


def test_default_excludes_are_flake8s(run_check, tmp_path):
    for folder in (".git", "__pycache__", ".tox", "venv", "pkg"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.py").write_text(DEPRECATED)
    (tmp_path / "notes.txt").write_text(DEPRECATED)
    check = same_as_flake8(run_check, ".", cwd=tmp_path)
    # flake8 excludes no virtualenv by default: --extend-exclude does
    assert [line.split(":")[0] for line in check.out.splitlines()] == ["./pkg/train.py", "./venv/train.py"]


# ---------------------------------------------------------------- exit codes and errors
def test_exit_codes(run_check, tmp_path):
    (tmp_path / "clean.py").write_text("import torch\nx = torch.ones(3)\n")
    (tmp_path / "train.py").write_text(DEPRECATED)
    assert same_as_flake8(run_check, "clean.py", cwd=tmp_path) == Run(0, "", "")
    assert same_as_flake8(run_check, "train.py", cwd=tmp_path).status == 1
    assert same_as_flake8(run_check, "--exit-zero", "train.py", cwd=tmp_path).status == 0


@pytest.mark.parametrize(
    "args, config, message",
    [
        (["--amp-precision=fp8"], None, "argument --amp-precision: invalid choice: 'fp8'"),
        ([], "amp-precision = fp8", "flake8-amp check: error: amp-precision = 'fp8' in the flake8 configuration"),
        (["--amp-preview=maybe"], None, "flake8-amp check: error: amp-preview = 'maybe' is not one of: on, off"),
        (["--no-such-option"], None, "unrecognized arguments: --no-such-option"),
        (["--format=html"], None, "--format 'html' is none of default, pylint"),
        ([], "extend-ignore = amp013", "Error code 'amp013' supplied to 'extend-ignore'"),
        ([], "per-file-ignores = train.py", "Expected `per-file-ignores` to be a mapping"),
        (["--config=missing.cfg"], None, "The specified config file does not exist: missing.cfg"),
    ],
)
def test_usage_errors_and_bad_configuration_values_exit_2_with_one_line(run_check, tmp_path, args, config, message):
    (tmp_path / "train.py").write_text(DEPRECATED)
    if config:
        (tmp_path / "setup.cfg").write_text(f"[flake8]\n{config}\n")
    check = run_check(*args, "train.py", cwd=tmp_path)
    assert check.status == 2 and check.out == ""
    assert message in check.err and "Traceback" not in check.err
    assert check.err.strip().splitlines()[-1].startswith("flake8-amp check: error: ")


def test_a_file_that_does_not_parse_is_reported_only_where_flake8_reports_it(run_check, tmp_path):
    (tmp_path / "broken.py").write_text("import torch\ndef f(:\n")
    (tmp_path / "train.py").write_text(DEPRECATED)
    check = same_as_flake8(run_check, "broken.py", "train.py", "missing.py", cwd=tmp_path)
    assert check.out.startswith("train.py:2:10: AMP013 ") and check.out.count("\n") == 1
    check = same_as_flake8(run_check, "--extend-select=E9", "broken.py", "train.py", "missing.py", cwd=tmp_path)
    assert [line.split()[1] for line in check.out.splitlines()] == ["E999", "E902", "AMP013"]


def test_stdin_is_read_as_flake8_reads_it(tmp_path):
    def run(*command: str) -> subprocess.CompletedProcess:
        args = [*command, "--stdin-display-name=train.py", "-"]
        return subprocess.run(args, input=DEPRECATED, capture_output=True, text=True, cwd=tmp_path)

    check = run(sys.executable, "-m", "flake8_amp.cli", "check")
    flake8 = run(sys.executable, "-m", "flake8", "--select", "AMP")
    assert (check.stdout, check.returncode) == (flake8.stdout, flake8.returncode) == (
        'train.py:2:10: AMP013 deprecated torch.cuda.amp.GradScaler used -> use torch.amp.GradScaler("cuda", ...) '
        "(flake8-amp explain AMP013)\n",
        1,
    )


def test_count_statistics_show_source_and_quiet_are_flake8s(run_check, tmp_path):
    (tmp_path / "train.py").write_text(DEPRECATED + HAZARD)
    for args in (["--count", "--statistics"], ["--show-source"], ["-q"], ["--format=pylint"], ["--format=%(code)s"]):
        assert same_as_flake8(run_check, *args, "train.py", cwd=tmp_path).out


def test_the_command_is_listed_and_has_flake8s_help(run_check, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "check" in capsys.readouterr().out
    check = run_check("--help", cwd=tmp_path)
    assert check.status == 0
    assert check.out.startswith("usage: flake8-amp check [options] file file ...")
    for option in ("--select", "--per-file-ignores", "--jobs", "--format", "--output-file", "--amp-precision"):
        assert option in check.out
    # pycodestyle's options are left out of the help, but accepted, so that a flake8 command line runs as it is
    assert "--max-line-length" not in check.out
    (tmp_path / "clean.py").write_text("import torch\n")
    assert run_check("--max-line-length=120", "--hang-closing", "clean.py", cwd=tmp_path) == Run(0, "", "")


# ---------------------------------------------------------------- JSON
def test_json_report_shape_is_pinned(run_check, tmp_path):
    (tmp_path / "train.py").write_text(DEPRECATED + "x = torch.ones(3)  # noqa\n")
    check = run_check("--format=json", "train.py", cwd=tmp_path)
    assert check.status == 1
    assert json.loads(check.out) == [
        {
            "path": "train.py",
            "line": 2,
            "column": 10,
            "code": "AMP013",
            "message": 'deprecated torch.cuda.amp.GradScaler used -> use torch.amp.GradScaler("cuda", ...) '
            "(flake8-amp explain AMP013)",
            "severity": "LOW",
            "rule": "deprecated-amp-api",
            "url": doc_url("AMP013"),
        }
    ]


def test_json_report_has_one_record_per_line_of_the_default_format(run_check):
    folder = copied(FIXTURE_FILES[0]).parent
    names = fixture_groups()[()]
    text = run_check("--amp-preview=on", "--jobs=1", *names, cwd=folder).out.splitlines()
    records = json.loads(run_check("--amp-preview=on", "--jobs=1", "--format=json", *names, cwd=folder).out)
    assert [f"{r['path']}:{r['line']}:{r['column']}: {r['code']} {r['message']}" for r in records] == text
    assert {record["severity"] for record in records} == {"HIGH", "MEDIUM", "LOW"}
    assert all(record["url"] == doc_url(record["code"]) and record["rule"] for record in records)


def test_json_report_of_a_clean_run_and_of_other_codes(run_check, tmp_path):
    (tmp_path / "clean.py").write_text("import torch\n")
    assert run_check("--format=json", "clean.py", cwd=tmp_path) == Run(0, "[]\n", "")
    (tmp_path / "broken.py").write_text("import torch\ndef f(:\n")
    [record] = json.loads(run_check("--format=json", "--extend-select=E999", "broken.py", cwd=tmp_path).out)
    assert (record["code"], record["severity"], record["rule"], record["url"]) == ("E999", None, None, None)


def test_json_output_file_holds_one_document_after_several_runs(run_check, tmp_path):
    (tmp_path / "train.py").write_text(DEPRECATED)
    output = tmp_path / "out" / "report.json"
    for _ in range(2):
        check = run_check("--format=json", f"--output-file={output}", "train.py", cwd=tmp_path)
        assert check.status == 1 and check.out == ""
    assert [record["code"] for record in json.loads(output.read_text())] == ["AMP013"]


def test_importing_check_does_not_import_torch():
    code = "import sys, flake8_amp.check, flake8_amp.sarif; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
