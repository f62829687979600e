"""What the AMP plugin adds to a flake8 run, with the project index built from nothing and from its cache.

    python benchmarks/lint_speed.py [DIR] [--pairs 2] [--rounds 1]     # about 17 minutes on 2 cores

Compares ``flake8 --select E9`` without the AMP plugin loaded against ``flake8 --select E9,AMP`` with
it, on the same files, and prints their ratio. DIR must be a project (a folder the project index treats
as one: with a pyproject.toml, setup.cfg, setup.py or .git); it defaults to a copy of the installed torch
package's source (about 2,300 files) in a temporary project folder, so that the index reads a real
project's modules. flake8 runs every loaded plugin whatever ``--select`` says, so the baseline drops the
plugin from flake8's plugin list rather than deselecting it: that is flake8 exactly as if flake8-amp were
not installed.

Every measurement is taken twice: **cold**, the project index's cache deleted just before (a first run,
or a CI machine without the cache), and **warm**, the cache the cold run left (every later run). Goal: a
cold ratio of at most 1.10 in both measurements; the warm ratio is printed beside it.

The machine this runs on is shared, and its speed drifts by 10-20% over minutes, so two whole runs
taken one after the other cannot resolve a few percent. Both measurements therefore pair each timing
of the plugin with a baseline timing taken under the same conditions:

* **Whole processes, side by side** (``--pairs``): the two flake8 commands (``--jobs=1``, start-up,
  plugin import and reporting included) start together, one per core, and run over the same
  directory at the same time; the ratio of their wall times is one pair. The start order alternates.
  Needs two free cores.
* **Interleaved, per file** (``--rounds``): one process holds both flake8 configurations and runs
  flake8's own ``FileChecker`` (read, tokenize, parse, every plugin) on each file with both, back to
  back, alternating which goes first. Garbage collection triggered by either configuration's
  allocations is counted wherever it happens to fall.

Also checks that ``import flake8_amp`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flake8.checker import FileChecker
from flake8.options.parse_args import parse_args
from flake8.plugins import finder

from flake8_amp.analysis.project_index import CACHE_DIRECTORY, ProjectIndex, find_root

GOAL = 1.10
PLUGIN_PACKAGE = "flake8-amp"

# Runs flake8's own main(); with "--without-amp" first, the AMP entry point is filtered out of the
# plugins flake8 finds, exactly as if the package were not installed.
DRIVER = f"""
import sys
from flake8.main import cli
from flake8.plugins import finder

if sys.argv[1] == "--without-amp":
    del sys.argv[1]
    original = finder.find_plugins

    def find_plugins_without_amp(*args, **kwargs):
        return [p for p in original(*args, **kwargs) if p.package != {PLUGIN_PACKAGE!r}]

    finder.find_plugins = find_plugins_without_amp
sys.exit(cli.main(sys.argv[1:]))
"""


def default_directory(scratch: Path) -> Path:
    """A project holding a copy of the installed torch package's source."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed: pass a directory to lint")
    project = scratch / "torch-project"
    shutil.copytree(next(iter(spec.submodule_search_locations)), project / "torch", ignore=shutil.ignore_patterns("*.so*", "*.a", "*.h", "*.pyi", "__pycache__"))
    (project / "pyproject.toml").write_text("")
    return project


def clear_cache(directory: Path) -> None:
    """A cold start: the project index's cache deleted."""
    shutil.rmtree(directory / CACHE_DIRECTORY, ignore_errors=True)


def report(label: str, base: tuple[float, float], amp: tuple[float, float]) -> float:
    """Print one paired timing ((wall, CPU) each) and return its wall-time ratio."""
    ratio = amp[0] / base[0]
    print(
        f"  {label}: E9 {base[0]:.2f}s wall / {base[1]:.2f}s CPU   "
        f"E9,AMP {amp[0]:.2f}s wall / {amp[1]:.2f}s CPU   ratio {ratio:.3f}"
    )
    return ratio


# ------------------------------------------------------------------ whole processes, side by side
def start_flake8(directory: Path, with_amp: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", DRIVER]
    command += [] if with_amp else ["--without-amp"]
    command += ["--select=E9,AMP" if with_amp else "--select=E9", "--jobs=1", "--exit-zero", "-q", str(directory)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def side_by_side(directory: Path, pair: int, cold: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """((wall, CPU) without the plugin, (wall, CPU) with it), both flake8 runs going at once."""
    if cold:
        clear_cache(directory)
    order = (False, True) if pair % 2 == 0 else (True, False)
    start = time.perf_counter()
    processes = {with_amp: start_flake8(directory, with_amp) for with_amp in order}
    pids = {process.pid: with_amp for with_amp, process in processes.items()}
    timings: dict[bool, tuple[float, float]] = {}
    while pids:
        pid, status, usage = os.wait4(-1, 0)  # each child's own CPU time, not the sum of both
        if pid not in pids:
            continue
        with_amp = pids.pop(pid)
        processes[with_amp].returncode = os.waitstatus_to_exitcode(status)
        if processes[with_amp].returncode != 0:
            sys.exit(f"flake8 {'with' if with_amp else 'without'} the AMP plugin failed")
        timings[with_amp] = (time.perf_counter() - start, usage.ru_utime + usage.ru_stime)
    return timings[False], timings[True]


# ------------------------------------------------------------------ interleaved, in one process
def flake8_configuration(with_amp: bool) -> tuple[Any, argparse.Namespace]:
    """flake8's checker plugins and options, as ``flake8 --select ...`` would build them."""
    original = finder.find_plugins
    if not with_amp:
        finder.find_plugins = lambda *a, **k: [p for p in original(*a, **k) if p.package != PLUGIN_PACKAGE]
    try:
        plugins, options = parse_args(["--select=E9,AMP" if with_amp else "--select=E9"])
    finally:
        finder.find_plugins = original
    loaded = {plugin.plugin.package for plugin in plugins.all_plugins()}
    if (PLUGIN_PACKAGE in loaded) != with_amp:
        sys.exit(f"flake8 configuration {'with' if with_amp else 'without'} the AMP plugin could not be built")
    return plugins.checkers, options


def check_file(configuration: tuple[Any, argparse.Namespace], filename: str) -> tuple[float, float, int]:
    """(wall, CPU, AMP findings) for flake8's whole per-file work on one file."""
    checkers, options = configuration
    wall, cpu = time.perf_counter(), time.process_time()
    _, results, _ = FileChecker(filename=filename, plugins=checkers, options=options).run_checks()
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    return (*elapsed, sum(1 for result in results if result[0].startswith("AMP")))


def interleaved(files: list[str], round_number: int, configurations: dict[bool, Any]) -> tuple[list[float], int]:
    """[baseline wall, AMP wall, baseline CPU, AMP CPU] summed over every file, and the AMP findings. The
    project index is this process's own: a new one reads the disk cache as a new flake8 run would."""
    ProjectIndex.forget()
    totals = [0.0, 0.0, 0.0, 0.0]
    findings = 0
    for index, filename in enumerate(files):
        order = (True, False) if (index + round_number) % 2 == 0 else (False, True)
        for with_amp in order:
            wall, cpu, results = check_file(configurations[with_amp], filename)
            totals[int(with_amp)] += wall
            totals[2 + int(with_amp)] += cpu
            findings += results if with_amp else 0
    return totals, findings


def torch_free_import() -> bool:
    code = "import sys, flake8_amp, flake8_amp.plugin; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return result.stdout.strip() == "False"


def verdict(ratio: float) -> str:
    return f"the plugin adds {100 * (ratio - 1):+.1f}% (goal <= {100 * (GOAL - 1):+.0f}%: {'met' if ratio <= GOAL else 'NOT MET'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=2, help="side-by-side pairs of whole flake8 runs, cold and warm each (0: none)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds over every file, cold and warm each (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flake8-amp-lint-speed-") as scratch:
        directory = args.directory or default_directory(Path(scratch))
        if find_root(next(directory.rglob("*.py"), directory / "none.py")) is None:
            sys.exit(f"{directory}: not inside a project (no pyproject.toml, setup.cfg, setup.py or .git above it)")
        return measure(directory.resolve(), args.pairs, args.rounds)


def measure(directory: Path, pairs: int, rounds: int) -> int:
    files = sorted(str(path) for path in directory.rglob("*.py"))
    if not files:
        sys.exit(f"{directory}: no Python files to lint")
    ratios: dict[str, list[float]] = {"cold": [], "warm": []}

    if pairs:
        if (os.cpu_count() or 1) < 2:
            sys.exit("side-by-side runs need two cores: pass --pairs 0")
        print(f"whole processes, side by side: flake8 --jobs=1 over {len(files)} files under {directory}")
        start_flake8(directory, False).wait()  # warm the file cache and flake8's plugin discovery
        pair_ratios: dict[str, list[float]] = {"cold": [], "warm": []}
        for pair in range(pairs):
            for state in ("cold", "warm"):
                timings = side_by_side(directory, pair, cold=state == "cold")
                pair_ratios[state].append(report(f"pair {pair + 1}, {state} index", *timings))
        for state in ("cold", "warm"):
            ratios[state].append(statistics.median(pair_ratios[state]))
            print(f"whole processes, {state} index: median ratio {ratios[state][-1]:.3f}; {verdict(ratios[state][-1])}")

    if rounds:
        print(f"interleaved per file: flake8's FileChecker on {len(files)} files, both configurations back to back")
        configurations = {False: flake8_configuration(False), True: flake8_configuration(True)}
        interleaved(files[:50], 0, configurations)  # warm the file cache and both configurations
        for state in ("cold", "warm"):
            sums = [0.0, 0.0, 0.0, 0.0]
            for round_number in range(rounds):
                if state == "cold":
                    clear_cache(directory)
                totals, findings = interleaved(files, round_number, configurations)
                report(f"round {round_number + 1}, {state} index ({findings} AMP findings)", (totals[0], totals[2]), (totals[1], totals[3]))
                sums = [a + b for a, b in zip(sums, totals)]
            ratios[state].append(sums[1] / sums[0])
            print(f"interleaved, {state} index: ratio {ratios[state][-1]:.3f} wall, {sums[3] / sums[2]:.3f} CPU; {verdict(ratios[state][-1])}")

    print(f"import flake8_amp without torch: {'yes' if torch_free_import() else 'NO: torch was imported'}")
    return 0 if all(ratio <= GOAL for ratio in ratios["cold"]) else 1


if __name__ == "__main__":
    sys.exit(main())
