"""``verify`` on the rules whose hazard is a number (AMP001, AMP003, AMP004, AMP005, AMP007, AMP008, AMP009,
AMP018): for each, one small CPU training script, run with arguments that make the flagged line's hazard
happen (confirmed), run it harmlessly (not_observed, with the margins in the evidence), or skip it
(not_reached). Every script is one flake8 really flags at the asserted line and column."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from verify_runs import run_verify, verdict_of  # noqa: E402

from flake8_amp.runtime.evidence import Outcome  # noqa: E402

CONFIRMED, NOT_OBSERVED, NOT_REACHED = Outcome.CONFIRMED, Outcome.NOT_OBSERVED, Outcome.NOT_REACHED


def check(tmp_path, monkeypatch, script, args, code, site, outcome, evidence):
    monkeypatch.chdir(tmp_path)
    report = run_verify(tmp_path, script, args=args)
    print(report)
    finding = verdict_of(report, code)
    assert (finding.line, finding.col) == site
    assert finding.verdict is outcome, finding.evidence
    for part in evidence:
        assert part in finding.evidence
    return report, finding


# AMP001: batches kept in float16 "to save memory", then fed to the autocast forward. The cast flushes
# features below float16's smallest subnormal to 0 and turns those above 65504 into inf.
AMP001_SCRIPT = """
import sys

import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
scale = float(sys.argv[1])  # magnitude of the features
compact = sys.argv[2] == "compact"  # keep batches in half the memory

for step in range(3):
    x = torch.randn(32, 16) * scale
    y = torch.randint(0, 4, (32,))
    if compact:
        x = x.half()
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        # randn * 1e-6: the values under 2**-25 (2.98e-8) round to 0
        (["1e-6", "compact"], CONFIRMED, ["steps 0-2, 3 runs: ", "2.3% of non-zero values became 0",
                                          "max |x| 3.5e-06"]),
        # randn * 1e5: everything above 65504 becomes inf
        (["1e5", "compact"], CONFIRMED, ["steps 0-2, 3 runs: 779 finite values became inf", "max |x| 3.5e+05",
                                         "(headroom 0.188x)"]),
        (["1.0", "compact"], NOT_OBSERVED, ["steps 0-2, 3 runs: 0% of non-zero values became 0",
                                            "max |x| 3.48 (headroom 1.88e+04x) over 1536 values"]),
        (["1.0", "full"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["underflow", "overflow", "harmless", "not-reached"],
)
def test_amp001_manual_half_cast(tmp_path, monkeypatch, args, outcome, evidence):
    check(tmp_path, monkeypatch, AMP001_SCRIPT, args, "AMP001", (17, 13), outcome, evidence)


# AMP003: the cross-entropy of float16 logits, computed after the autocast block, is a float16 loss. With raw
# (unnormalised) features its sum overflows float16; with GradScaler's default scale (65536) its own
# gradient is inf.
AMP003_SCRIPT = """
import sys

import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
feature_scale, init_scale, objective = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)

for step in range(3):
    x = torch.randn(256, 8) * feature_scale
    y = torch.randint(0, 10, (256,))
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(x)
        if objective == "nll":
            loss = F.nll_loss(F.log_softmax(logits.float(), dim=-1), y)
    if objective == "ce":
        loss = F.cross_entropy(logits, y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["1000", "1024", "ce"], CONFIRMED, ["step 0: cross_entropy produced Inf in forward"]),
        (["1", "65536", "ce"], CONFIRMED, ["the loss was float16 and the GradScaler's scale reached 6.55e+04",
                                           "its gradient overflows float16 (max 65504)"]),
        (["1", "1024", "ce"], NOT_OBSERVED, ["steps 0-2, 3 runs: cross_entropy in float16 vs float32",
                                             "relative error 8.6e-04", "0% of non-zero results became 0",
                                             "(thresholds: 0.01 relative, 0.1% flushed)"]),
        (["1", "1024", "nll"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["overflow", "scaled-gradient", "harmless", "not-reached"],
)
def test_amp003_loss_outside_autocast(tmp_path, monkeypatch, args, outcome, evidence):
    report, _ = check(tmp_path, monkeypatch, AMP003_SCRIPT, args, "AMP003", (20, 16), outcome, evidence)
    if args[1] == "65536":  # the inf gradient of the float16 loss made the GradScaler skip the first step
        assert report.skipped_steps[:1] == [0]


# AMP004: attention pooling whose softmax CPU autocast leaves in float16. Sharp scores (a low temperature)
# give probabilities float32 keeps and float16 flushes to 0.
# Attention pooling: argv[2] picks the softmax line the rule flags or a sigmoid; argv[1] is the temperature.
ATTENTION_POOL_SCRIPT = """
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class AttentionPool(nn.Module):
    def __init__(self, dim, temperature, pooling):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 4)
        self.temperature = temperature
        self.pooling = pooling

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / self.temperature
        if self.pooling == "softmax":
            weights = {softmax}
        else:
            weights = torch.sigmoid(scores) / scores.shape[-1]
        return self.out((weights @ v).mean(dim=1))


torch.manual_seed(0)
model = AttentionPool(16, float(sys.argv[1]), sys.argv[2])
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cpu")
for step in range(3):
    x = torch.randn(8, 32, 16)
    y = torch.randint(0, 4, (8,))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""
AMP004_SCRIPT = ATTENTION_POOL_SCRIPT.format(softmax="torch.softmax(scores, dim=-1)")


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["0.25", "softmax"], CONFIRMED, ["steps 0-2, 3 runs: softmax in float16 vs float32",
                                          "21% of non-zero results became 0"]),
        (["4", "softmax"], NOT_OBSERVED, ["steps 0-2, 3 runs: softmax in float16 vs float32: relative error 4.0e-04",
                                          "0% of non-zero results became 0",
                                          "(thresholds: 0.01 relative, 0.1% flushed)"]),
        (["4", "sigmoid"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["flushed", "harmless", "not-reached"],
)
def test_amp004_low_precision_softmax(tmp_path, monkeypatch, args, outcome, evidence):
    check(tmp_path, monkeypatch, AMP004_SCRIPT, args, "AMP004", (20, 23), outcome, evidence)


# AMP005: an L1 activation penalty summed, after the autocast block, over float16 activations: with raw
# features the float16 sum passes 65504; with GradScaler's default scale the float16 penalty's gradient does.
AMP005_SCRIPT = """
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
head = nn.Linear(64, 10)
optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=1e-3)
input_scale, activation_decay, init_scale = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)

for step in range(3):
    x = torch.randn(128, 32) * input_scale
    y = torch.randint(0, 10, (128,))
    with torch.autocast("cpu", dtype=torch.float16):
        h = encoder(x)
        loss = F.cross_entropy(head(h).float(), y)
    if activation_decay > 0:
        loss = loss + activation_decay * h.abs().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["100", "1e-5", "1024"], CONFIRMED, ["step 0: sum produced Inf in forward"]),
        (["1", "1e-5", "65536"], CONFIRMED, ["step 0: add produced Inf in backward"]),
        (["1", "1e-5", "1024"], NOT_OBSERVED, ["steps 0-2, 3 runs: sum in float16 vs float32: relative error 1.1e-04",
                                               "0% of non-zero results became 0",
                                               "(thresholds: 0.01 relative, 0.1% flushed)"]),
        (["1", "0", "1024"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["overflow", "scaled-gradient", "harmless", "not-reached"],
)
def test_amp005_low_precision_reduction(tmp_path, monkeypatch, args, outcome, evidence):
    check(tmp_path, monkeypatch, AMP005_SCRIPT, args, "AMP005", (21, 42), outcome, evidence)


# AMP007: the classic padding mask. Under float16 autocast masked_fill(-1e9) raises; in a float32 run
# (--no-amp) the same line is harmless; without padding it never runs.
AMP007_SCRIPT = """
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, x, pad_mask=None):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, :], -1e9)
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out((weights @ v).mean(dim=1))


torch.manual_seed(0)
use_amp = sys.argv[1] == "amp"
padded = sys.argv[2] == "padded"
model = Attention(16)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
for step in range(3):
    x = torch.randn(8, 12, 16)
    lengths = torch.randint(6, 13, (8,))
    pad_mask = torch.arange(12)[None, :] >= lengths[:, None] if padded else None
    y = torch.randint(0, 4, (8,))
    with torch.autocast("cpu", dtype=torch.float16, enabled=use_amp):
        loss = F.cross_entropy(model(x, pad_mask).float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["amp", "padded"], CONFIRMED, ['step 0: RuntimeError "value cannot be converted to type c10::Half without '
                                        'overflow" (the script stopped here)']),
        (["no-amp", "padded"], NOT_OBSERVED, ["steps 0-2, 3 runs: never ran on float16/bfloat16 values "
                                              "(inputs: float32)",
                                              "largest |value| 1.0e+09 (masked_fill, float32), "
                                              "float16 holds up to 65504"]),
        (["amp", "unpadded"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["raises", "float32-run", "not-reached"],
)
def test_amp007_fp16_overflow_literal(tmp_path, monkeypatch, args, outcome, evidence):
    report, _ = check(tmp_path, monkeypatch, AMP007_SCRIPT, args, "AMP007", (18, 63), outcome, evidence)
    if outcome is CONFIRMED:
        assert report.script_error is not None and report.script_error.line == 18
    else:
        assert report.script_error is None and report.steps_run == 3


# AMP008: a hand-written RMS normalisation whose 1e-8 guard is 0 in float16: a zero (padded) sample's
# rsqrt(0 + 0) is inf and its features 0 * inf = NaN.
AMP008_SCRIPT = """
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU())
head = nn.Linear(32, 4)
optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
scaler = torch.amp.GradScaler("cpu")
padding, rms_norm = int(sys.argv[1]), sys.argv[2] == "rms-norm"

for step in range(3):
    x = torch.randn(32, 16)
    x[:padding] = 0  # padded samples at the start of the batch
    y = torch.randint(0, 4, (32,))
    with torch.autocast("cpu", dtype=torch.float16):
        h = encoder(x)
        if rms_norm:
            h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + 1e-8)
        loss = F.cross_entropy(head(h).float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["4", "rms-norm"], CONFIRMED, ["step 0: rsqrt produced Inf in forward (3 times)"]),
        (["0", "rms-norm"], NOT_OBSERVED, ["steps 0-2, 3 runs: rsqrt in float16 vs float32: relative error 4.4e-04",
                                           "0% of non-zero results became 0",
                                           "(thresholds: 0.01 relative, 0.1% flushed)"]),
        (["4", "plain"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["zero-rows", "harmless", "not-reached"],
)
def test_amp008_fp16_vanishing_epsilon(tmp_path, monkeypatch, args, outcome, evidence):
    report, _ = check(tmp_path, monkeypatch, AMP008_SCRIPT, args, "AMP008", (21, 71), outcome, evidence)
    if outcome is CONFIRMED:  # the NaN reached every gradient: the GradScaler skipped every step
        assert report.skipped_steps == [0, 1, 2]


# AMP009: attention pooling with a softmax written by hand. In float16 exp overflows past 11.09, and
# inf / inf is NaN.
AMP009_SCRIPT = ATTENTION_POOL_SCRIPT.format(softmax="torch.exp(scores) / torch.exp(scores).sum(dim=-1, keepdim=True)")


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["0.25", "softmax"], CONFIRMED, ["step 0: exp produced Inf in forward (3 times)"]),
        # which of exp and div is furthest from float32 (both near 4e-4) depends on torch's CPU kernels
        (["4", "softmax"], NOT_OBSERVED, ["steps 0-2, 3 runs: ", " in float16 vs float32: relative error ",
                                          "e-04, 0% of non-zero results became 0",
                                          "(thresholds: 0.01 relative, 0.1% flushed)",
                                          "largest exp(x) 6.", "(float16 max 65504)"]),
        (["4", "sigmoid"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["exp-overflow", "harmless", "not-reached"],
)
def test_amp009_unstable_softmax(tmp_path, monkeypatch, args, outcome, evidence):
    check(tmp_path, monkeypatch, AMP009_SCRIPT, args, "AMP009", (20, 23), outcome, evidence)


# AMP018: a decorrelation penalty whose covariance was meant to be float32 (autocast disabled) but
# multiplies the float16 projections: with raw features z.T @ z passes 65504.
AMP018_SCRIPT = """
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
projector = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32))
head = nn.Linear(32, 4)
optimizer = torch.optim.SGD([*projector.parameters(), *head.parameters()], lr=1e-3)
scaler = torch.amp.GradScaler("cpu")
input_scale, decorrelation = float(sys.argv[1]), float(sys.argv[2])

for step in range(3):
    x = torch.randn(256, 16) * input_scale
    y = torch.randint(0, 4, (256,))
    with torch.autocast("cpu", dtype=torch.float16):
        z = projector(x)
        loss = F.cross_entropy(head(z).float(), y)
        if decorrelation > 0:
            with torch.autocast("cpu", enabled=False):  # the covariance in float32
                cov = z.T @ z / (z.shape[0] - 1)
            off_diagonal = cov.float() - torch.diag(torch.diagonal(cov.float()))
            loss = loss + decorrelation * off_diagonal.pow(2).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    "args, outcome, evidence",
    [
        (["100", "1e-6"], CONFIRMED, ["step 0: matmul produced Inf in forward (3 times)"]),
        (["1", "1e-6"], NOT_OBSERVED, ["steps 0-2, 3 runs: matmul in float16 vs float32: relative error 2.5e-04",
                                       "0% of non-zero results became 0",
                                       "(thresholds: 0.01 relative, 0.1% flushed)"]),
        (["1", "0"], NOT_REACHED, ["the line did not run"]),
    ],
    ids=["overflow", "harmless", "not-reached"],
)
def test_amp018_autocast_value_in_disabled_region(tmp_path, monkeypatch, args, outcome, evidence):
    check(tmp_path, monkeypatch, AMP018_SCRIPT, args, "AMP018", (22, 23), outcome, evidence)
