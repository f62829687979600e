"""A small audio-feature classifier trained with mixed precision, with the hazards people actually ship.

Lint it:   flake8 --select AMP examples/train_buggy.py
Its fixed twin is examples/train_fixed.py; examples/finetune_buggy.py shows the float16-without-a-scaler
case, which cannot live in a module that has a GradScaler.
"""

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
    @torch.amp.custom_bwd
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x


class Classifier(nn.Module):
    def __init__(self, features=64, dim=128, classes=4):
        super().__init__()
        self.encoder = nn.Linear(features, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.head = nn.Linear(dim, classes)

    def forward(self, features, frame_mask=None):
        h = self.norm(torch.relu(self.encoder(features)))
        h = ScaledMatmul.apply(h, self.proj)
        if frame_mask is not None:
            h = h.masked_fill(~frame_mask[:, None], -1e9)
        return self.head(torch.relu(h))


model = Classifier().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scaler = torch.amp.GradScaler(device)
is_duplicate = nn.BCELoss()
calibration_head = nn.Linear(4, 4).to(device).half()
calibration_optimizer = torch.optim.Adam(calibration_head.parameters(), lr=1e-3)


def train_step(step, features, labels, pair_labels):
    features = features.to(device)
    with torch.autocast(device):
        logits = model(features.half())
        pair_loss = is_duplicate(torch.sigmoid(logits[:, 0]), pair_labels)
    loss = F.cross_entropy(logits, labels) + pair_loss
    confidence = logits.softmax(-1).max(-1).values.mean()
    scaler.scale(loss / accumulation_steps).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    if (step + 1) % accumulation_steps == 0:
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return loss.item(), confidence.item()


def calibration_step(features, labels):
    with torch.autocast(device):
        logits = calibration_head(model(features))
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
        logits = model(features)
        with torch.autocast(device, enabled=False):
            return torch.log(torch.softmax(logits, dim=-1))


def logit_energy(features):
    with torch.autocast(device):
        logits = model(features)
    return logits.pow(2).sum()


def save_checkpoint(path):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)


if __name__ == "__main__":
    for step in range(4):
        features = torch.randn(8, 64)
        labels = torch.randint(0, 4, (8,), device=device)
        pair_labels = torch.rand(8, device=device).round()
        print(step, train_step(step, features, labels, pair_labels))
