"""The fixed twin of examples/sensor_tagger_buggy.py: autocast chooses each op's precision, the loss is
computed in float32, the gradients are unscaled before clipping, and the checkpoint keeps the
GradScaler's state.

    flake8-amp verify examples/sensor_tagger_fixed.py --steps 20
"""

import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


class Tagger(nn.Module):
    def __init__(self, features=32, dim=64, classes=8):
        super().__init__()
        self.encoder = nn.Linear(features, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, features, padding=None):
        scores = self.head(torch.relu(self.encoder(features)))
        if padding is not None:
            scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
        return scores


model = Tagger()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")


def train_step(features, labels):
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(features)
    loss = F.cross_entropy(logits.float(), labels)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def save_checkpoint(path):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, path)


if __name__ == "__main__":
    for step in range(200):
        features = torch.randn(16, 32) * 1e-5  # sensor deltas, in volts
        labels = torch.randint(0, 8, (16,))
        loss = train_step(features, labels)
        if step % 50 == 0:
            print(f"step {step}: loss {loss:.3f}")
        if step % 100 == 99:
            save_checkpoint(os.path.join(tempfile.gettempdir(), "tagger.pt"))
