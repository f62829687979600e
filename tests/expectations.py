"""Fixture files state their expected findings in comments, flake8-bugbear style, with columns.

* A line that must raise a finding ends with ``# expect: AMP003:5``: the code and the column flake8 prints
  (1-based). Several: ``# expect: AMP001:9, AMP005:20``. Every other line must raise nothing of the codes
  the fixture is about (its file name says which: ``amp003_...py``; a project folder's name likewise).
* ``# options: --amp-precision=bf16`` near the top runs the fixture (and every linter on it) with those
  options.
* Every fixture has a message snapshot in ``tests/snapshots/``: one ``line:col CODE message`` per finding,
  exactly what flake8 prints after the file name. ``FLAKE8_AMP_UPDATE_SNAPSHOTS=1 pytest`` rewrites them;
  read the diff before committing it.
* A multi-module case is a folder under ``fixtures/projects/`` with a ``setup.cfg`` (a project root for
  the project index); its snapshot lists ``path:line:col CODE message`` for every file.

Fixtures are linted from copies outside this repository: here they sit in a ``tests/`` folder, which the
exemption policy reads as test code, as it would in a user's project.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

from flake8_amp.engine import LintOptions, lint_source

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
PROJECTS = FIXTURES / "projects"
SNAPSHOTS = TESTS / "snapshots"
FIXTURE_FILES = sorted(FIXTURES.glob("amp*.py"))
PROJECT_FOLDERS = sorted(path for path in PROJECTS.iterdir() if path.is_dir()) if PROJECTS.is_dir() else []

EXPECT = re.compile(r"#\s*expect:\s*(.+?)\s*$")
EXPECTED_ITEM = re.compile(r"^(AMP\d{3}):(\d+)$")
OPTIONS = re.compile(r"^#\s*options:\s*(.+?)\s*$", re.M)

#: (line, 1-based column, code)
Expected = tuple[int, int, str]


def fixture_codes(path: Path) -> set[str]:
    """``amp003_loss_outside_autocast.py`` (or a project folder ``amp002_...``) is about AMP003."""
    return {match.upper() for match in re.findall(r"amp\d{3}", path.stem)}


def expected_findings(source: str, codes: set[str]) -> set[Expected]:
    expected = set()
    for number, line in enumerate(source.splitlines(), start=1):
        match = EXPECT.search(line)
        if not match:
            continue
        for item in re.split(r"\s*,\s*", match.group(1)):
            parsed = EXPECTED_ITEM.match(item)
            if parsed is None:
                raise ValueError(f"line {number}: expected 'AMP0NN:column', got {item!r}")
            if parsed.group(1) in codes:
                expected.add((number, int(parsed.group(2)), parsed.group(1)))
    return expected


def fixture_arguments(source: str) -> list[str]:
    """The command-line options a fixture's ``# options:`` header asks for."""
    match = OPTIONS.search(source)
    return match.group(1).split() if match else []


def lint_options(arguments: list[str]) -> LintOptions:
    precision = None
    project_index = True
    for argument in arguments:
        name, _, value = argument.partition("=")
        if name == "--amp-precision":
            precision = None if value == "auto" else value
        elif name == "--amp-project-index":
            project_index = value == "on"
        else:
            raise ValueError(f"unknown fixture option {argument!r}")
    # A fixture is about its rules, preview rules included: every fixture runs them.
    return LintOptions(precision=precision, project_index=project_index, preview=True)


_COPIES: list[Path] = []


def copied(path: Path) -> Path:
    """Where the fixture's copy outside the repository is (every fixture is copied once per session)."""
    if not _COPIES:
        folder = Path(tempfile.mkdtemp(prefix="flake8-amp-fixtures-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        for fixture in FIXTURE_FILES:
            shutil.copy(fixture, folder / fixture.name)
        _COPIES.append(folder)
    return _COPIES[0] / path.name


def lint_file(path: Path):
    """The engine's findings for a file, linted as flake8 would lint it (its path, its options)."""
    source = path.read_text(encoding="utf-8")
    return lint_source(source, lint_options(fixture_arguments(source)), path=str(path))


def lint_fixture(path: Path):
    """A single-file fixture's findings, linted from its copy."""
    return lint_file(copied(path))


def actual_findings(path: Path, codes: set[str], lint=lint_fixture) -> set[Expected]:
    return {(f.line, f.col + 1, f.code) for f in lint(path) if f.code in codes}


def snapshot_lines(findings, codes: set[str], prefix: str = "") -> list[str]:
    return [f"{prefix}{f.line}:{f.col + 1} {f.message}" for f in findings if f.code in codes]


def check_snapshot(name: str, lines: list[str]) -> None:
    """The lines must equal ``tests/snapshots/<name>.txt`` (or rewrite it when asked to)."""
    path = SNAPSHOTS / f"{name}.txt"
    text = "".join(line + "\n" for line in lines)
    if os.environ.get("FLAKE8_AMP_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"no snapshot {path}: run with FLAKE8_AMP_UPDATE_SNAPSHOTS=1 and review it"
    assert text.splitlines() == path.read_text(encoding="utf-8").splitlines()


def copy_project(folder: Path, destination: Path) -> Path:
    """A project fixture copied out of the repository, so that its index cache lands in a temporary folder."""
    target = destination / folder.name
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".flake8_amp_cache", "__pycache__"))
    return target


def project_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))
