"""examples/pretrain_bf16_buggy.py fixed: bfloat16 needs no loss scaling, so the GradScaler goes.

Code that switches between float16 and bfloat16 keeps one scaler and enables it for float16 only:
torch.amp.GradScaler("cuda", enabled=(dtype == torch.float16)).
"""

import torch
import torch.nn.functional as F

device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Embedding(256, 64), torch.nn.Linear(64, 256)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)


def pretrain_step(tokens, targets):
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


if __name__ == "__main__":
    for step in range(4):
        tokens = torch.randint(0, 256, (8, 16), device=device)
        print(step, pretrain_step(tokens, tokens.roll(-1, dims=1)))
