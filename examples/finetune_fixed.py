"""examples/finetune_buggy.py fixed: bfloat16 keeps float32's range, so no GradScaler is needed.

On float16-only hardware, keep float16 and add torch.amp.GradScaler("cuda") instead.
"""

import torch
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4)).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)


def finetune_step(features, labels):
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(features), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


if __name__ == "__main__":
    for step in range(4):
        features = torch.randn(8, 64, device=device)
        print(step, finetune_step(features, torch.randint(0, 4, (8,), device=device)))
