"""What ``flake8-amp verify`` costs over running the script plainly, and whether its memory grows with steps.

    python benchmarks/verify_overhead.py [--pairs 3] [--threads 1] [--device cuda]

Workloads: the bundled examples that train when run (``examples/sensor_tagger_buggy.py`` and its fixed
twin, 200 float16 steps with a GradScaler each; ``examples/train_fixed.py``, 4 steps) and a small
transformer (2 encoder layers, width 128, sequence 64, float16 autocast, GradScaler, gradient clipping),
written to a temporary folder. Each pair runs ``python SCRIPT`` and
``python -m flake8_amp.cli verify SCRIPT`` as whole processes, one after the other, alternating which
goes first; the ratio is verify's wall time over the plain run's, and the mean and the median over the
pairs are printed. Both sides pay Python's and torch's start-up; verify also pays its flake8 run, which
is timed on its own and printed beside. Goal: at most 2x at default settings. Then the same pairs in one
process, after a warm-up pair: the script's own run against verify's run of it, start-up and flake8 left
out, which is what verify costs a long training loop (a script of tiny ops pays the most: the recorder's
work per op is fixed, the op's is small).

Memory: verify runs the transformer for N and for 4N optimizer steps, each in a fresh process, and the
peak resident (host) memory of the two is printed: verify keeps no per-step history, so 4N steps should need
no more memory than N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

TRANSFORMER = textwrap.dedent(
    """
    import sys

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    vocab, dim, seq, batch = 512, 128, 64, 8
    layer = nn.TransformerEncoderLayer(dim, 4, 256, batch_first=True, dropout=0.0)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = nn.Sequential(nn.Embedding(vocab, dim), encoder, nn.Linear(dim, vocab)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device)
    for step in range(steps):
        tokens = torch.randint(0, vocab, (batch, seq), device=device)
        with torch.autocast(device, dtype=torch.float16):
            logits = model(tokens)
            loss = F.cross_entropy(logits.float().view(-1, vocab), tokens.view(-1))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    """
).lstrip()

# In one process, after a warm-up run of each: the script's own run (runpy) against verify's run of it,
# verify's flake8 subprocess left out. This is the training loop's slowdown, without start-up costs.
IN_PROCESS = """
import contextlib, io, runpy, statistics, sys, time
import torch
torch.set_num_threads(1)
import flake8_amp.runtime.verification as verification
lint = verification.lint_for_verify
spent = [0.0]
def timed_lint(files):
    start = time.perf_counter()
    try:
        return lint(files)
    finally:
        spent[0] += time.perf_counter() - start
verification.lint_for_verify = timed_lint
script, args, pairs = sys.argv[1], sys.argv[3:], int(sys.argv[2])
ratios = []
for pair in range(pairs + 1):
    with contextlib.redirect_stdout(io.StringIO()):
        sys.argv = [script, *args]
        start = time.perf_counter()
        runpy.run_path(script, run_name="__main__")
        plain = time.perf_counter() - start
        spent[0] = 0.0
        start = time.perf_counter()
        verification.verify(script, args=args)
        verified = time.perf_counter() - start - spent[0]
    if pair:  # the first pair warms imports and caches up
        ratios.append(verified / plain)
print(statistics.mean(ratios), statistics.median(ratios))
"""

PEAK_MEMORY = (
    "import resource, sys\n"
    "from flake8_amp.runtime import verify\n"
    "report = verify(sys.argv[1], args=sys.argv[2:])\n"
    "print(report.steps_run, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def _wall(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _verify_exit_ok(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """verify exits 1 when it confirms a finding: that is a result, not a failure."""
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if completed.returncode not in (0, 1):
        raise SystemExit(f"verify failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return time.perf_counter() - start


def measure(name: str, script: Path, script_args: list[str], pairs: int, env: dict[str, str]) -> float:
    plain_command = [sys.executable, str(script), *script_args]
    verify_command = [sys.executable, "-m", "flake8_amp.cli", "verify", str(script), "--format", "json", "--", *script_args]
    lint = _wall([sys.executable, "-m", "flake8", "--select", "AMP", "--exit-zero", str(script)], script.parent, env)
    ratios, plain_times, verify_times = [], [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            plain = _wall(plain_command, script.parent, env)
            verified = _verify_exit_ok(verify_command, script.parent, env)
        else:
            verified = _verify_exit_ok(verify_command, script.parent, env)
            plain = _wall(plain_command, script.parent, env)
        plain_times.append(plain)
        verify_times.append(verified)
        ratios.append(verified / plain)
        print(f"  {name} pair {pair + 1}: plain {plain:.2f}s   verify {verified:.2f}s   ratio {verified / plain:.3f}")
    completed = subprocess.run([sys.executable, "-c", IN_PROCESS, str(script), str(pairs), *script_args],
                               cwd=script.parent, env=env, capture_output=True, text=True, check=True)
    loop_mean, loop_median = map(float, completed.stdout.split()[-2:])
    print(f"  {name}, in one process (the script's run alone, start-up and flake8 left out): ratio mean "
          f"{loop_mean:.3f}, median {loop_median:.3f}")
    print(
        f"{name}: plain {statistics.median(plain_times):.2f}s, verify {statistics.median(verify_times):.2f}s "
        f"(of which flake8 {lint:.2f}s); ratio mean {statistics.mean(ratios):.3f}, median "
        f"{statistics.median(ratios):.3f} (goal <= 2.0: {'met' if statistics.median(ratios) <= 2.0 else 'NOT MET'})"
    )
    return statistics.median(ratios)


def peak_memory(script: Path, script_args: list[str], env: dict[str, str]) -> tuple[int, int]:
    completed = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(script), *script_args], cwd=script.parent, env=env,
        capture_output=True, text=True, check=True,
    )
    ran, kib = completed.stdout.split()[-2:]
    return int(ran), int(kib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="plain/verify pairs per workload (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the transformer (default 1)")
    parser.add_argument("--memory-steps", type=int, default=25, help="N for the memory check (default 25)")
    parser.add_argument("--device", default="cpu", help="where the transformer trains: cpu or cuda (default cpu)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    with tempfile.TemporaryDirectory(prefix="flake8-amp-verify-overhead-") as folder:
        transformer = Path(folder) / "tiny_transformer.py"
        transformer.write_text(TRANSFORMER)
        print("wall time, whole processes side by side (verify's over the plain run's)")
        for example in ("sensor_tagger_buggy.py", "sensor_tagger_fixed.py", "train_fixed.py"):
            measure(f"examples/{example}", REPOSITORY / "examples" / example, [], args.pairs, env)
        measure(f"small transformer on {args.device}, 30 steps", transformer, ["30", str(args.threads), args.device],
                args.pairs, env)

        small, large = args.memory_steps, 4 * args.memory_steps
        ran_small, kib_small = peak_memory(transformer, [str(small), str(args.threads), args.device], env)
        ran_large, kib_large = peak_memory(transformer, [str(large), str(args.threads), args.device], env)
        growth = kib_large / kib_small
        print(
            f"peak memory under verify: {ran_small} steps {kib_small / 1024:.0f} MiB, {ran_large} steps "
            f"{kib_large / 1024:.0f} MiB (x{growth:.3f}; goal: no growth with steps: "
            f"{'met' if growth <= 1.05 else 'NOT MET'})"
        )


if __name__ == "__main__":
    main()
