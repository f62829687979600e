"""Pre-training in bfloat16 with a GradScaler it does not need.

bfloat16 has float32's exponent range, so gradients do not underflow and the scaler never has work to
do; every step still pays for an unscale pass and an inf check over all gradients. This case lives in
its own file because it needs a module whose every autocast region is bfloat16.
Lint it:   flake8 --select AMP examples/pretrain_bf16_buggy.py   (fixed twin: examples/pretrain_bf16_fixed.py)
"""

import torch
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Embedding(256, 64), torch.nn.Linear(64, 256)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scaler = torch.amp.GradScaler(device)


def pretrain_step(tokens, targets):
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


if __name__ == "__main__":
    for step in range(4):
        tokens = torch.randint(0, 256, (8, 16), device=device)
        print(step, pretrain_step(tokens, tokens.roll(-1, dims=1)))
