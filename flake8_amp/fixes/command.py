"""``flake8-amp fix PATH...``: apply the rules' automatic fixes in place.

    flake8-amp fix src/                    fix what `flake8-amp check src/` reports and a safe fix exists for
    flake8-amp fix src/ --diff             print the fixes as a unified diff; write nothing
    flake8-amp fix src/ --check            write nothing; exit 1 when something would change
    flake8-amp fix src/ --unsafe-fixes     apply the unsafe fixes too (see each rule doc's "Fix safety")
    flake8-amp fix src/ --min-torch 2.1    the oldest torch the fixed code must keep working on

It fixes exactly the findings ``flake8-amp check`` with the same arguments would report: flake8's options,
configuration files (``[flake8]`` select, ignore, extend-ignore, per-file-ignores, amp-precision ...),
``# noqa`` and ``# noqa: AMP013`` comments and file discovery are flake8's own, through
:mod:`flake8_amp.check`. A file is written only when every fix applied to it left code that parses, with
its encoding, byte-order mark and line endings kept.

Output, as ruff's: the diffs on stdout (``--diff``), and on stderr one line per file that could not be
fixed and the summary ``Fixed N findings in M files (K remaining; U fixable with --unsafe-fixes).``
Exit status: 0 when nothing is left to fix; 1 with ``--diff`` or ``--check`` when something would change,
or when a file could not be read, parsed or fixed; 2 for a usage error or a bad configuration value.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import tokenize
from dataclasses import dataclass, field
from typing import Sequence

from flake8 import utils
from flake8.exceptions import ExecutionError
from flake8.formatting.default import Nothing
from flake8.options.manager import OptionManager
from flake8.processor import FileProcessor
from flake8.style_guide import StyleGuideManager

from ..check import UsageError, expanded_filenames, job_count, map_over_files, one_line, parse_options
from ..engine import LintOptions
from ..rules.base import Finding
from ..settings import lint_options, may_select_amp
from .driver import fix_source
from .torch_floor import ASSUMED, TorchFloor, TorchFloors, parse_version

PROG = "flake8-amp fix"
INSTALL_HINT = "pip install 'flake8-amp[fix]'"
_DESCRIPTION = (
    "Apply the AMP rules' automatic fixes in place, to the findings `flake8-amp check` with the same arguments "
    "reports: flake8's options, configuration files and noqa comments. Safe fixes only, unless --unsafe-fixes."
)

#: flake8 options about printing findings, which fix does not do: accepted, left out of --help
_REPORTING_OPTIONS = frozenset(
    {"format", "show_source", "statistics", "count", "tee", "exit_zero", "output_file", "quiet", "color"}
)


@dataclass
class FileFix:
    """What fixing one file did (what a worker process sends back)."""

    filename: str
    #: the text before and after, for files that changed
    before: str = ""
    after: str = ""
    encoding: str = "utf-8"
    fixed: int = 0
    remaining: int = 0
    unsafe_fixable: int = 0
    #: why the file was not fixed (unreadable, does not parse, a fix produced invalid code)
    error: str | None = None
    floor_assumed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.after != self.before


def main(argv: Sequence[str]) -> int:
    """Run ``flake8-amp fix`` with ``argv`` (the arguments after ``fix``); returns the exit status."""
    if importlib.util.find_spec("ast_grep_py") is None:
        sys.stderr.write(f"{PROG}: error: fixes need ast-grep-py, which is not installed: {INSTALL_HINT}\n")
        return 2
    try:
        options = parse_options(argv, PROG, _DESCRIPTION, None, _register_options)
        lint = lint_options(options, PROG)
        floor = _min_torch(options.min_torch)
        if utils.is_using_stdin(options.filenames):
            raise UsageError("fix edits files in place: name them (stdin is not read)")
    except UsageError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except SystemExit as exit:  # argparse (usage errors, --help, --version) and the amp options' checks
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    except ExecutionError as error:  # a malformed per-file-ignores
        sys.stderr.write(f"{PROG}: error: {one_line(error)}\n")
        return 2
    # A file reached through several paths (symbolic links: recipes that share a train.py) is fixed once.
    unique: dict[str, str] = {}
    for name in expanded_filenames(options):
        unique.setdefault(os.path.realpath(name), name)
    filenames = list(unique.values())
    try:
        results = map_over_files(fix_file, filenames, job_count(options), options, lint, floor)
    except KeyboardInterrupt:
        print("... stopped")
        return 1
    return report(sorted(results, key=lambda result: result.filename), write=not (options.diff or options.check),
                  show_diff=options.diff, unsafe=options.unsafe_fixes)


def _register_options(manager: OptionManager) -> None:
    manager.add_option("--diff", action="store_true", help="print the fixes as a unified diff and write nothing")
    manager.add_option("--check", action="store_true", help="write nothing; exit 1 when a fix would change a file")
    manager.add_option(
        "--unsafe-fixes",
        action="store_true",
        help="apply the unsafe fixes too: those that may change what the code does (each rule doc's Fix safety)",
    )
    manager.add_option(
        "--min-torch",
        metavar="VERSION",
        default=None,
        help="the oldest torch the fixed code must keep working on, e.g. 2.1 (Default: read from the project's "
        f"declared requirements; {ASSUMED[0]}.{ASSUMED[1]} where none declares one)",
    )
    for action in manager.parser._actions:
        if action.dest in _REPORTING_OPTIONS:
            action.help = argparse.SUPPRESS


def _min_torch(text: str | None) -> TorchFloor | None:
    if text is None:
        return None
    version = parse_version(text)
    if version is None:
        raise UsageError(f"--min-torch {text!r} is not a torch version such as 2.1")
    return TorchFloor(version, f"--min-torch {text}")


# ---------------------------------------------------------------- one file (in a worker process)
_guides: dict[int, StyleGuideManager] = {}
_floors: dict[int, TorchFloors] = {}


def fix_file(filename: str, options: argparse.Namespace, lint: LintOptions, floor: TorchFloor | None) -> FileFix:
    """Fix one file in memory: its findings that flake8's style guide would report, its fixes in text."""
    try:
        with open(filename, "rb") as source:
            raw = source.read()
        encoding = tokenize.detect_encoding(io.BytesIO(raw).readline)[0]
        text = raw.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError) as error:
        return FileFix(filename, error=f"cannot read it ({type(error).__name__}: {one_line(error)})")
    result = FileFix(filename, encoding=encoding)
    if not may_select_amp(options):
        return result
    guide = _guides.setdefault(id(options), StyleGuideManager(options, Nothing(options)))
    floors = _floors.setdefault(id(options), TorchFloors(floor))

    def reported(findings: list[Finding], current: str) -> list[Finding]:
        """The findings flake8 would report in ``current``: selected, not ignored for the file, no noqa."""
        if not findings:
            return findings
        processor = FileProcessor(filename, options, lines=io.StringIO(current, newline=None).readlines())
        if processor.should_ignore_file():
            return []
        with guide.processing_file(filename):
            return [
                finding
                for finding in findings
                if guide.handle_error(finding.code, filename, finding.line, finding.col,
                                      finding.message.split(" ", 1)[1], processor.noqa_line_for(finding.line))
            ]

    try:
        outcome = fix_source(text, path=filename, options=lint, wanted=reported, unsafe=options.unsafe_fixes,
                             floor=floors.for_file(filename))
    except (SyntaxError, ValueError) as error:
        where = f" (line {error.lineno})" if isinstance(error, SyntaxError) and error.lineno else ""
        reason = f"{type(error).__name__}: {one_line(error)}"
        return FileFix(filename, error=f"not fixed: it does not parse{where}: {reason}")
    result.notes = outcome.fix_failures
    if outcome.error:
        result.error = outcome.error
        return result
    if outcome.changed:  # the texts travel back from a worker process only where they differ
        result.before, result.after = text, outcome.text
    result.fixed = sum(outcome.fixed.values())
    result.remaining = len(outcome.remaining)
    result.unsafe_fixable = outcome.unsafe_fixable
    result.floor_assumed = outcome.floor_assumed
    return result


# ---------------------------------------------------------------- the report (in the main process)
def report(results: list[FileFix], write: bool, show_diff: bool, unsafe: bool) -> int:
    """Write or show the fixes, say what happened on stderr, and return the exit status."""
    changed = [result for result in results if result.changed]
    errors = [result for result in results if result.error]
    for result in changed:
        if show_diff:
            _print_bytes(_diff(result))
        if write:
            try:
                _write(result)
            except OSError as error:
                result.error = f"cannot write it ({type(error).__name__}: {error}): left unchanged"
                errors.append(result)
    for result in results:
        for note in result.notes:
            sys.stderr.write(f"{result.filename}: {note}\n")
        if result.error:
            sys.stderr.write(f"{result.filename}: {result.error}\n")
    fixed = sum(result.fixed for result in changed if not (write and result in errors))
    files = sum(1 for result in changed if not (write and result in errors))
    remaining = sum(result.remaining for result in results)
    unsafe_fixable = sum(result.unsafe_fixable for result in results)
    verb = "Fixed" if write else "Would fix"
    summary = f"{verb} {fixed} finding{'s' * (fixed != 1)} in {files} file{'s' * (files != 1)} ({remaining} remaining"
    if unsafe_fixable and not unsafe:
        summary += f"; {unsafe_fixable} fixable with --unsafe-fixes"
    sys.stderr.write(summary + ").\n")
    assumed = sum(1 for result in results if result.floor_assumed)
    if assumed:
        sys.stderr.write(
            f"note: no requirement declares the oldest torch for {assumed} file{'s' * (assumed != 1)}: the fixes "
            f"assumed torch {ASSUMED[0]}.{ASSUMED[1]} or later (--min-torch VERSION keeps an older torch working)\n"
        )
    if errors:
        return 1
    return int(bool(changed) and not write)


def _diff(result: FileFix) -> bytes:
    """The file's unified diff, in the file's own bytes (its encoding and byte-order mark), so that
    ``patch -p0`` and ``git apply`` find its context lines; lines are split where Python's tokenizer
    splits them (not at the form feeds or Unicode separators ``str.splitlines`` also splits at)."""
    bom = "\ufeff" if result.encoding == "utf-8-sig" else ""
    encoding = "utf-8" if bom else result.encoding
    before = io.StringIO(bom + result.before, newline="").readlines()
    after = io.StringIO(bom + result.after, newline="").readlines()
    name = os.fsencode(result.filename)
    out = [b"--- " + name + b"\n", b"+++ " + name + b"\n"]
    for line in list(difflib.unified_diff(before, after, lineterm="\n"))[2:]:
        if not line.endswith(("\n", "\r")):
            line += "\n\\ No newline at end of file\n"
        out.append(line.encode(encoding, errors="surrogateescape"))
    return b"".join(out)


def _print_bytes(data: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        return
    sys.stdout.flush()
    buffer.write(data)
    buffer.flush()


def _write(result: FileFix) -> None:
    """Replace the file in one step (a reader never sees half of it), keeping its permissions; through a
    symbolic link, the file it points to."""
    target = os.path.realpath(result.filename)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".flake8-amp-fix-", suffix=".py")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(result.after.encode(result.encoding))
        shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
