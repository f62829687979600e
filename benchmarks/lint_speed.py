"""What the AMP plugin adds to a flake8 run.

    python benchmarks/lint_speed.py [DIR] [--rounds 3] [--jobs 1]

Times ``flake8 --select E9`` without the AMP plugin loaded against ``flake8 --select E9,AMP`` with it,
on the same files, alternating A/B runs, and prints the median of each and their ratio. DIR defaults
to the installed torch package's source (about 2,300 files). flake8 runs every loaded plugin whatever
``--select`` says, so the baseline drops the plugin from flake8's plugin list rather than deselecting
it. Both wall time and the CPU time of the flake8 processes are reported: on a shared machine the CPU
time is the steadier measure. Goal: a ratio of at most 1.10. Also checks that ``import flake8_amp`` does
not import torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Runs flake8's own main(); with "--without-amp" first, the AMP entry point is filtered out of the
# plugins flake8 finds, exactly as if the package were not installed.
DRIVER = """
import sys
from flake8.main import cli
from flake8.plugins import finder

if sys.argv[1] == "--without-amp":
    del sys.argv[1]
    original = finder.find_plugins

    def find_plugins_without_amp(*args, **kwargs):
        return [p for p in original(*args, **kwargs) if p.package != "flake8-amp"]

    finder.find_plugins = find_plugins_without_amp
sys.exit(cli.main(sys.argv[1:]))
"""


def default_directory() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed: pass a directory to lint")
    return Path(next(iter(spec.submodule_search_locations)))


def run_flake8(directory: Path, with_amp: bool, jobs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the flake8 process and its workers)."""
    select = "E9,AMP" if with_amp else "E9"
    command = [sys.executable, "-c", DRIVER]
    command += [] if with_amp else ["--without-amp"]
    command += [f"--select={select}", f"--jobs={jobs}", "--exit-zero", "-q", str(directory)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def torch_free_import() -> bool:
    code = "import sys, flake8_amp, flake8_amp.plugin; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return result.stdout.strip() == "False"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="flake8 --jobs (1 keeps timings steady)")
    args = parser.parse_args()
    directory = args.directory or default_directory()
    files = sum(1 for _ in directory.rglob("*.py"))
    print(f"linting {files} files under {directory} (--jobs={args.jobs}, {args.rounds} rounds, alternating)")

    run_flake8(directory, True, args.jobs)  # warm the file cache and flake8's plugin discovery
    baseline, with_amp = [], []
    for round_number in range(1, args.rounds + 1):
        baseline.append(run_flake8(directory, False, args.jobs))
        with_amp.append(run_flake8(directory, True, args.jobs))
        print(
            f"  round {round_number}: E9 {baseline[-1][0]:.2f}s wall / {baseline[-1][1]:.2f}s CPU   "
            f"E9,AMP {with_amp[-1][0]:.2f}s wall / {with_amp[-1][1]:.2f}s CPU"
        )
    for label, index in (("wall", 0), ("CPU", 1)):
        base = statistics.median(run[index] for run in baseline)
        amp = statistics.median(run[index] for run in with_amp)
        print(
            f"{label:4s}: flake8 --select E9 (no AMP plugin) {base:.2f}s, --select E9,AMP {amp:.2f}s median: "
            f"ratio {amp / base:.3f} (the plugin adds {100 * (amp / base - 1):+.1f}%; goal <= +10%)"
        )
    print(f"import flake8_amp without torch: {'yes' if torch_free_import() else 'NO: torch was imported'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
