"""How the linter's cost grows with the size of a module, on generated shapes that used to make it blow up.

    python benchmarks/lint_scaling.py [--sizes 5000 10000 25000 50000] [--repeats 3] [--shapes ...]

Each shape is generated at each size (in lines) and linted in-process by the engine (``lint_tree``, every
rule, no project index). The repeats go round the sizes in turn (one lint of each size per round), so
that the machine's drift over minutes falls on every size alike. For each size it prints the time (mean
and median of the repeats, parse excluded), the peak memory the lint allocates (tracemalloc, in a
separate run so that it does not slow the timed ones), the number of findings, and whether any rule
failed (AMP000). Then the growth per doubling of the size, between consecutive sizes and fitted over all
of them (least squares on log size, log median time): linear code grows 2x per doubling, quadratic code
4x. Goal: the fitted growth at most 2.2x per doubling for time and memory, and no AMP000.

The shapes:

* ``epsilon-chain``: one function of N statements ``x = x + 1e-8`` (every statement reads the last).
* ``layer-chain``: a forward of N chained layer calls ``h = self.layerK(h)`` inside one autocast block.
* ``train-script``: ``examples/train_buggy.py`` repeated to N lines.
* ``cast-chains``: N lines of reductions, one in 50 of them ``y = x.half().half()... .sum()`` 400 calls
  deep (the old analysis failed past about 175).
* ``scale-chains``: N lines of arithmetic, one in 50 of them ``y = h * 1e9 * 1e9 ...`` 400 factors long
  (the old analysis failed past about 330).
* ``huge-literals``: N lines filling and mixing integer literals beyond float range (``10**400``).
"""

from __future__ import annotations

import argparse
import ast
import gc
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

from flake8_amp.engine import INTERNAL_ERROR_CODE, LintOptions, lint_tree

REPOSITORY = Path(__file__).resolve().parent.parent
GOAL = 2.2
CHAIN_DEPTH = 400
#: every rule, preview rules included: the shapes below are the worst cases of rules in both groups
OPTIONS = LintOptions(project_index=False, preview=True)


def epsilon_chain(lines: int) -> str:
    body = "".join("    x = x + 1e-8\n" for _ in range(lines))
    return f"import torch\n\n\ndef guard(x):\n    x = x.half()\n{body}    return x\n"


def layer_chain(lines: int) -> str:
    body = "".join(f"            h = self.layer{i % 64}(h)\n" for i in range(lines))
    return (
        "import torch\n\n\nclass Net(torch.nn.Module):\n    def forward(self, h):\n"
        f'        with torch.autocast("cuda"):\n{body}        return h\n'
    )


def train_script(lines: int) -> str:
    text = (REPOSITORY / "examples" / "train_buggy.py").read_text(encoding="utf-8")
    copies = max(1, lines // text.count("\n"))
    return "\n".join([text] * copies)


def cast_chains(lines: int) -> str:
    chain = ".half()" * CHAIN_DEPTH
    body = "".join(f"    y{i} = x{chain if i % 50 == 0 else '.half()'}.sum()\n" for i in range(lines))
    return f"import torch\n\n\ndef reduce(x):\n{body}"


def scale_chains(lines: int) -> str:
    chain = " * 1e9" * CHAIN_DEPTH
    body = "".join(f"    y{i} = h{chain if i % 50 == 0 else ' * 1e9'}\n" for i in range(lines))
    return f"import torch\n\n\ndef scale(x):\n    h = x.half()\n{body}"


def huge_literals(lines: int) -> str:
    huge = "1" + "0" * 400
    body = "".join(
        f"    s = s.masked_fill(m, -{huge})\n" if i % 2 else f"    t = t * 10**400 + {huge}\n" for i in range(lines)
    )
    return f"import torch\n\n\ndef fill(s, t, m):\n    s = s.half()\n    t = t.half()\n{body}"


SHAPES: dict[str, Callable[[int], str]] = {
    "epsilon-chain": epsilon_chain,
    "layer-chain": layer_chain,
    "train-script": train_script,
    "cast-chains": cast_chains,
    "scale-chains": scale_chains,
    "huge-literals": huge_literals,
}


def timed(tree: ast.Module) -> tuple[float, list]:
    gc.collect()
    start = time.perf_counter()
    findings = lint_tree(tree, OPTIONS)
    return time.perf_counter() - start, findings


def peak_memory(tree: ast.Module) -> int:
    gc.collect()
    tracemalloc.start()
    lint_tree(tree, OPTIONS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def fitted_growth(sizes: list[int], values: list[float]) -> float:
    """2 ** (the slope of log(value) against log2(size)): the growth per doubling over every size."""
    xs = [math.log2(size) for size in sizes]
    ys = [math.log2(value) for value in values]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return 2**slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 25000, 50000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = parser.parse_args()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))  # ast.parse of 400-deep chains
    worst = 0.0
    failures = []
    for name in args.shapes:
        print(f"\n{name}")
        print(f"  {'lines':>7} {'mean s':>8} {'median s':>9} {'peak MiB':>9} {'findings':>9}  AMP000")
        # One tree alive at a time, as flake8 lints one file at a time: keeping every size's tree alive
        # would make each garbage collection during a lint walk the other sizes' trees too.
        sources = {size: SHAPES[name](size) for size in args.sizes}
        times: dict[int, list[float]] = {size: [] for size in args.sizes}
        found: dict[int, int] = {}
        failed_sizes: set[int] = set()
        for _ in range(args.repeats):
            for size in args.sizes:
                tree = ast.parse(sources[size])
                seconds, findings = timed(tree)
                del tree
                times[size].append(seconds)
                found[size] = len(findings)
                if any(f.code == INTERNAL_ERROR_CODE for f in findings):
                    failed_sizes.add(size)
        medians, peaks = [], []
        for size in args.sizes:
            peak = peak_memory(ast.parse(sources[size]))
            failed = size in failed_sizes
            medians.append(statistics.median(times[size]))
            peaks.append(peak)
            print(
                f"  {size:>7} {statistics.mean(times[size]):>8.3f} {medians[-1]:>9.3f} "
                f"{peak / 2**20:>9.1f} {found[size]:>9}  {'YES' if failed else 'no'}"
            )
            if failed:
                failures.append(f"{name} at {size} lines")
        for index in range(len(args.sizes) - 1):
            small, large = args.sizes[index], args.sizes[index + 1]
            doublings = math.log2(large / small)
            mean_growth = (statistics.mean(times[large]) / statistics.mean(times[small])) ** (1 / doublings)
            median_growth = (medians[index + 1] / medians[index]) ** (1 / doublings)
            memory_growth = (peaks[index + 1] / peaks[index]) ** (1 / doublings)
            print(
                f"  {small:>6} -> {large:<6} per doubling: time {mean_growth:.2f}x (mean) {median_growth:.2f}x (median), "
                f"memory {memory_growth:.2f}x"
            )
        time_fit, memory_fit = fitted_growth(args.sizes, medians), fitted_growth(args.sizes, peaks)
        worst = max(worst, time_fit, memory_fit)
        print(f"  fitted over all sizes, per doubling: time {time_fit:.2f}x (median), memory {memory_fit:.2f}x")
    print(f"\nworst fitted growth per doubling (median time or memory): {worst:.2f}x (goal <= {GOAL}x)")
    if failures:
        print("AMP000 (a rule failed) on: " + ", ".join(failures))
    return 0 if worst <= GOAL and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
