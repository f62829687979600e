"""Fine-tuning in float16 without a GradScaler: small gradients flush to zero.

This case lives in its own file because it needs a module with no GradScaler at all.
Lint it:   flake8 --select AMP examples/finetune_buggy.py   (fixed twin: examples/finetune_fixed.py)
"""

import torch
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4)).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)


def finetune_step(features, labels):
    with torch.autocast("cuda", dtype=torch.float16):
        loss = F.cross_entropy(model(features), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


if __name__ == "__main__":
    for step in range(4):
        features = torch.randn(8, 64, device=device)
        print(step, finetune_step(features, torch.randint(0, 4, (8,), device=device)))
