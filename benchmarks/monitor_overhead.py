"""Per-step cost of the training monitor at its default settings.

    python benchmarks/monitor_overhead.py [--steps 300] [--rounds 5] [--device cpu|cuda] [--gpt2]

Trains a small CNN and an MLP (and, with --gpt2, a GPT-2-small-sized transformer) with and without
``TrainingMonitor``, alternating plain and monitored runs round by round on the same data, and prints
the mean and the median per-step time of each and both overhead ratios: the mean counts the sampled
and report steps that the median hides. Goal: at most +3% mean and 1 ms a step on CPU (+2% for GPT-2
small on a GPU). On CUDA, the monitored steps between report steps run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from torch import nn

from flake8_amp.runtime import TrainingMonitor


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


class GPT2Small(nn.Module):
    def __init__(self, vocab: int = 50257, dim: int = 768, layers: int = 12, heads: int = 12, seq: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(seq, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.blocks(h, mask=self.mask[: tokens.shape[1], : tokens.shape[1]], is_causal=True))


def workload(name: str, device: str):
    generator = torch.Generator().manual_seed(0)
    if name == "cnn":
        return cnn, lambda: (torch.randn(32, 3, 32, 32, generator=generator), torch.randint(0, 10, (32,), generator=generator))
    if name == "mlp":
        return mlp, lambda: (torch.randn(256, 512, generator=generator), torch.randint(0, 10, (256,), generator=generator))
    return GPT2Small, lambda: (torch.randint(0, 50257, (8, 512), generator=generator), torch.randint(0, 50257, (8, 512), generator=generator))


def run(name: str, device: str, steps: int, monitored: bool, strict_sync: bool) -> float:
    build, make_batch = workload(name, device)
    torch.manual_seed(0)
    model = build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp_dtype = torch.bfloat16 if device == "cuda" else None
    monitor = TrainingMonitor(model, optimizer) if monitored else None
    batches = [tuple(t.to(device) for t in make_batch()) for _ in range(4)]
    times = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        check_syncs = strict_sync and monitor is not None and (step + 1) % monitor.report_every != 0
        if check_syncs:
            torch.cuda.set_sync_debug_mode("error")
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(x)
            loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.step(loss)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if monitor is not None:
        monitor.close()
    kept = times[steps // 10 :]  # skip warm-up of the allocator and caches
    return statistics.mean(kept), statistics.median(kept)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpt2", action="store_true", help="also a GPT-2-small-sized model (meant for a GPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the monitor's status lines are not what is measured
    names = ["cnn", "mlp"] + (["gpt2"] if args.gpt2 else [])
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds, alternating")
    for name in names:
        plain, watched = [], []
        for _ in range(args.rounds):
            plain.append(run(name, args.device, args.steps, False, False))
            watched.append(run(name, args.device, args.steps, True, args.device == "cuda"))
        for kind, index in (("mean", 0), ("median", 1)):
            p = statistics.median(run_times[index] for run_times in plain)
            w = statistics.median(run_times[index] for run_times in watched)
            print(f"{name:5s} {kind:6s} step {p * 1e3:8.3f} ms plain, {w * 1e3:8.3f} ms monitored: overhead "
                  f"{100 * (w / p - 1):+.2f}% ({(w - p) * 1e3:+.3f} ms/step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
