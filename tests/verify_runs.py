"""Running ``runtime.verify`` on small scripts written for one test, the way a user runs it on theirs."""

from __future__ import annotations

import textwrap
from pathlib import Path

from flake8_amp.runtime.verification import VerifyReport, verify
from flake8_amp.runtime.verification.report import VerifiedFinding


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def run_verify(folder: Path, source: str, *, name: str = "train.py", args=(), steps=None, timeout=None,
               files: dict[str, str] | None = None) -> VerifyReport:
    """Write ``source`` (and ``files``, other modules of the project) into ``folder`` and verify it.
    The caller chdirs into ``folder`` first (``monkeypatch.chdir``) so that flake8 reads no other config."""
    for other, text in (files or {}).items():
        write(folder, other, text)
    script = write(folder, name, source)
    return verify(script, args=args, steps=steps, timeout=timeout)


def verdict_of(report: VerifyReport, code: str, line: int | None = None) -> VerifiedFinding:
    """The one finding with that code (at that line): fails the test when there is not exactly one."""
    matches = [f for f in report.findings if f.code == code and (line is None or f.line == line)]
    assert len(matches) == 1, f"expected one {code} finding{f' at line {line}' if line else ''}, got:\n{report}"
    return matches[0]
