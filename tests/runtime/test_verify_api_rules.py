"""``runtime.verify`` on AMP002, AMP006, AMP013 and AMP014, and the first NaN/Inf it reports.

Each rule gets a small CPU script run three ways: the hazard happening (confirmed, with its evidence), the
flagged line running harmlessly (not_observed, with the margin it had), and the flagged line never running
(not_reached). The line and column of each finding are the ones ``flake8 --select AMP`` prints.
"""

from __future__ import annotations

import os
import re

import pytest

torch = pytest.importorskip("torch")

from verify_runs import run_verify, verdict_of  # noqa: E402

from flake8_amp.rules import RULES_BY_CODE  # noqa: E402
from flake8_amp.runtime.evidence import LineEvidence, Outcome, RunEvidence  # noqa: E402

# ---------------------------------------------------------------------------------------------- AMP002
# BCELoss is created at line 6 and followed to its calls. CPU autocast runs binary_cross_entropy in float32
# (CUDA autocast raises), so on CPU the hazard is float16 probabilities that saturated to exactly 0 or 1:
# large logits (scale 100) saturate the float16 sigmoid, small ones (scale 1) do not.
AMP002_SCRIPT = """
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
criterion = torch.nn.BCELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scale = float(sys.argv[1])
for step in range(3):
    x = torch.randn(16, 8) * scale
    y = torch.rand(16, 1).round()
    with torch.autocast("cpu", dtype=torch.float16):
        probs = torch.sigmoid(model(x))
        if scale > 0:
            loss = criterion(probs, y)
        else:
            loss = probs.mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""
# float16 rounds a probability to exactly 1 within half an ulp below 1: 2**-12
FLOAT16_SATURATION = 2.0**-12


def test_amp002_confirmed_when_float16_probabilities_saturate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP002_SCRIPT, args=["100"])
    finding = verdict_of(report, "AMP002")
    assert (finding.line, finding.col) == (6, 13)
    assert finding.verdict is Outcome.CONFIRMED, report
    match = re.search(r"(\d+) of (\d+) float16/bfloat16 probabilities were exactly 0 or 1", finding.evidence)
    assert match, finding.evidence
    assert 0 < int(match[1]) <= int(match[2])
    assert "under autocast" in finding.evidence


def test_amp002_not_observed_reports_the_distance_to_saturation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP002_SCRIPT, args=["1"])
    finding = verdict_of(report, "AMP002")
    assert (finding.line, finding.col) == (6, 13)
    assert finding.verdict is Outcome.NOT_OBSERVED, report
    assert finding.evidence.startswith("3 calls, 3 under autocast (float16 probabilities, none saturated")
    assert "CUDA autocast raises on this call" in finding.evidence
    margin = float(re.search(r"the closest (\S+) from 0 or 1", finding.evidence)[1])
    assert FLOAT16_SATURATION < margin < 0.5


def test_amp002_not_reached_when_the_loss_is_never_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP002_SCRIPT, args=["0"])
    finding = verdict_of(report, "AMP002")
    assert (finding.line, finding.col) == (6, 13)
    assert finding.verdict is Outcome.NOT_REACHED
    assert finding.evidence == "created (1 runs) but binary_cross_entropy never ran"


# ---------------------------------------------------------------------------------------------- AMP006
# Neither method is decorated: under autocast the forward's matmul returns float16, and the backward runs
# with autocast off, multiplying the float16 gradient by the float32 weight. The finding on `def forward`
# (line 7) stands for the method and its backward; the backward has its own finding (line 12).
# "upcast": the backward casts the gradient to float32 itself (harmless); "skip": the Function is never used.
AMP006_SCRIPT = """
import sys
import torch


class MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        if UPCAST:
            grad = grad.float()
        return grad @ w.t(), x.t() @ grad


mode = sys.argv[1]
UPCAST = mode == "upcast"
torch.manual_seed(0)
w = torch.nn.Parameter(torch.randn(8, 4) * 0.1)
optimizer = torch.optim.SGD([w], lr=0.1)
for step in range(3):
    x = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        out = MatMul.apply(x, w) if mode != "skip" else x @ w
        loss = out.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""
DTYPE_ERROR = 'step 0: RuntimeError "expected m1 and m2 to have the same dtype, but got: c10::Half != float"'


def test_amp006_confirmed_by_the_dtype_error_in_backward(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP006_SCRIPT, args=["amp"])
    forward = verdict_of(report, "AMP006", 7)
    backward = verdict_of(report, "AMP006", 12)
    assert forward.col == backward.col == 5
    # the error is raised in backward (line 16), and the forward's finding stands for its backward
    assert report.script_error is not None and report.script_error.line == 16
    for finding in (forward, backward):
        assert finding.verdict is Outcome.CONFIRMED, report
        assert finding.evidence == f"{DTYPE_ERROR} (the script stopped here)"


def test_amp006_not_observed_when_backward_casts_the_gradient(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP006_SCRIPT, args=["upcast"])
    assert report.script_error is None and report.steps_run == 3
    forward = verdict_of(report, "AMP006", 7)
    assert forward.col == 5
    assert forward.verdict is Outcome.NOT_OBSERVED, report
    # forward: 1 matmul a step, with autocast on; backward: float, t, matmul, t, matmul, with autocast off
    assert forward.evidence == ("steps 0-2, 3 runs: 18 ops, 3 with autocast on (producing float16); "
                                "inputs float16/float32; no dtype error in forward or backward")
    backward = verdict_of(report, "AMP006", 12)
    assert backward.verdict is Outcome.NOT_OBSERVED
    assert backward.evidence.startswith("steps 0-2, 3 runs: 15 ops, 0 with autocast on")


def test_amp006_not_reached_when_the_function_is_never_applied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP006_SCRIPT, args=["skip"])
    for line in (7, 12):
        finding = verdict_of(report, "AMP006", line)
        assert finding.col == 5
        assert finding.verdict is Outcome.NOT_REACHED
        assert finding.evidence == "the line did not run"


# ---------------------------------------------------------------------------------------------- AMP013
# Three findings: the import of torch.cuda.amp.custom_fwd (line 3, reported once, not at its uses), a call
# of torch.cuda.amp.GradScaler (line 22) and a reference to it that is no call (line 23: isinstance issues
# no warning). The import is confirmed by the warning its name draws where it is used (line 9).
AMP013_SCRIPT = """
import sys
import torch
from torch.cuda.amp import custom_fwd

mode = sys.argv[1]
if mode == "custom":
    class Double(torch.autograd.Function):
        @staticmethod
        @custom_fwd
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=False)
if mode == "cuda":
    scaler = torch.cuda.amp.GradScaler(enabled=False)
print(isinstance(scaler, torch.cuda.amp.GradScaler))
for step in range(2):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""
GRAD_SCALER_WARNING = ("FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated. "
                       "Please use `torch.amp.GradScaler('cuda', args...)` instead.")


def _amp013(report):
    findings = {f.line: f for f in report.findings if f.code == "AMP013"}
    assert sorted((f.line, f.col) for f in findings.values()) == [(3, 28), (22, 14), (23, 26)], report
    return findings


def test_amp013_confirmed_by_the_future_warning_at_the_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    findings = _amp013(run_verify(tmp_path, AMP013_SCRIPT, args=["cuda"]))
    assert findings[22].verdict is Outcome.CONFIRMED
    assert findings[22].evidence == f"step 0, 1 runs: {GRAD_SCALER_WARNING}"
    # flagged but harmless: isinstance against the deprecated class runs without a warning
    assert findings[23].verdict is Outcome.NOT_OBSERVED
    assert findings[23].evidence.startswith("step 0, 1 runs: no deprecation warning was issued here")
    # imported, never called: no warning anywhere in the run
    assert findings[3].verdict is Outcome.NOT_OBSERVED
    assert findings[3].evidence == ("step 0, 1 runs: imported, but torch.cuda.amp.custom_fwd issued no "
                                    "deprecation warning in the run (never called)")


def test_amp013_import_confirmed_by_the_warning_at_its_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    findings = _amp013(run_verify(tmp_path, AMP013_SCRIPT, args=["custom"]))
    assert findings[3].verdict is Outcome.CONFIRMED
    assert findings[3].evidence.startswith("imported here (step 0, 1 runs), called at train.py:9: FutureWarning: "
                                           "`torch.cuda.amp.custom_fwd(args...)` is deprecated.")
    assert findings[22].verdict is Outcome.NOT_REACHED
    assert findings[22].evidence == "the line did not run"


# ---------------------------------------------------------------------------------------------- AMP014
# A project module whose Function decorates forward with @torch.amp.custom_fwd without device_type: the
# decorator raises TypeError when the module is imported. No not_observed run exists on torch 2.13:
# device_type is a required keyword-only argument of custom_fwd/custom_bwd, so every evaluation of the
# flagged decorator raises (a run of the line is the hazard). The rule's verdict for a torch that accepted
# it is checked on hand-made evidence below.
AMP014_MODULE = """
import torch


class Scale(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd
    def forward(ctx, x):
        return x * 2

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        return grad * 2
"""
AMP014_SCRIPT = """
import sys
import torch

if sys.argv[1] == "custom":
    import ops
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(2):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def test_amp014_confirmed_by_the_type_error_at_import(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP014_SCRIPT, args=["custom"], files={"ops.py": AMP014_MODULE})
    finding = verdict_of(report, "AMP014")
    assert os.path.basename(finding.path) == "ops.py"
    assert (finding.line, finding.col) == (6, 6)
    assert finding.verdict is Outcome.CONFIRMED
    assert finding.evidence == ("step 0: TypeError \"custom_fwd() missing 1 required keyword-only argument: "
                                "'device_type'\" (the script stopped here)")
    assert report.script_error.type == "TypeError" and report.steps_run == 0


def test_amp014_not_reached_when_the_module_is_not_imported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, AMP014_SCRIPT, args=["plain"], files={"ops.py": AMP014_MODULE})
    finding = verdict_of(report, "AMP014")
    assert (finding.line, finding.col) == (6, 6)
    assert finding.verdict is Outcome.NOT_REACHED
    assert report.script_error is None and report.steps_run == 2


def test_amp014_not_observed_where_the_decorator_raised_nothing():
    evidence = LineEvidence("ops.py", 6, executions=1, first_step=0, last_step=0)
    verdict = RULES_BY_CODE["AMP014"].verify(evidence, RunEvidence())
    assert verdict.outcome is Outcome.NOT_OBSERVED
    assert verdict.evidence == "step 0, 1 runs: the decorator raised no error (this torch accepts it)"


# ------------------------------------------------------------------------------------ non-finite origins
NONFINITE_FORWARD = """
import torch

torch.manual_seed(0)
fc = torch.nn.Linear(8, 8)
head = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD([*fc.parameters(), *head.parameters()], lr=0.01)


def forward(x, step):
    h = fc(x)
    if step == 3:
        h = h * 1e5
    return head(torch.relu(h))


for step in range(5):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = forward(torch.randn(16, 8), step).float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def _origin(report, phase):
    origins = [o for o in report.nonfinite_origins if o.phase == phase]
    assert len(origins) == 1, report.nonfinite_origins
    return origins[0]


def test_forward_origin_is_the_float16_overflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, NONFINITE_FORWARD)
    origin = _origin(report, "forward")
    assert (origin.path, origin.line) == (os.path.realpath(tmp_path / "train.py"), 12)
    assert (origin.op, origin.step, origin.kind) == ("mul", 3, "inf")
    assert origin.flagged  # AMP007: 1e5 overflows float16
    # its input range: h, finite, and above 65504 / 1e5 where the product overflowed
    [h_max] = origin.inputs_max_abs
    assert 65504 / 1e5 < h_max < 100
    assert f"(forward, step 3, Inf; inputs max |x| {h_max:.3g}) -- a flagged line" in str(report)
    assert _origin(report, "backward").step == 3  # what the Inf did to the gradients, the same step


# sqrt at 0 is finite (0) while its gradient, 0.5 / sqrt(0), is Inf: only backward goes non-finite. The
# GradScaler skips that step, so the parameters, and the later forwards, stay finite.
NONFINITE_BACKWARD = """
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu")
for step in range(4):
    h = model(torch.randn(8, 4))
    if step == 2:
        h = torch.sqrt(h - h.detach())
    loss = h.sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_backward_origin_names_the_forward_line_of_the_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, NONFINITE_BACKWARD)
    origin = _origin(report, "backward")
    assert (origin.path, origin.line) == (os.path.realpath(tmp_path / "train.py"), 10)
    assert (origin.op, origin.phase, origin.step, origin.kind) == ("sqrt", "backward", 2, "inf")
    assert not origin.flagged
    assert [o.phase for o in report.nonfinite_origins] == ["backward"]
    assert report.skipped_steps == [2] and report.steps_run == 4


# A custom Function whose backward divides by its input: the Inf is made by an op of the backward itself
# (line 13), which the origin names, rather than the line that applied the Function.
NONFINITE_CUSTOM_BACKWARD = """
import torch


class ClampedLog(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=1e-6).log()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x


torch.manual_seed(0)
model = torch.nn.Linear(4, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu")
for step in range(4):
    h = torch.sigmoid(model(torch.randn(8, 4)))
    if step == 1:
        h = h * 0
    loss = ClampedLog.apply(h).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_backward_origin_inside_a_custom_function_backward(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, NONFINITE_CUSTOM_BACKWARD)
    origin = _origin(report, "backward")
    assert (origin.path, origin.line) == (os.path.realpath(tmp_path / "train.py"), 13)
    assert (origin.op, origin.step, origin.kind) == ("div", 1, "inf")
    assert [o.phase for o in report.nonfinite_origins] == ["backward"]


CLEAN = """
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
amp = sys.argv[1] == "amp"
scaler = torch.amp.GradScaler("cpu", enabled=amp)
for step in range(4):
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize("mode", ["fp32", "amp"])
def test_clean_run_has_no_nonfinite_origin(tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, CLEAN, args=[mode])
    assert report.script_error is None
    assert report.steps_run == 4 and report.skipped_steps == []
    assert report.nonfinite_origins == []
    if mode == "amp":
        assert report.scales and all(scale == 65536.0 for scale in report.scales)
