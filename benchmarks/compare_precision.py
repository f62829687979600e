"""Cost of compare_precision() against one float32 forward+backward (time) and one float32 forward (memory).

    python benchmarks/compare_precision.py [--model transformer|mlp] [--repeats 3] [--threads 1]

Goal: the layerwise comparison in two formats costs a small multiple of one training step's time, and its
peak memory stays near one float32 forward plus one layer output with ``accumulated=False`` (about two
forwards with the accumulated error, measured in lockstep), far below what recording every layer's
activations would take.

Time: in this process, the float32 forward+backward (a training step without the optimizer) and
``compare_precision(model, x, formats=("fp16", "bf16"))`` alternate ``--repeats`` times so that both see the
same machine state; mean and median are printed, and the ratio of the medians. On a machine without a GPU
the comparison runs CUDA's autocast policy emulated on the CPU, which is slower than real autocast on a GPU.

Memory: each measurement runs in a fresh subprocess (so no allocator state carries over) with glibc told to
map every allocation of 1 MiB or more on its own (``MALLOC_MMAP_THRESHOLD_``), so that freed activations
return to the system at once. A background thread samples the resident set size (/proc/self/statm) every
millisecond; "peak extra" is the peak minus the resident size just before the call, after the same call
once as a warm-up (what a first call leaves for good: imports, kernel caches, CUDA emulation, thread
stacks). It counts torch's CPU allocations made by the call (tracemalloc cannot see them); a peak shorter
than the sampling interval can be missed. compare_precision is measured as called by default (the error
accumulated up to each layer: float32 and low precision in lockstep) and with ``accumulated=False`` (one
forward at a time, each layer alone beside the float32 one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, threading, time
import torch
from torch import nn
sys.path.insert(0, {benchmarks!r})
from compare_precision import build
from flake8_amp.runtime import compare_precision

torch.set_num_threads({threads})
model, x = build({model!r})
PAGE = os.sysconf("SC_PAGE_SIZE")

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE

def forward():
    with torch.no_grad():
        model(x)

def forward_backward():
    model(x).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)

def compare():
    compare_precision(model, x, formats=("fp16", "bf16"))

def compare_own():
    compare_precision(model, x, formats=("fp16", "bf16"), accumulated=False)

what = {what!r}
call = {{"forward": forward, "forward_backward": forward_backward, "compare": compare,
         "compare_own": compare_own}}[what]
call()  # warm-up: what a first call leaves behind for good (kernel caches, CUDA emulation) is not its peak
baseline = resident()
peak = baseline
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, resident())
        time.sleep(0.001)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
call()
done.set()
sampler.join()
print(json.dumps({{"peak_extra": max(peak, resident()) - baseline}}))
"""


def build(kind: str):
    """The benchmark's model (eval mode) and input."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "transformer":
        layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
        model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        x = torch.randn(8, 128, 256)
    else:
        layers = []
        for _ in range(32):
            linear = nn.Linear(512, 512)
            nn.init.normal_(linear.weight, std=512**-0.5)
            layers += [linear, nn.GELU()]
        model = nn.Sequential(*layers)
        x = torch.randn(2048, 512)
    return model.eval(), x


def activation_bytes(model, x) -> tuple[int, int]:
    """(the largest compared layer's output, all compared layers' inputs and outputs together) in bytes."""
    import torch

    from flake8_amp.runtime.compare.common import _float_tensors, default_layers

    outputs: list[int] = []
    totals: list[int] = []

    def hook(module, inputs, output):
        outputs.append(sum(t.numel() * t.element_size() for t in _float_tensors(output)))
        totals.append(sum(t.numel() * t.element_size() for t in _float_tensors((inputs, output))))

    hooks = [model.get_submodule(name).register_forward_hook(hook) for name in default_layers(model)]
    with torch.no_grad():
        model(x)
    for handle in hooks:
        handle.remove()
    return max(outputs), sum(totals)


def peak_memory(what: str, kind: str, threads: int) -> int:
    code = CHILD.format(benchmarks=os.path.dirname(os.path.abspath(__file__)), model=kind, what=what, threads=threads)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("transformer", "mlp"), default="transformer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()

    import torch

    from flake8_amp.runtime import compare_precision

    torch.set_num_threads(args.threads)
    model, x = build(args.model)
    params = sum(p.numel() for p in model.parameters())
    output_bytes, stored_bytes = activation_bytes(model, x)
    print(f"model: {args.model}, {params / 1e6:.2f}M parameters, input {tuple(x.shape)}, {args.threads} thread(s)")

    def step() -> None:
        model(x).float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    compare_precision(model, x, formats=("fp16", "bf16"))  # warm-up: CUDA emulation installed once
    step()
    steps, compares = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = compare_precision(model, x, formats=("fp16", "bf16"))
        compares.append(time.perf_counter() - start)
    layers = len({entry.name for entry in report.layers})
    print(f"float32 forward+backward:             mean {statistics.mean(steps):7.3f} s   median "
          f"{statistics.median(steps):7.3f} s")
    how = "CUDA autocast emulated on the CPU" if report.emulated else f"autocast on {report.device_type}"
    print(f"compare_precision(fp16, bf16), {layers} layers: mean {statistics.mean(compares):7.3f} s   median "
          f"{statistics.median(compares):7.3f} s   ({how})")
    print(f"time ratio (medians): {statistics.median(compares) / statistics.median(steps):.1f}x one float32 "
          "forward+backward")

    forward = peak_memory("forward", args.model, args.threads)
    training = peak_memory("forward_backward", args.model, args.threads)
    compare = peak_memory("compare", args.model, args.threads)
    own = peak_memory("compare_own", args.model, args.threads)
    mib = 2**20
    print(f"peak extra memory, float32 forward (no grad):  {forward / mib:8.1f} MiB")
    print(f"peak extra memory, float32 forward+backward:   {training / mib:8.1f} MiB")
    for label, value in (("compare_precision:", compare), ("  accumulated=False:", own)):
        print(f"peak extra memory, {label:27s} {value / mib:8.1f} MiB = {value / forward:.1f}x the float32 forward "
              f"= float32 forward + {(value - forward) / output_bytes:.1f}x the largest layer output "
              f"({output_bytes / mib:.1f} MiB)")
    print(f"recording every compared layer's input and output would hold {stored_bytes / mib:.0f} MiB "
          f"({stored_bytes / max(compare, 1):.1f}x compare_precision's peak)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
