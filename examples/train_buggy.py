"""A small audio-feature classifier trained with mixed precision, with the hazards people actually ship.

Lint it:   flake8 --select AMP examples/train_buggy.py
Its fixed twin is examples/train_fixed.py.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"


class ScaledMatmul(torch.autograd.Function):
    """A fused projection with a hand-written backward."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x


class Classifier(nn.Module):
    def __init__(self, features=64, dim=128, classes=4):
        super().__init__()
        self.encoder = nn.Linear(features, dim)
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.head = nn.Linear(dim, classes)

    def forward(self, features):
        h = torch.relu(self.encoder(features))
        h = ScaledMatmul.apply(h, self.proj)
        return self.head(torch.relu(h))


model = Classifier().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scaler = torch.amp.GradScaler(device)
is_duplicate = nn.BCELoss()


def train_step(features, labels, pair_labels):
    features = features.to(device)
    with torch.autocast(device):
        logits = model(features.half())
        pair_prob = torch.sigmoid(logits[:, 0])
    loss = F.cross_entropy(logits, labels) + is_duplicate(pair_prob, pair_labels)
    confidence = logits.softmax(-1).max(-1).values.mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), confidence.item()


def evaluate(features):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(features)
        return F.log_softmax(logits, dim=-1)


def logit_energy(features):
    with torch.autocast(device):
        logits = model(features)
    return logits.pow(2).sum()


if __name__ == "__main__":
    for step in range(3):
        features = torch.randn(8, 64)
        labels = torch.randint(0, 4, (8,), device=device)
        pair_labels = torch.rand(8, device=device).round()
        print(step, train_step(features, labels, pair_labels))
