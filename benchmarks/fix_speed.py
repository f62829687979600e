"""What ``flake8-amp fix`` costs beside ``flake8-amp check``, and beside TorchFix, on the same files.

    python benchmarks/fix_speed.py [DIR ...] [--repeats 3] [--torchfix PATH] [--torchfix-repeats 1]

Each DIR (default: a copy of the installed torch package's source, about 2,300 files, as in
lint_speed.py) is linted and fixed by whole processes, as users run them, each with every core (their
default ``--jobs``), one at a time, the order rotating from one repeat to the next so that a drift in the
shared machine's speed falls on every command alike:

* ``flake8-amp check DIR``: the lint alone;
* ``flake8-amp fix --diff DIR``: the same lint, the fixes built, applied in memory, linted again, and
  printed as a diff (nothing is written);
* ``torchfix DIR`` and ``torchfix --fix DIR`` (TorchFix's own rules, on a fresh copy each time, as it
  writes): where TorchFix is installed. Install it apart from the project (it must not share an
  environment with torch's pin): ``python -m venv /tmp/torchfix-venv && /tmp/torchfix-venv/bin/pip install
  torchfix``, then pass ``--torchfix /tmp/torchfix-venv/bin/torchfix`` or set ``TORCHFIX`` to that path.

The project index's cache is warmed by one untimed check first (every later run finds it). It prints the
mean and median wall time of each command, how many findings each reported or would fix, and the ratios
fix/check and TorchFix/flake8-amp.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAKE8_AMP = [sys.executable, "-m", "flake8_amp.cli"]
_WOULD_FIX = re.compile(r"Would fix (\d+) findings? in (\d+) files?")


def default_directory(scratch: Path) -> Path:
    """A project holding a copy of the installed torch package's source."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed: pass a directory")
    project = scratch / "torch-project"
    shutil.copytree(
        next(iter(spec.submodule_search_locations)),
        project / "torch",
        ignore=shutil.ignore_patterns("*.so*", "*.a", "*.h", "*.pyi", "__pycache__"),
    )
    (project / "pyproject.toml").write_text("")
    return project


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, result


def torchfix_findings(output: str) -> int:
    return sum(1 for line in output.splitlines() if re.search(r":\d+:\d+: TOR\d+", line))


def measure(directory: Path, repeats: int, torchfix: str | None, torchfix_repeats: int, scratch: Path) -> None:
    files = sum(1 for _ in directory.rglob("*.py"))
    print(f"{directory} ({files} Python files)")
    timed([*FLAKE8_AMP, "check", "."], directory)  # warms the project index's cache and the file cache
    commands = {
        "flake8-amp check": [*FLAKE8_AMP, "check", "."],
        "flake8-amp fix --diff": [*FLAKE8_AMP, "fix", "--diff", "."],
    }
    if torchfix:
        commands["torchfix"] = [torchfix, "."]
        commands["torchfix --fix"] = [torchfix, "--fix", "."]
    times: dict[str, list[float]] = {name: [] for name in commands}
    counts: dict[str, str] = {}
    names = list(commands)
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            if name.startswith("torchfix") and len(times[name]) >= torchfix_repeats:
                continue
            cwd = directory
            if name == "torchfix --fix":  # it writes: a fresh copy each time, copied outside the timing
                cwd = scratch / f"torchfix-copy-{repeat}"
                shutil.copytree(directory, cwd, symlinks=True)
            elapsed, result = timed(commands[name], cwd)
            if cwd != directory:
                shutil.rmtree(cwd)
            if result.returncode not in (0, 1):
                sys.exit(f"{name} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
            times[name].append(elapsed)
            if name == "flake8-amp check":
                counts[name] = f"{sum(1 for line in result.stdout.splitlines() if ' AMP' in line)} findings"
            elif name == "flake8-amp fix --diff":
                match = _WOULD_FIX.search(result.stderr)
                counts[name] = f"would fix {match.group(1)}, in {match.group(2)} file(s)" if match else "?"
            elif name == "torchfix":
                counts[name] = f"{torchfix_findings(result.stdout)} findings"
            else:
                counts[name] = "fixed in place"
    for name, values in times.items():
        print(
            f"  {name:24} mean {statistics.mean(values):7.2f}s  median {statistics.median(values):7.2f}s  "
            f"({len(values)} runs; {counts.get(name, '')})"
        )
    check = statistics.median(times["flake8-amp check"])
    fix = statistics.median(times["flake8-amp fix --diff"])
    print(f"  ratio fix --diff / check: {fix / check:.2f}")
    if torchfix:
        print(f"  ratio torchfix / flake8-amp check: {statistics.median(times['torchfix']) / check:.2f}")
        print(f"  ratio torchfix --fix / flake8-amp fix --diff: {statistics.median(times['torchfix --fix']) / fix:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each flake8-amp command (default 3)")
    parser.add_argument("--torchfix", default=os.environ.get("TORCHFIX"), help="the torchfix executable (or $TORCHFIX)")
    parser.add_argument(
        "--torchfix-repeats", type=int, default=1, help="runs of each TorchFix command (default 1: it is slow)"
    )
    args = parser.parse_args()
    if args.torchfix and not shutil.which(args.torchfix):
        sys.exit(f"--torchfix {args.torchfix}: no such executable")
    if not args.torchfix:
        print("TorchFix: not given (--torchfix PATH or TORCHFIX=PATH); timing flake8-amp alone")
    with tempfile.TemporaryDirectory(prefix="flake8-amp-fix-speed-") as scratch:
        directories = args.directories or [default_directory(Path(scratch))]
        for directory in directories:
            measure(directory.resolve(), args.repeats, args.torchfix, args.torchfix_repeats, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
