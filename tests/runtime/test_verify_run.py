"""verify as a whole: state put back after any ending, bounded runs, crashes as results, output formats,
the command line, flake8's configuration, project modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")

from verify_runs import run_verify, verdict_of, write  # noqa: E402

from flake8_amp.runtime.evidence import Outcome  # noqa: E402
from flake8_amp.runtime.verification import verify  # noqa: E402

# Changes every global verify promises to put back, then ends the way argv[1] says.
MESSY_SCRIPT = """
import os
import sys
import time

import torch
from torch.overrides import TorchFunctionMode

import helpers


class Passthrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
sys.argv.append("--changed")
sys.path.insert(0, "/nonexistent")
os.chdir(os.path.dirname(os.path.abspath(__file__)) + "/sub")
torch.set_default_dtype(torch.float64)
torch.set_grad_enabled(False)
torch.set_autocast_enabled("cpu", True)
torch.set_autocast_dtype("cpu", torch.float16)
torch.use_deterministic_algorithms(True)
Passthrough().__enter__()  # entered and never left
torch.set_grad_enabled(True)

ending = sys.argv[1]
step = 0
while True:
    loss = model(torch.randn(8, 4, dtype=torch.float64).float()).float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    step += 1
    if ending == "raise" and step == 2:
        raise ValueError("the script broke")
    if ending == "exit" and step == 2:
        sys.exit(3)
    if ending == "interrupt" and step == 2:
        raise KeyboardInterrupt
    if ending == "sleep":
        time.sleep(0.05)
"""


def _line_of(source: str, text: str) -> int:
    return next(number for number, line in enumerate(source.lstrip("\n").splitlines(), 1) if text in line)


def _global_state():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return {
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "path": list(sys.path),
        "main": sys.modules["__main__"],
        "trace": sys.gettrace(),
        "default_dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "autocast": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "function_modes": len(torch.overrides._get_current_function_mode_stack()),
        "dispatch_modes": len(_get_current_dispatch_mode_stack()),
        "save": torch.save,
        "clip": torch.nn.utils.clip_grad_norm_,
        "scaler_step": torch.amp.GradScaler.step,
        "module_init": torch.nn.Module.__init__,
        # what CUDA emulation replaces, when verify runs without a GPU
        "cuda": (torch.cuda, torch.cuda.is_available, torch.cuda.is_available()),
        "autocast_api": (torch.autocast, torch.amp.autocast, torch.cuda.amp.autocast, torch.is_autocast_enabled,
                         torch.get_autocast_dtype, torch.amp.autocast_mode._cast),
        "cpu_softmax_under_autocast": _cpu_softmax_dtype(),
    }


def _cpu_softmax_dtype():
    """CPU autocast's softmax kernel (which emulation replaces while it runs) keeps float16."""
    with torch.autocast("cpu", dtype=torch.float16):
        return (torch.ones(2, 2) @ torch.ones(2, 2)).softmax(-1).dtype


@pytest.mark.parametrize(
    "ending, steps, timeout, expect",
    [
        ("raise", None, None, "error"),
        ("exit", None, None, "exit"),
        ("interrupt", None, None, "interrupt"),
        ("forever", 5, None, "steps"),
        ("sleep", None, 1.0, "timeout"),
    ],
)
def test_state_is_put_back_whatever_the_ending(tmp_path, monkeypatch, ending, steps, timeout, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    write(tmp_path, "helpers.py", "VALUE = 1\n")
    before, modules = _global_state(), dict(sys.modules)
    report = run_verify(tmp_path, MESSY_SCRIPT, args=[ending], steps=steps, timeout=timeout)
    assert _global_state() == before
    assert all(sys.modules.get(name) is module for name, module in modules.items())
    # the project's modules are imported afresh next time; installed packages it loaded stay loaded
    assert "helpers" not in sys.modules
    if expect == "error":
        assert report.script_error.to_dict() == {
            "type": "ValueError", "message": "the script broke", "path": str(tmp_path / "train.py"),
            "line": _line_of(MESSY_SCRIPT, 'raise ValueError("the script broke")'),
        }
        assert report.steps_run == 2
    elif expect == "exit":
        assert report.script_error is None and report.exit_status == 3 and report.steps_run == 2
    elif expect == "interrupt":
        assert report.script_error.type == "KeyboardInterrupt"
    elif expect == "steps":
        assert (report.stopped_by, report.steps_run, report.script_error) == ("steps", 5, None)
        emulated = "" if torch.cuda.is_available() else " (CUDA emulated)"
        assert str(report).endswith(f"Ran 5 optimizer steps on cpu{emulated} (stopped at the step limit).")
    else:
        assert report.stopped_by == "timeout" and report.script_error is None
        assert report.steps_run <= 20  # 0.05 s per step


def test_a_pure_python_endless_loop_stops_at_the_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = """
    import torch
    x = torch.zeros(2).half()
    while True:
        pass
    """
    report = run_verify(tmp_path, source, timeout=0.5)
    assert report.stopped_by == "timeout" and report.script_error is None


CRASH_SCRIPT = """
import torch

model = torch.nn.Linear(8, 8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
for step in range(4):
    with torch.autocast("cpu", dtype=torch.float16):
        scores = model(torch.randn(4, 8))
        if step == 1:
            scores = scores.masked_fill(scores < 0, -1e9)
        loss = scores.float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_a_crash_is_a_result_with_the_verdicts_gathered_up_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, CRASH_SCRIPT)
    assert report.steps_run == 1
    assert report.script_error.to_dict() == {
        "type": "RuntimeError",
        "message": "value cannot be converted to type c10::Half without overflow",
        "path": str(tmp_path / "train.py"),
        "line": 10,
    }
    finding = verdict_of(report, "AMP007")
    assert (finding.line, finding.col, finding.verdict) == (10, 53, Outcome.CONFIRMED)
    assert finding.evidence == (
        'step 1: RuntimeError "value cannot be converted to type c10::Half without overflow" (the script stopped here)'
    )
    assert report.exit_code == 1
    assert "Script raised RuntimeError at train.py:10: value cannot be converted" in str(report)


# The JSON schema the README documents (issue: `--format json`).
REPORT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["script", "device", "emulated", "steps_run", "findings", "nonfinite_origins", "scaler", "script_error",
                 "recorder_error"],
    "properties": {
        "recorder_error": {"type": ["string", "null"]},
        "script": {"type": "string"},
        "device": {"type": "string"},
        "emulated": {"type": "boolean"},
        "steps_run": {"type": "integer", "minimum": 0},
        "findings": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "line", "col", "code", "message", "verdict", "evidence", "executions"],
            "properties": {
                "path": {"type": "string"},
                "line": {"type": "integer", "minimum": 1},
                "col": {"type": "integer", "minimum": 1},
                "code": {"type": "string", "pattern": "^AMP[0-9]{3}$"},
                "message": {"type": "string"},
                "verdict": {"enum": ["confirmed", "not_observed", "not_reached", "not_checkable"]},
                "evidence": {"type": "string"},
                "executions": {"type": "integer", "minimum": 0},
            },
        }},
        "nonfinite_origins": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "line", "op", "phase", "step", "kind", "inputs_max_abs"],
            "properties": {
                "inputs_max_abs": {"type": "array", "items": {"type": ["number", "string", "null"]}},
                "path": {"type": ["string", "null"]},
                "line": {"type": ["integer", "null"]},
                "op": {"type": "string"},
                "phase": {"enum": ["forward", "backward"]},
                "step": {"type": "integer", "minimum": 0},
                "kind": {"enum": ["nan", "inf"]},
            },
        }},
        "scaler": {
            "type": "object",
            "additionalProperties": False,
            "required": ["skipped_steps", "scales"],
            "properties": {
                "skipped_steps": {"type": "array", "items": {"type": "integer"}},
                "scales": {"type": "array", "items": {"type": "number"}},
            },
        },
        "script_error": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "message", "path", "line"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "path": {"type": ["string", "null"]},
                "line": {"type": ["integer", "null"]},
            },
        }]},
    },
}

SCALED_SCRIPT = """
import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = torch.nn.Linear(16, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
for step in range(4):
    print("step", step)
    x = torch.randn(8, 16).half()
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(x)
    loss = F.cross_entropy(logits, torch.randint(0, 4, (8,)))
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_json_report_matches_the_documented_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, SCALED_SCRIPT)
    document = json.loads(report.to_json())
    jsonschema.validate(document, REPORT_SCHEMA)
    assert document["steps_run"] == 4 and document["device"] == "cpu"
    assert document["emulated"] is not torch.cuda.is_available()  # CUDA is emulated where there is none
    assert [f["code"] for f in document["findings"]] == ["AMP001", "AMP003", "AMP010"]
    assert document["scaler"]["scales"][0] == 65536.0
    assert document["scaler"]["skipped_steps"] == [s for s in range(4) if s in document["scaler"]["skipped_steps"]]
    # the float16 loss's gradient at scale 65536 is inf: the first backward origin is the scaled loss's line
    backward = [o for o in document["nonfinite_origins"] if o["phase"] == "backward"]
    assert backward and backward[0]["line"] == 14 and backward[0]["step"] == 0 and backward[0]["kind"] == "inf"


def test_sarif_is_valid_sarif_2_1_0_with_the_verdict_in_each_result(tmp_path, monkeypatch):
    sarif_pydantic = pytest.importorskip("sarif_pydantic")
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, SCALED_SCRIPT)
    log = report.to_sarif()
    parsed = sarif_pydantic.Sarif.model_validate(log)
    assert parsed.version == "2.1.0"
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in results] == [
        ("AMP001", 10), ("AMP003", 13), ("AMP010", 15)
    ]
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["properties"]["verdict"] in {"confirmed", "not_observed", "not_reached", "not_checkable"}
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "train.py"
    assert results[2]["properties"]["verdict"] == "confirmed" and results[2]["level"] == "error"


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "flake8_amp.cli", "verify", *args], capture_output=True, text=True,
                          cwd=tmp_path)


def test_command_line_exit_codes_and_streams(tmp_path):
    write(tmp_path, "train.py", SCALED_SCRIPT)
    write(tmp_path, "clean.py", "import torch\nprint(torch.ones(2).sum().item())\n")
    text = _cli(tmp_path, "train.py", "--steps", "2")
    assert text.returncode == 1
    assert text.stdout.startswith("step 0\n")  # the script's own output, then the report
    assert "train.py:15:5: AMP010 clip_grad_norm_ between" in text.stdout
    emulated = "" if torch.cuda.is_available() else " (CUDA emulated)"
    assert text.stdout.rstrip().endswith(f"Ran 2 optimizer steps on cpu{emulated} (stopped at the step limit).")
    if emulated:  # the report says so first, right after the script's own output
        report = text.stdout.split("step 1\n", 1)[1]
        assert report.startswith("CUDA emulated on the CPU: the script saw one CUDA device, and autocast('cuda') cast")
        cuda = _cli(tmp_path, "train.py", "--device", "cuda")
        assert cuda.returncode == 2 and cuda.stdout == ""
        assert "device='cuda' needs a GPU and this machine has none; device='auto' emulates CUDA" in cuda.stderr
    plain = _cli(tmp_path, "train.py", "--steps", "2", "--device", "cpu")
    assert plain.stdout.rstrip().endswith("Ran 2 optimizer steps on cpu (stopped at the step limit).")
    assert "CUDA emulated" not in plain.stdout
    assert _cli(tmp_path, "train.py", "--device", "tpu").returncode == 2
    as_json = _cli(tmp_path, "train.py", "--format", "json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["steps_run"] == 4  # stdout is the report alone
    assert "step 0" in as_json.stderr
    clean = _cli(tmp_path, "clean.py")
    assert (clean.returncode, clean.stdout.splitlines()[-2:]) == (
        0, ["no AMP findings to verify", f"Ran 0 optimizer steps on cpu{emulated}."]
    )
    assert _cli(tmp_path, "missing.py").returncode == 2
    assert _cli(tmp_path, "train.py", "--steps", "0").returncode == 2
    assert _cli(tmp_path, "train.py", "--format", "xml").returncode == 2


def test_script_arguments_after_the_double_dash_reach_the_script(tmp_path):
    write(tmp_path, "args.py", "import sys\nimport torch\nprint('ARGS', sys.argv[1:])\n")
    run = _cli(tmp_path, "args.py", "--steps", "3", "--", "--epochs", "1", "--steps", "9")
    assert run.returncode == 0
    assert "ARGS ['--epochs', '1', '--steps', '9']" in run.stdout


def test_flake8_configuration_and_noqa_decide_what_is_verified(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "setup.cfg", "[flake8]\nextend-ignore = AMP003\n")
    source = SCALED_SCRIPT.replace("max_norm=1.0)", "max_norm=1.0)  # noqa: AMP010")
    report = run_verify(tmp_path, source)
    assert [f.code for f in report.findings] == ["AMP001"]


def test_findings_in_the_project_modules_the_script_imports_are_verified(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_module = """
    import torch


    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x, mask):
            return self.proj(x).masked_fill(mask, -1e9)
    """
    script = """
    import torch
    from models.scorer import Scorer

    model = Scorer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(4, 8), torch.rand(4, 8) > 0.5)
        out.float().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    """
    report = run_verify(tmp_path, script, files={"models/__init__.py": "", "models/scorer.py": model_module})
    finding = verdict_of(report, "AMP007")
    assert finding.path == str(tmp_path / "models" / "scorer.py") and finding.line == 10
    assert finding.verdict is Outcome.NOT_OBSERVED  # bfloat16 holds -1e9
    assert finding.executions == 2


def test_a_missing_script_and_bad_limits_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such script"):
        verify(tmp_path / "missing.py")
    write(tmp_path, "train.py", "import torch\n")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        verify(tmp_path / "train.py", steps=0)
    with pytest.raises(ValueError, match="timeout must be positive"):
        verify(tmp_path / "train.py", timeout=-1)


def test_verify_leaves_a_watched_training_run_unchanged(tmp_path, monkeypatch):
    """The losses a script prints are the same bit for bit with and without verify."""
    monkeypatch.chdir(tmp_path)
    source = textwrap.dedent(SCALED_SCRIPT).replace('print("step", step)', "pass").replace(
        "optimizer.zero_grad()", "optimizer.zero_grad()\n    LOSSES.append(loss.item())"
    ).replace("import torch\n", "import torch\nLOSSES = []\n", 1) + "\nimport json, os\nopen(os.environ['LOSSES_OUT'], 'w').write(json.dumps(LOSSES))\n"
    script = write(tmp_path, "train.py", source)
    plain_out, verified_out = tmp_path / "plain.json", tmp_path / "verified.json"
    subprocess.run([sys.executable, str(script)], check=True, env={**os.environ, "LOSSES_OUT": str(plain_out)},
                   cwd=tmp_path)
    monkeypatch.setenv("LOSSES_OUT", str(verified_out))
    verify(script)
    assert json.loads(verified_out.read_text()) == json.loads(plain_out.read_text())


def test_the_readme_shows_verify_s_real_output_on_the_bundled_example():
    """The README's verify block is what verify prints on the example; its fixed twin runs clean."""
    repository = Path(__file__).resolve().parents[2]
    readme = (repository / "README.md").read_text()
    command = "flake8-amp verify examples/sensor_tagger_buggy.py --steps 20"
    assert command in readme
    block = readme.split(command, 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    run = subprocess.run([sys.executable, "-m", "flake8_amp.cli", *command.split()[1:]], capture_output=True,
                         text=True, cwd=repository)
    assert run.returncode == 1
    assert run.stdout.endswith(block)
    fixed = subprocess.run([sys.executable, "-m", "flake8_amp.cli", "verify", "examples/sensor_tagger_fixed.py",
                            "--steps", "20", "--format", "json"], capture_output=True, text=True, cwd=repository)
    report = json.loads(fixed.stdout)
    assert fixed.returncode == 0
    assert (report["findings"], report["nonfinite_origins"], report["scaler"]["skipped_steps"]) == ([], [], [])
    assert report["steps_run"] == 20


def test_an_error_is_recorded_even_after_many_exceptions_were_raised_and_freed(tmp_path, monkeypatch):
    """A regression: errors were remembered by id(), and a freed exception's id is soon reused, so the
    hazard's own error was taken for one already recorded and the finding read not_observed."""
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, """
import torch

scores = torch.ones(2, 2, dtype=torch.float16)
mask = torch.eye(2, dtype=torch.bool)
for attempt in range(50):  # a hazard the script raises, catches and frees, again and again
    try:
        scores.masked_fill(mask, -1e9)
    except RuntimeError:
        pass
try:
    scores.masked_fill(mask, 1e9)  # another line's: its own error must be recorded
except RuntimeError:
    pass
""")
    assert [(f.code, f.line, f.verdict.value) for f in report.findings] == [
        ("AMP007", 7, "confirmed"), ("AMP007", 11, "confirmed")
    ]
    assert "value cannot be converted to type c10::Half without overflow" in report.findings[1].evidence


def test_a_failure_inside_the_recorder_never_reaches_the_script(tmp_path, monkeypatch):
    from flake8_amp.runtime.verification import recorder

    def broken(tensor):
        raise RuntimeError("measuring failed")

    monkeypatch.setattr(recorder, "_max_abs", broken)
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, SCALED_SCRIPT)
    assert report.script_error is None and report.steps_run == 4
    assert report.recorder_error == "step 0: RuntimeError: measuring failed"
    assert "verify stopped measuring at step 0: RuntimeError: measuring failed" in str(report)
    assert json.loads(report.to_json())["recorder_error"] == "step 0: RuntimeError: measuring failed"


CUDA_SCRIPT = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cuda")
criterion = nn.BCELoss()
for step in range(3):
    x = torch.randn(8, 16, device="cuda")
    y = torch.rand(8, 1, device="cuda").round()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(torch.sigmoid(model(x)), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_cuda_machine_verify_runs_the_script_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, CUDA_SCRIPT)
    assert report.device.startswith("cuda") and report.emulated is False
    finding = verdict_of(report, "AMP002")
    assert (finding.line, finding.col, finding.verdict) == (9, 13, Outcome.CONFIRMED)
    assert "unsafe to autocast" in finding.evidence and "(the script stopped here)" in finding.evidence
    assert report.script_error.type == "RuntimeError" and report.script_error.line == 14


def test_a_torch_the_recorder_cannot_instrument_is_a_clear_error_and_nothing_runs(tmp_path, monkeypatch):
    from flake8_amp.runtime.verification.recorder import Recorder

    def broken(self):
        raise AttributeError("module 'torch.autograd' has no attribute '_engine_run_backward'")

    monkeypatch.setattr(Recorder, "_patch_engine", broken)
    monkeypatch.chdir(tmp_path)
    before = (torch.save, torch.nn.Module.__init__, torch.amp.GradScaler.step, sys.gettrace())
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError, match="cannot instrument torch .*_engine_run_backward"):
        run_verify(tmp_path, f"import torch\nopen({str(marker)!r}, 'w').close()\n")
    assert not marker.exists()
    assert (torch.save, torch.nn.Module.__init__, torch.amp.GradScaler.step, sys.gettrace()) == before


def test_an_optimizer_that_writes_inf_into_the_weights_is_the_origin(tmp_path, monkeypatch):
    """The step's own ops run unwatched; its result is read per weight, and verify's own reads never show
    up as the script's ops."""
    monkeypatch.chdir(tmp_path)
    source = """
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=float("inf"))
    for step in range(3):
        model(torch.randn(2, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    """
    report = run_verify(tmp_path, source)
    forward = [o for o in report.nonfinite_origins if o.phase == "forward"]
    assert [(o.line, o.op, o.step, o.kind) for o in forward] == [(8, "SGD.step", 0, "inf")]
    assert report.steps_run == 3
