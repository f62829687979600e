"""Per-step cost of the training monitor at its default settings.

    python benchmarks/monitor_overhead.py [--blocks 100] [--device cpu|cuda] [--gpt2]

Trains a small CNN and an MLP (and, with --gpt2, a GPT-2-small-sized transformer) with ``TrainingMonitor``
attached, and alternates blocks of ``sample_every`` (10) steps watched with blocks run inside
``monitor.paused()``, where no hook runs, in the order ABBA, on one model, one optimizer and the same
batches in one process. Alternating whole runs instead compares two memory layouts of the model's
tensors: on this benchmark's CNN that moved the ratio by several percent from one run to the next, more
than the goal. Every watched block holds one sampled step and every fifth a report step, so the mean
counts what the median hides. Prints mean and median step times and both overhead ratios, with a 95%
interval for the mean's from resampling the blocks. Goal: at most +3% mean and 1 ms a step on CPU (+2% for
GPT-2 small on a GPU). On CUDA, the watched steps between report steps run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation.
"""

from __future__ import annotations

import argparse
import logging
import random
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


def measure(name: str, device: str, blocks: int, strict_sync: bool) -> tuple[list[list[float]], list[list[float]]]:
    """Per-step times of ``blocks`` watched and ``blocks`` paused blocks, block by block."""
    build, make_batch = workload(name, device)
    torch.manual_seed(0)
    model = build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp_dtype = torch.bfloat16 if device == "cuda" else None
    monitor = TrainingMonitor(model, optimizer)
    batches = [tuple(t.to(device) for t in make_batch()) for _ in range(4)]
    length = monitor.sample_every
    step = 0

    def train(watched: bool) -> list[float]:
        nonlocal step
        times = []
        for _ in range(length):
            x, y = batches[step % len(batches)]
            step += 1
            check_syncs = strict_sync and watched and (monitor.steps + 1) % monitor.report_every != 0
            if check_syncs:
                torch.cuda.set_sync_debug_mode("error")
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = model(x)
                loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
            optimizer.step()
            monitor.step(loss)
            if device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return times

    def plain() -> list[float]:
        with monitor.paused():
            return train(False)

    for _ in range(3):  # warm-up of the allocator and caches, both ways
        train(True), plain()
    watched_blocks: list[list[float]] = []
    plain_blocks: list[list[float]] = []
    for i in range(blocks):
        if i % 2 == 0:  # ABBA: a drift of the machine's speed weighs on both alike
            watched_blocks.append(train(True))
            plain_blocks.append(plain())
        else:
            plain_blocks.append(plain())
            watched_blocks.append(train(True))
    monitor.close()
    if monitor.alerts or not monitor.enabled:
        raise SystemExit(f"{name}: the monitor raised {len(monitor.alerts)} alerts or turned off on a clean run")
    return watched_blocks, plain_blocks


def mean_interval(watched: list[list[float]], plain: list[list[float]], draws: int = 2000) -> tuple[float, float]:
    """95% interval of the mean overhead ratio, resampling pairs of blocks."""
    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        picks = [rng.randrange(len(watched)) for _ in watched]
        w = sum(sum(watched[i]) for i in picks)
        p = sum(sum(plain[i]) for i in picks)
        ratios.append(w / p - 1)
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100, help="watched blocks (and as many paused ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpt2", action="store_true", help="also a GPT-2-small-sized model (meant for a GPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the monitor's status lines are not what is measured
    names = ["cnn", "mlp"] + (["gpt2"] if args.gpt2 else [])
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.blocks} watched and {args.blocks} paused "
          f"blocks of 10 steps, ABBA")
    for name in names:
        watched, plain = measure(name, args.device, args.blocks, args.device == "cuda")
        w_steps = [t for block in watched for t in block]
        p_steps = [t for block in plain for t in block]
        low, high = mean_interval(watched, plain)
        for kind, stat in (("mean", statistics.mean), ("median", statistics.median)):
            p, w = stat(p_steps), stat(w_steps)
            interval = f", 95% interval {100 * low:+.2f}% to {100 * high:+.2f}%" if kind == "mean" else ""
            print(f"{name:5s} {kind:6s} step {p * 1e3:8.3f} ms plain, {w * 1e3:8.3f} ms monitored: overhead "
                  f"{100 * (w / p - 1):+.2f}% ({(w - p) * 1e3:+.3f} ms/step){interval}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
