"""Cost of analyze_tensor() against one ``t.abs().amax()`` pass over the same tensor.

    python benchmarks/analyzer.py [--numel 100000000] [--columns 4] [--repeats 3]

Prints wall time and peak extra resident memory of each, measured side by side in one run, and their
ratios. Memory: a background thread samples this process's resident set size (/proc/self/statm) every
millisecond; "extra" is the peak minus the resident size just before the call, so it counts torch's CPU
allocations made by the call (tracemalloc cannot see them). Goal: at most 10x the time and 2 extra copies
of the tensor's memory.

Then two shapes that cost whole copies before (``--shapes``, on by default): a ``(2, 20M)`` tensor, whose
last axis used to become five Python lists of 20M floats, and a transposed ``(10000, 10000)`` view, which
used to be copied whole; for each, analyze_tensor's time and peak extra memory in copies of the tensor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from flake8_amp.runtime import analyze_tensor

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def measure(function) -> tuple[float, int]:
    """(seconds, peak extra resident bytes) of one call."""
    baseline = resident_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    function()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    return elapsed, max(peak, resident_bytes()) - baseline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=100_000_000)
    parser.add_argument("--columns", type=int, default=4, help="last-axis size (per-dimension statistics)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-shapes", dest="shapes", action="store_false", help="skip the two shape checks")
    args = parser.parse_args()
    torch.manual_seed(0)
    tensor = torch.randn(args.numel // args.columns, args.columns)
    tensor[:, 0] *= 1000
    size = tensor.numel() * tensor.element_size()
    print(f"tensor: {tuple(tensor.shape)} float32, {size / 2**20:.0f} MiB, {torch.get_num_threads()} threads")

    reference, analysis = [], []
    for _ in range(args.repeats):  # alternate so both see the same machine state
        reference.append(measure(lambda: tensor.abs().amax().item()))
        analysis.append(measure(lambda: analyze_tensor(tensor, formats=("fp16", "bf16"))))
    ref_time = statistics.median(t for t, _ in reference)
    ana_time = statistics.median(t for t, _ in analysis)
    ref_mem = max(m for _, m in reference)
    ana_mem = max(m for _, m in analysis)
    print(f"t.abs().amax():        {ref_time:8.3f} s   peak extra memory {ref_mem / 2**20:8.1f} MiB")
    print(f"analyze_tensor(fp16, bf16): {ana_time:8.3f} s   peak extra memory {ana_mem / 2**20:8.1f} MiB")
    print(f"time ratio: {ana_time / ref_time:.1f}x (goal <= 10x)")
    print(
        f"extra memory: {ana_mem / size:.2f} copies of the tensor (goal <= 2); "
        f"amax pass: {ref_mem / size:.2f} copies"
    )
    if args.shapes:
        del tensor
        for label, make in (("(2, 20M)", lambda: torch.randn(2, 20_000_000)),
                            ("(10000, 10000) transposed", lambda: torch.randn(10_000, 10_000).t())):
            shaped = make()
            size = shaped.numel() * shaped.element_size()
            seconds, extra = measure(lambda: analyze_tensor(shaped))
            print(f"{label:28s} {size / 2**20:6.0f} MiB: {seconds:6.2f} s, peak extra memory "
                  f"{extra / 2**20:7.1f} MiB = {extra / size:.2f} copies (goal <= 2)")
            del shaped
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
