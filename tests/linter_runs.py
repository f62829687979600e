"""Running the front ends the way users do: flake8 as a subprocess, pylint and the flake8-amp command in-process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from pylint.lint import Run as PylintRun
from pylint.message import Message
from pylint.reporters import CollectingReporter

from expectations import FIXTURE_FILES  # noqa: F401 - the fixtures these runs are about

REPOSITORY = Path(__file__).resolve().parent.parent
FLAKE8_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<code>[A-Z]+\d+) ")

#: (file name, line, 0-based column, code)
Finding = tuple[str, int, int, str]


class Run(NamedTuple):
    """A command's exit status and what it printed."""

    status: int
    out: str
    err: str


def cli_runner(command: str, monkeypatch, capsys) -> Callable[..., Run]:
    """``flake8-amp <command> ARGS`` in-process, from ``cwd`` (pytest's monkeypatch and capsys fixtures)."""
    from flake8_amp.cli import main

    def run(*args: object, cwd: Path) -> Run:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        status = main([command, *map(str, args)])
        out, err = capsys.readouterr()
        return Run(status, out, err)

    return run


def run_flake8(paths: Iterable[Path], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "AMP", *args, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def flake8_findings(stdout: str) -> set[Finding]:
    findings = set()
    for line in stdout.splitlines():
        match = FLAKE8_LINE.match(line)
        assert match, f"not a flake8 finding: {line!r}"
        findings.add((Path(match["path"]).name, int(match["line"]), int(match["col"]) - 1, match["code"]))
    return findings


def run_pylint(paths: Iterable[Path], *args: str, only_amp: bool = True) -> list[Message]:
    """pylint's messages; ``only_amp`` runs the amp checker alone (all of its messages enabled)."""
    selection = ["--disable=all", "--enable=amp"] if only_amp else []
    reporter = CollectingReporter()
    # --ignored-modules=torch: pylint's own checkers would otherwise have astroid build torch (seconds);
    # the amp checker reads the module's text and never looks at astroid's inference.
    argv = ["--load-plugins=pylint_amp", "--persistent=n", "--ignored-modules=torch", *selection, *args]
    argv += map(str, paths)
    PylintRun(argv, reporter=reporter, exit=False)
    return reporter.messages


def pylint_findings(messages: Iterable[Message]) -> set[Finding]:
    """The AMP code is the first word of every amp message, as in flake8."""
    return {(Path(m.path).name, m.line, m.column, m.msg.split()[0]) for m in messages if m.symbol.startswith("amp-")}
