"""``runtime.verify`` on the training-loop rules (AMP010, AMP011, AMP012, AMP015, AMP016, AMP017, AMP019,
AMP020): for each, a small CPU training script that the linter flags, run once where the hazard happens
(confirmed), once where the flagged line runs but does no harm on that data or configuration
(not_observed), and once where the flagged line never runs (not_reached)."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from verify_runs import run_verify, verdict_of  # noqa: E402

from flake8_amp.runtime.evidence import Outcome  # noqa: E402

CONFIRMED, NOT_OBSERVED, NOT_REACHED = Outcome.CONFIRMED, Outcome.NOT_OBSERVED, Outcome.NOT_REACHED


def number(pattern: str, text: str) -> float:
    """The number that ``pattern``'s one group finds in ``text``."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match.group(1))


def check(tmp_path, monkeypatch, script, args, code, line, col, outcome, files=None):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, script, args=args, files=files)
    print(report)
    finding = verdict_of(report, code, line)
    assert (finding.line, finding.col) == (line, col)
    assert finding.verdict is outcome, finding.evidence
    return finding.evidence


# ---------------------------------------------------------------------------------------------- AMP010
# clip_grad_norm_ right after scaler.scale(loss).backward(): the clip sees the norm times 65536.
AMP010_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
use_amp, max_norm = sys.argv[1] == "amp", float(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
for step in range(3):
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.float16, enabled=use_amp):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_amp010_confirmed_clip_on_scaled_gradients(tmp_path, monkeypatch):
    evidence = check(tmp_path, monkeypatch, AMP010_SCRIPT, ["amp", "1.0"], "AMP010", 16, 9, CONFIRMED)
    assert evidence.startswith("step 0: clip saw a total norm of ")
    assert "at scale 6.55e+04" in evidence
    scaled = number(r"total norm of (\S+) at scale", evidence)
    unscaled = number(r"\((\S+) unscaled\)", evidence)
    assert unscaled < 1.0 < scaled  # the real norm needed no clipping; the scaled one was clipped
    assert scaled == pytest.approx(unscaled * 65536, rel=0.01)
    assert "it shrank gradients whose real norm is under max_norm=1 by " in evidence


def test_amp010_not_observed_scaler_disabled(tmp_path, monkeypatch):
    evidence = check(tmp_path, monkeypatch, AMP010_SCRIPT, ["off", "1.0"], "AMP010", 16, 9, NOT_OBSERVED)
    assert evidence.startswith("3 clips, all on unscaled gradients (the GradScaler was disabled or unscale_ ran first)")
    assert number(r"total norm at most (\S+),", evidence) < 1.0
    assert evidence.endswith("max_norm=1")


def test_amp010_not_observed_clip_never_acted(tmp_path, monkeypatch):
    # a safety-net threshold above even the scaled norm: clipping scaled gradients changed nothing
    evidence = check(tmp_path, monkeypatch, AMP010_SCRIPT, ["amp", "1e6"], "AMP010", 16, 9, NOT_OBSERVED)
    assert evidence.startswith("3 clips on scaled gradients, but the clip never acted: total norm at most ")
    assert 1e4 < number(r"total norm at most (\S+) at scale", evidence) < 1e6
    assert evidence.endswith("at scale 6.55e+04, under max_norm=1.0e+06")


def test_amp010_not_reached(tmp_path, monkeypatch):
    evidence = check(tmp_path, monkeypatch, AMP010_SCRIPT, ["amp", "0"], "AMP010", 16, 9, NOT_REACHED)
    assert evidence == "the line did not run"


# ---------------------------------------------------------------------------------------------- AMP011
# Gradient accumulation with scaler.update() outside the accumulation condition.
AMP011_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
accumulation_steps, epochs = int(sys.argv[1]), int(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(4)]
for epoch in range(epochs):
    for i, (x, y) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y) / accumulation_steps
        scaler.scale(loss).backward()
        if (i + 1) % accumulation_steps == 0:
            scaler.step(optimizer)
            optimizer.zero_grad()
        scaler.update()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        # the first micro-batch has no step: update() raises
        (["2", "1"], CONFIRMED,
         'step 0: AssertionError "No inf checks were recorded prior to update." (the script stopped here)'),
        # no accumulation: every iteration steps, so every update() follows a step()
        (["1", "1"], NOT_OBSERVED, "steps 1-4, 4 runs: 4 updates, each after a scaler.step()"),
        (["2", "0"], NOT_REACHED, "the line did not run"),
    ],
    ids=["confirmed", "not_observed", "not_reached"],
)
def test_amp011(tmp_path, monkeypatch, args, outcome, evidence):
    assert check(tmp_path, monkeypatch, AMP011_SCRIPT, args, "AMP011", 19, 9, outcome) == evidence


# ---------------------------------------------------------------------------------------------- AMP012
# backward() inside the autocast block. A custom Function whose forward is custom_fwd(cast_inputs=float32)
# but whose backward lacks custom_bwd runs its backward under the caller's autocast: its matmul comes out
# float16 and meets the float32 gradient buffer.
AMP012_SCRIPT = """
import sys
import torch
import torch.nn.functional as F
from torch.amp import custom_fwd


class FactorizedEmbedding(torch.autograd.Function):
    \"\"\"table[ids] @ proj, with a sparse (index_add_) gradient for the table.\"\"\"

    @staticmethod
    @custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, table, ids, proj):
        ctx.save_for_backward(table, ids, proj)
        return table[ids] @ proj

    @staticmethod
    def backward(ctx, grad):
        table, ids, proj = ctx.saved_tensors
        grad_table = torch.zeros_like(table)
        grad_table.index_add_(0, ids, grad @ proj.t())
        return grad_table, None, table[ids].t() @ grad


torch.manual_seed(0)
embedding, epochs = sys.argv[1], int(sys.argv[2])
table = torch.nn.Parameter(torch.randn(100, 8) * 0.1)
proj = torch.nn.Parameter(torch.randn(8, 32) * 0.1)
head = torch.nn.Linear(32, 4)
optimizer = torch.optim.SGD([table, proj, *head.parameters()], lr=0.1)
scaler = torch.amp.GradScaler("cpu")
for epoch in range(epochs):
    ids, y = torch.randint(0, 100, (32,)), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.float16):
        if embedding == "sparse":
            features = FactorizedEmbedding.apply(table, ids, proj)
        else:
            features = F.embedding(ids, table) @ proj
        loss = F.cross_entropy(head(features), y)
        scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["sparse", "2"], CONFIRMED,
         'step 0: backward under autocast raised RuntimeError "index_add_(): self (Float) and source (Half) must '
         'have the same scalar type" (the script stopped here)'),
        # built-in ops only: their backward runs in the dtypes their forward chose, autocast or not
        (["dense", "2"], NOT_OBSERVED,
         "steps 0-1, 2 runs: backward ran 2 times, 2 with autocast on, and raised no dtype error under autocast"),
        (["dense", "0"], NOT_REACHED, "the line did not run"),
    ],
    ids=["confirmed", "not_observed", "not_reached"],
)
def test_amp012(tmp_path, monkeypatch, args, outcome, evidence):
    assert check(tmp_path, monkeypatch, AMP012_SCRIPT, args, "AMP012", 39, 9, outcome) == evidence


# ---------------------------------------------------------------------------------------------- AMP015
# A model cast to float16 trained by a torch.optim optimizer: no float32 master weights.
AMP015_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
name, lr = sys.argv[1], float(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
model.half()
if name == "sgd":
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
else:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
for step in range(3):
    x, y = torch.randn(32, 16, dtype=torch.float16), torch.randint(0, 4, (32,))
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def test_amp015_confirmed_updates_round_away(tmp_path, monkeypatch):
    # lr=1e-4: almost every update is below half a float16 ulp of its weight
    evidence = check(tmp_path, monkeypatch, AMP015_SCRIPT, ["sgd", "1e-4"], "AMP015", 10, 17, CONFIRMED)
    assert evidence.startswith("3 steps: ")
    assert number(r"steps: (\S+)% of the updates", evidence) > 90
    assert re.search(r"vanished in rounding \(\d+ of 2028\)$", evidence), evidence


def test_amp015_confirmed_adam_turns_weights_nan(tmp_path, monkeypatch):
    # the other optimizer of the same script: Adam's eps=1e-8 is 0 in float16
    evidence = check(tmp_path, monkeypatch, AMP015_SCRIPT, ["adam", "1e-3"], "AMP015", 12, 17, CONFIRMED)
    assert evidence.startswith("3 steps: ")
    assert number(r"; (\d+) weights became NaN/Inf", evidence) > 0


def test_amp015_not_observed_large_updates(tmp_path, monkeypatch):
    # lr=0.5: the updates are large enough for float16 weights to take almost all of them
    evidence = check(tmp_path, monkeypatch, AMP015_SCRIPT, ["sgd", "0.5"], "AMP015", 10, 17, NOT_OBSERVED)
    assert evidence.startswith("3 steps: ")
    assert number(r"steps: (\S+)% of the updates", evidence) < 1
    assert evidence.endswith("(threshold 1%)")


def test_amp015_not_reached(tmp_path, monkeypatch):
    evidence = check(tmp_path, monkeypatch, AMP015_SCRIPT, ["adam", "1e-3"], "AMP015", 10, 17, NOT_REACHED)
    assert evidence == "the line did not run"


# ---------------------------------------------------------------------------------------------- AMP016
# float16 autocast, backward() and no GradScaler. The linter flags CUDA regions only, so the script opens
# the CUDA region and, where there is no GPU, the same region on the CPU: it trains in float16 either way.
AMP016_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
use_cuda = torch.cuda.is_available()
device = "cuda" if use_cuda else "cpu"
loss_weight, epochs = float(sys.argv[1]), int(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for epoch in range(epochs):
    x = torch.randn(64, 16, device=device)
    y = x[:, :1].sin()
    with (
        torch.autocast("cuda", dtype=torch.float16, enabled=use_cuda),
        torch.autocast("cpu", dtype=torch.float16, enabled=not use_cuda),
    ):
        loss = F.mse_loss(model(x), y) * loss_weight
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the script trains on the CPU only where there is no GPU")
def test_amp016_confirmed_gradients_go_subnormal(tmp_path, monkeypatch):
    # a loss weighted 1e-3 (an auxiliary loss): nearly every float16 gradient is below 6.1e-05
    evidence = check(tmp_path, monkeypatch, AMP016_SCRIPT, ["1e-3", "3"], "AMP016", 14, 5, CONFIRMED)
    assert number(r"^(\S+)% of \d+ non-zero float16 gradients were below 6.1e-05 \(subnormal\)", evidence) > 90
    assert number(r"smallest \|g\| (\S+)$", evidence) < 1e-7  # the smallest float16 subnormal is 6e-08


@pytest.mark.skipif(torch.cuda.is_available(), reason="the script trains on the CPU only where there is no GPU")
def test_amp016_not_observed_large_gradients(tmp_path, monkeypatch):
    # a loss weighted 16: the gradients sit well inside float16's normal range
    evidence = check(tmp_path, monkeypatch, AMP016_SCRIPT, ["16", "3"], "AMP016", 14, 5, NOT_OBSERVED)
    assert number(r"^(\S+)% of \d+ non-zero float16 gradients were below 6.1e-05", evidence) < 1
    assert number(r"smallest \|g\| (\S+) \(threshold 1%\)$", evidence) > 6.1e-7


def test_amp016_not_reached(tmp_path, monkeypatch):
    evidence = check(tmp_path, monkeypatch, AMP016_SCRIPT, ["1", "0"], "AMP016", 14, 5, NOT_REACHED)
    assert evidence == "the line did not run"


# ---------------------------------------------------------------------------------------------- AMP017
# A GradScaler next to bfloat16 autocast. The model runs its forward under autocast in the dtype it is
# configured with (in model.py, not a literal): in float16 the scaler has work after all.
AMP017_MODEL = """
import torch


class Net(torch.nn.Module):
    \"\"\"A classifier whose forward runs under autocast in the dtype it was configured with.\"\"\"

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x):
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.body(x)
"""

AMP017_SCRIPT = """
import sys
import torch
import torch.nn.functional as F
from model import Net

torch.manual_seed(0)
precision = sys.argv[1]
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
model = Net(dtype)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = None
if precision != "32":
    scaler = torch.amp.GradScaler("cpu")
for step in range(3):
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
        loss = F.cross_entropy(model(x), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "precision, outcome, evidence",
    [
        ("bf16", CONFIRMED, "3 steps: autocast ran bfloat16 ops only; the scaler scaled for nothing "
                            "(0 skipped steps, scale 6.55e+04 -> 6.55e+04)"),
        ("fp16", NOT_OBSERVED, "autocast ran float16 ops in this run: the scaler has work "
                               "(0 skipped steps, scale 6.55e+04 -> 6.55e+04)"),
        ("32", NOT_REACHED, "the line did not run"),
    ],
    ids=["confirmed", "not_observed", "not_reached"],
)
def test_amp017(tmp_path, monkeypatch, precision, outcome, evidence):
    found = check(tmp_path, monkeypatch, AMP017_SCRIPT, [precision], "AMP017", 13, 14, outcome,
                  files={"model.py": AMP017_MODEL})
    assert found == evidence


# ---------------------------------------------------------------------------------------------- AMP019
# Two optimizers: the backbone's stepped through the scaler, the head's directly, on scaled gradients.
AMP019_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
use_amp, epochs = sys.argv[1] == "amp", int(sys.argv[2])
backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
head = torch.nn.Linear(32, 4)
backbone_optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01)
head_optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
for epoch in range(epochs):
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.float16, enabled=use_amp):
        loss = F.cross_entropy(head(backbone(x)), y)
    scaler.scale(loss).backward()
    scaler.step(backbone_optimizer)
    head_optimizer.step()
    scaler.update()
    backbone_optimizer.zero_grad()
    head_optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        # the head takes steps 65536 times too large: its logits overflow and the scaler skips steps
        (["amp", "3"], CONFIRMED, "step 1: the optimizer stepped on gradients still scaled by 6.55e+04, with no inf "
                                  "check (3 times); the GradScaler skipped 2 steps"),
        (["off", "3"], NOT_OBSERVED, "steps 1-6, 3 runs: the GradScaler was disabled in this run"),
        (["amp", "0"], NOT_REACHED, "the line did not run"),
    ],
    ids=["confirmed", "not_observed", "not_reached"],
)
def test_amp019(tmp_path, monkeypatch, args, outcome, evidence):
    assert check(tmp_path, monkeypatch, AMP019_SCRIPT, args, "AMP019", 18, 5, outcome) == evidence


# ---------------------------------------------------------------------------------------------- AMP020
# A checkpoint without the scaler's state. With the loss computed on float16 logits outside autocast,
# the first step overflows and the scale halves: a resume would restart it at 65536.
AMP020_SCRIPT = """
import sys
import torch
import torch.nn.functional as F

torch.manual_seed(0)
precision, epochs, save_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
use_amp = precision != "32"
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
for epoch in range(epochs):
    for batch in range(2):
        x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
        with torch.autocast("cpu", dtype=torch.float16, enabled=use_amp):
            logits = model(x)
        if precision == "16-fp32-loss":
            logits = logits.float()
        loss = F.cross_entropy(logits, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    if (epoch + 1) % save_every == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, "last.pt")
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["16", "2", "1"], CONFIRMED, "step 2: torch.save wrote a checkpoint without the GradScaler's state at loss "
                                      "scale 3.28e+04: a resume restarts at 6.55e+04 (2 of 2 saves)"),
        # the loss in float32: no overflow, the scale never left 65536, and a resume loses nothing of it
        (["16-fp32-loss", "2", "1"], NOT_OBSERVED,
         "2 saves without the GradScaler's state, but the loss scale was still at its initial 6.55e+04 at each: "
         "a resume restarts at the same scale (only the growth tracker is lost)"),
        (["32", "2", "1"], NOT_OBSERVED, "2 saves; the GradScaler was disabled in this run"),
        (["16", "2", "5"], NOT_REACHED, "the line did not run"),
    ],
    ids=["confirmed", "not_observed-scale_unchanged", "not_observed-scaler_disabled", "not_reached"],
)
def test_amp020(tmp_path, monkeypatch, args, outcome, evidence):
    assert check(tmp_path, monkeypatch, AMP020_SCRIPT, args, "AMP020", 24, 9, outcome) == evidence
