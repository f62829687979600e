"""A small audio-feature classifier trained with mixed precision, with the hazards people actually ship.

Lint it:     flake8 --select AMP --amp-preview=on examples/train_buggy.py
Verify it:   flake8-amp verify examples/train_buggy.py --steps 4   (without a GPU, CUDA is emulated)
Its fixed twin is examples/train_fixed.py. examples/finetune_buggy.py shows float16 without a GradScaler,
which cannot live in a module that has one, and examples/fused_op_buggy.py a custom op whose module cannot
even be imported.
"""

import functools
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"
accumulation_steps = 2


class ScaledMatmul(torch.autograd.Function):
    """A fused projection with a hand-written backward."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.t()

    @staticmethod
    @torch.amp.custom_bwd(device_type=device)
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x


class Classifier(nn.Module):
    def __init__(self, features=64, dim=128, classes=4, fused=False):
        super().__init__()
        self.fused = fused
        self.encoder = nn.Linear(features, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.head = nn.Linear(dim, classes)

    def forward(self, features, frame_mask=None):
        h = self.norm(torch.relu(self.encoder(features)))
        h = ScaledMatmul.apply(h, self.proj) if self.fused else h @ self.proj.t()
        if frame_mask is not None:
            h = h.masked_fill(~frame_mask[:, None], -1e9)
        return self.head(torch.relu(h))


model = Classifier().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scaler = torch.amp.GradScaler(device)
is_duplicate = nn.BCELoss()
calibration_head = nn.Linear(4, 4).to(device).half()
calibration_optimizer = torch.optim.Adam(calibration_head.parameters(), lr=1e-3)


def train_step(step, features, labels):
    features = features.to(device)
    with torch.autocast(device):
        logits = model(features.half())
    loss = F.cross_entropy(logits, labels)
    confidence = logits.softmax(-1).max(-1).values.mean()
    scaler.scale(loss / accumulation_steps).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    if (step + 1) % accumulation_steps == 0:
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return loss.item(), confidence.item()


def duplicate_loss(features, pair_labels):
    with torch.autocast(device):
        logits = model(features.to(device))
        return is_duplicate(torch.sigmoid(logits[:, 0]), pair_labels)


def masked_logits(features, frame_mask):
    with torch.autocast(device):
        return model(features.to(device), frame_mask)


def fused_warmup(features, labels):
    fused = Classifier(fused=True).to(device)
    with torch.autocast(device):
        loss = F.cross_entropy(fused(features.to(device)), labels)
    scaler.scale(loss).backward()
    fused.zero_grad()


def calibration_step(features, labels):
    with torch.autocast(device):
        logits = calibration_head(model(features.to(device)))
        loss = F.cross_entropy(logits, labels)
        scaler.scale(loss).backward()
    calibration_optimizer.step()
    calibration_optimizer.zero_grad()


def evaluate(features):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(features)
        return F.log_softmax(logits, dim=-1)


def class_log_probs(features):
    with torch.cuda.amp.autocast():
        logits = model(features.to(device))
        with torch.autocast(device, enabled=False):
            return torch.log(torch.softmax(logits, dim=-1))


def logit_energy(features):
    with torch.autocast(device):
        logits = model(features.to(device))
    return logits.pow(2).sum()


def save_checkpoint(path):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)


if __name__ == "__main__":
    torch.manual_seed(0)
    features = torch.randn(8, 64) * 1e-5  # raw sensor energies: small values
    labels = torch.randint(0, 4, (8,), device=device)
    pair_labels = torch.rand(8, device=device).round()
    frame_mask = torch.rand(8, device=device) > 0.2
    # Every function runs, each in a stage of its own: a hazard that raises ends its stage, not the
    # script, so that `flake8-amp verify` reaches them all.
    stages = {f"train step {step}": functools.partial(train_step, step, features, labels) for step in range(4)}
    stages |= {
        "duplicates": lambda: duplicate_loss(features, pair_labels).item(),
        "masked frames": lambda: masked_logits(features, frame_mask).float().abs().max().item(),
        "fused warm-up": lambda: fused_warmup(features, labels),
        "calibration": lambda: calibration_step(features, labels),
        "evaluate": lambda: evaluate(features).float().exp().sum(-1).mean().item(),
        "class log-probs": lambda: class_log_probs(features).float().min().item(),
        "logit energy": lambda: logit_energy(features).item(),
        "checkpoint": lambda: save_checkpoint(os.path.join(tempfile.mkdtemp(), "last.pt")),
    }
    for name, stage in stages.items():
        try:
            print(f"{name}: {stage()}")
        except Exception as exc:  # the hazard happened: say how, and go on
            print(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
