"""What CUDA emulation costs: a script written for CUDA, run with CUDA emulated on this CPU, against the
plain float32 run of the same script here (where ``torch.cuda.is_available()`` is False, so it takes its
CPU branch and ``autocast("cuda")`` is off).

    python benchmarks/emulation_overhead.py [--pairs 5] [--steps 30] [--threads 1]

Workloads, written to a temporary folder, each a training loop that picks
``"cuda" if torch.cuda.is_available() else "cpu"`` and trains under ``torch.autocast("cuda")`` with
``torch.amp.GradScaler("cuda")``, as GPU scripts do:

* ``transformer``: 2 encoder layers, width 128, sequence 64, batch 8, a vocabulary of 512;
* ``cnn``: 3 convolutions and a linear head on 8 images of 3x64x64;
* ``mlp``: 3 linear layers of width 512 on a batch of 64.

Each pair runs the two as whole processes, one after the other, alternating which goes first:
``python SCRIPT`` and the same script under ``CudaEmulation`` (the emulation alone: no linting, no
verify). The ratio is the emulated run's wall time over the plain run's; the mean and the median over
the pairs are printed. Goal: at most 3x. Both pay Python's and torch's start-up; the emulated one also
pays installing the emulation (about 120 kernels), so the per-step cost is printed beside it, from the
times the scripts report for their training loops.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PREAMBLE = """
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
steps = int(sys.argv[1])
device = "cuda" if torch.cuda.is_available() else "cpu"
"""

LOOP = """
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda")
start = time.perf_counter()
for step in range(steps):
    x, y = batch()
    with torch.autocast("cuda", enabled=device == "cuda"):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
print("LOOP", time.perf_counter() - start)
"""

WORKLOADS = {
    "transformer": """
vocab, dim, seq, batch_size = 512, 128, 64, 8
layer = nn.TransformerEncoderLayer(dim, 4, 256, batch_first=True, dropout=0.0)
body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.body, self.head = nn.Embedding(vocab, dim), body, nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.body(self.embed(tokens))).flatten(0, 1)


model = Model().to(device)


def batch():
    tokens = torch.randint(0, vocab, (batch_size, seq), device=device)
    return tokens, tokens.flatten()
""",
    "cnn": """
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
).to(device)


def batch():
    return torch.randn(8, 3, 64, 64, device=device), torch.randint(0, 10, (8,), device=device)
""",
    "mlp": """
model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)


def batch():
    return torch.randn(64, 512, device=device), torch.randint(0, 10, (64,), device=device)
""",
}

EMULATED = (
    "import runpy, sys; from flake8_amp.runtime.cuda_emulation import CudaEmulation\n"
    "script = sys.argv[1]; sys.argv = sys.argv[1:]\n"
    "with CudaEmulation():\n"
    "    runpy.run_path(script, run_name='__main__')\n"
)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall time of the whole process, and the loop time the script reports."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    loop = float(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("LOOP")))
    return wall, loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    if torch.cuda.is_available():
        print("this machine has a GPU: the plain run would use it; run this where there is none")
        return 2
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, {args.pairs} pairs")
    with tempfile.TemporaryDirectory() as folder:
        for name, body in WORKLOADS.items():
            script = Path(folder) / f"{name}.py"
            script.write_text(textwrap.dedent(PREAMBLE + body + LOOP))
            script_args = [str(args.steps), str(args.threads)]
            plain_command = [sys.executable, str(script), *script_args]
            emulated_command = [sys.executable, "-c", EMULATED, str(script), *script_args]
            whole, loops = [], []
            for pair in range(args.pairs):
                if pair % 2 == 0:
                    plain, emulated = timed(plain_command), timed(emulated_command)
                else:
                    emulated, plain = timed(emulated_command), timed(plain_command)
                whole.append(emulated[0] / plain[0])
                loops.append(emulated[1] / plain[1])
            worst = max(statistics.mean(whole), statistics.median(whole))
            print(f"{name:12s} whole process: mean {statistics.mean(whole):.2f}x, "
                  f"median {statistics.median(whole):.2f}x   training loop: mean {statistics.mean(loops):.2f}x, "
                  f"median {statistics.median(loops):.2f}x   (goal <= 3x: {'met' if worst <= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
