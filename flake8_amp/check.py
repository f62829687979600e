"""``flake8-amp check PATH...``: the AMP rules without a flake8 run, for ruff users, scripts and CI.

It prints what ``flake8 --select AMP PATH...`` prints, byte for byte, and exits as it does: 1 when it
reported a finding, 0 when not (or with ``--exit-zero``), 2 for a usage error or a bad configuration value.
Every flake8 option is accepted and means what it means to flake8 (``--select``, ``--ignore``,
``--extend-select``, ``--extend-ignore``, ``--per-file-ignores``, ``--exclude``, ``--extend-exclude``,
``--filename``, ``--disable-noqa``, ``--jobs``, ``--output-file``, ``--tee``, ``--count``, ``--statistics``,
``--show-source``, ``-q``, ``--config``, ``--append-config``, ``--isolated``), and so are the plugin's own
``--amp-*`` options; the ``[flake8]`` section of setup.cfg, tox.ini or .flake8 is read as flake8 reads it.
The selection starts from ``--select AMP``, as if typed first on flake8's command line: a ``select`` in the
configuration is overridden by it, as flake8's command line overrides it, while the configuration's
``ignore``, ``extend-ignore``, ``extend-select`` and ``per-file-ignores`` apply. ``--format`` takes flake8's
formats (default, pylint, a %-format string) and flake8-amp's: amp (the grouped report), json and sarif.

How: flake8's own parts do everything except run checks. Its option definitions and configuration loading
(the same files, sections, normalisation and precedence), its file discovery (``expand_paths``: the
default excludes ``.git``, ``__pycache__``, ``.tox`` ...), its file reading (``FileProcessor``: encodings,
the BOM, stdin, ``# flake8: noqa``, the lines a ``# noqa`` comment covers), its style guide (select,
ignore, per-file-ignores, ``# noqa``) and its formatters. What is left out is flake8's checker: the tokenizer
pass and every other installed plugin, which flake8 runs on each file whatever ``--select`` says. The AMP
checker gets what the flake8 plugin gets (:func:`flake8_amp.plugin.lint_module`), and a file that does not
parse is an E999, one that cannot be read an E902, as in flake8: reported only where selected.
"""

from __future__ import annotations

import argparse
import configparser
import multiprocessing
import os
import signal
import sys
from operator import itemgetter
from typing import Callable, Optional, Sequence, TypeVar

import flake8
from flake8 import utils
from flake8.discover_files import expand_paths
from flake8.exceptions import ExecutionError
from flake8.formatting.base import BaseFormatter
from flake8.formatting.default import Default, FilenameOnly, Nothing, Pylint
from flake8.main.options import register_default_options, stage1_arg_parser
from flake8.options.aggregator import aggregate_options
from flake8.options.config import load_config
from flake8.options.manager import OptionManager
from flake8.processor import FileProcessor
from flake8.style_guide import StyleGuideManager

from . import __version__
from .engine import LintOptions
from .json_report import JsonReport
from .plugin import lint_module
from .report_format import GroupedReport
from .sarif import SarifReport
from .settings import lint_options, may_select_amp, register_options

PROG = "flake8-amp check"

FORMATTERS: dict[str, type[BaseFormatter]] = {
    # flake8's built-in formatters, under the names flake8 gives them
    "default": Default,
    "pylint": Pylint,
    "quiet-filename": FilenameOnly,
    "quiet-nothing": Nothing,
    # flake8-amp's (amp and sarif are flake8 formatters too: `flake8 --format=amp`, `--format=sarif`)
    "amp": GroupedReport,
    "json": JsonReport,
    "sarif": SarifReport,
}

#: accepted so that a flake8 command line works unchanged, but left out of --help: they tune pycodestyle or
#: flake8's loading of plugins and its benchmarks, and nothing here runs any of those
_FOREIGN_OPTIONS = frozenset(
    {"hang_closing", "max_line_length", "max_doc_length", "indent_size", "benchmark", "bug_report"}
    | {"enable_extensions", "require_plugins"}
)

#: what flake8's FileChecker collects for a finding: code, line, 0-based column, text, and the physical
#: line(s) in which a ``# noqa`` comment is looked for
Result = tuple[str, int, int, str, Optional[str]]
FileResult = TypeVar("FileResult")

_DESCRIPTION = (
    "Lint Python files with the AMP rules, as `flake8 --select AMP` does, without running flake8: "
    "the same output, noqa comments, configuration files and exit codes."
)
_EPILOG = "Formats: default, pylint, amp, json, sarif, or a %-format string."


class UsageError(Exception):
    """A command line or configuration that cannot run: one line on stderr, exit status 2."""


def main(argv: Sequence[str]) -> int:
    """Run ``flake8-amp check`` with ``argv`` (the arguments after ``check``); returns the exit status."""
    try:
        options = parse_options(argv)
        lint = lint_options(options, PROG)
        formatter = make_formatter(options)
        guide = StyleGuideManager(options, formatter)
    except UsageError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except SystemExit as exit:  # argparse (usage errors, --help, --version) and the amp options' checks
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    except ExecutionError as error:  # a malformed per-file-ignores (flake8: "a critical error", exit 1)
        sys.stderr.write(f"{PROG}: error: {one_line(error)}\n")
        return 2
    try:
        results = check_files(options, lint)
    except KeyboardInterrupt:
        print("... stopped")
        return 1
    reported = report(results, guide, formatter, options)
    if options.count:
        print(reported)
    return 0 if options.exit_zero else int(reported > 0)


def parse_options(
    argv: Sequence[str],
    prog: str = PROG,
    description: str = _DESCRIPTION,
    epilog: str | None = _EPILOG,
    register: Callable[[OptionManager], None] | None = None,
) -> argparse.Namespace:
    """flake8's options, configuration and plugin options, parsed as ``flake8 --select AMP <argv>`` would;
    ``register`` adds a command's own options (``fix``'s ``--diff``) to them."""
    preliminary = stage1_arg_parser()
    early, rest = preliminary.parse_known_args(argv)
    if early.output_file:  # as flake8 does: the formatter reads it from the full parse
        rest.extend(("--output-file", early.output_file))
    flake8.configure_logging(early.verbose, early.output_file)
    try:
        config, config_dir = load_config(config=early.config, extra=early.append_config, isolated=early.isolated)
    except (ExecutionError, configparser.Error) as error:
        raise UsageError(one_line(error)) from None

    manager = OptionManager(
        version=f"flake8-amp {__version__}",
        plugin_versions=f"flake8: {flake8.__version__}",
        parents=[preliminary],
        formatter_names=list(FORMATTERS),
    )
    manager.parser.prog = prog
    manager.parser.description = description
    manager.parser.epilog = epilog
    register_default_options(manager)
    register_options(manager)
    if register is not None:
        register(manager)
    manager.extend_default_select(["AMP"])  # what flake8 does for the plugin's entry point name
    for action in manager.parser._actions:
        if action.dest in _FOREIGN_OPTIONS:
            action.help = argparse.SUPPRESS
        elif action.dest == "select":
            action.help = (
                "Limit the reported error codes to codes prefix-matched by this list, e.g. --select=AMP003,AMP01. "
                "(Default: AMP, as if --select AMP came first on flake8's command line: it overrides a select "
                "in the configuration)"
            )
    try:
        return aggregate_options(manager, config, config_dir, ["--select", "AMP", *rest])
    except ValueError as error:  # a code in the configuration's ignore that is no code, a number that is none
        raise UsageError(str(error)) from None


def make_formatter(options: argparse.Namespace) -> BaseFormatter:
    """The formatter flake8 would pick (``-q`` and ``-qq`` included), or a usage error for a name it lacks."""
    name = options.format
    if options.quiet == 1:
        name = "quiet-filename"
    elif options.quiet >= 2:
        name = "quiet-nothing"
    formatter = FORMATTERS.get(name)
    if formatter is None:
        if "%" not in name:  # flake8 would print the name itself for every finding, as a format string
            known = ", ".join(FORMATTERS)
            raise UsageError(f"--format {name!r} is none of {known}, nor a %-format string")
        formatter = Default  # a %-format string
    return formatter(options)


def check_files(options: argparse.Namespace, lint: LintOptions) -> list[tuple[str, list[Result]]]:
    """Each file's (name, results), over ``--jobs`` processes when there are several files."""
    filenames = expanded_filenames(options)
    return map_over_files(check_file, filenames, job_count(options), options, lint, may_select_amp(options))


def expanded_filenames(options: argparse.Namespace) -> tuple[str, ...]:
    """The files flake8 would check for the paths given: folders expanded, ``--exclude`` and
    ``--filename`` applied."""
    return tuple(
        expand_paths(
            paths=options.filenames,
            stdin_display_name=options.stdin_display_name,
            filename_patterns=options.filename,
            exclude=(*options.exclude, *options.extend_exclude),
        )
    )


def map_over_files(
    function: Callable[..., FileResult], filenames: Sequence[str], jobs: int, *state: object
) -> list[FileResult]:
    """``function(filename, *state)`` for every file, in ``jobs`` processes when there are several files
    (the state goes to each worker once, not with every file; results come in any order)."""
    jobs = min(len(filenames), jobs)
    if jobs > 1:
        try:
            pool = multiprocessing.Pool(jobs, _start_worker, (function, state))
        except (OSError, ImportError):  # no semaphores here (as flake8, fall back to one process)
            pool = None
        if pool is not None:
            try:
                results = list(pool.imap_unordered(_run_in_worker, filenames))
                pool.close()
            finally:
                pool.terminate()
                pool.join()
            return results
    return [function(filename, *state) for filename in filenames]


def check_file(
    filename: str, options: argparse.Namespace, lint: LintOptions, selected: bool = True
) -> tuple[str, list[Result]]:
    """One file's results as flake8's FileChecker collects them (before select, ignore and noqa)."""
    try:
        processor = FileProcessor(filename, options)
    except OSError as error:
        return filename, [("E902", 0, 0, f"{type(error).__name__}: {error}", None)]
    if processor.should_ignore_file():  # a "# flake8: noqa" line
        return processor.filename, []
    try:
        tree = processor.build_ast()
    except (SyntaxError, ValueError) as error:  # ValueError: null bytes, before Python 3.12
        line, column = _syntax_error_position(error)
        text = f"{type(error).__name__}: {error.args[0] if error.args else error}"
        return processor.filename, [("E999", line, column, text, processor.noqa_line_for(line))]
    if not selected:  # --select names no AMP code: only E902 / E999 can be reported
        return processor.filename, []
    results = []
    for finding in lint_module(tree, processor.lines, processor.filename, lint):
        text = finding.message.split(" ", 1)[1]  # flake8 takes the code off the message's front likewise
        results.append((finding.code, finding.line, finding.col, text, processor.noqa_line_for(finding.line)))
    return processor.filename, results


def report(
    results: list[tuple[str, list[Result]]],
    guide: StyleGuideManager,
    formatter: BaseFormatter,
    options: argparse.Namespace,
) -> int:
    """Hand the results to flake8's style guide in flake8's order (by file name, then line and column);
    returns how many it reported."""
    formatter.start()
    reported = 0
    for filename, file_results in sorted(results, key=itemgetter(0)):
        file_results.sort(key=itemgetter(1, 2))
        with guide.processing_file(filename):
            for code, line, column, text, physical_line in file_results:
                reported += guide.handle_error(code, filename, line, column, text, physical_line)
    if options.statistics:
        formatter.show_statistics(guide.stats)
    formatter.stop()
    return reported


def one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def job_count(options: argparse.Namespace) -> int:
    """flake8's: one process when reading stdin, the CPUs for ``auto``, else the number given."""
    if utils.is_using_stdin(options.filenames):
        return 1
    if options.jobs.is_auto:
        return os.cpu_count() or 1
    return options.jobs.n_jobs


def _syntax_error_position(error: Exception) -> tuple[int, int]:
    """Where flake8 puts E999: the error's (line, offset), or (1, 0) when it has none."""
    details = error.args[1] if len(error.args) > 1 else None
    if details and len(details) > 2:
        return details[1], details[2]
    return 1, 0


# The worker processes of --jobs: the function and its state travel once, to each worker, not with every file.
_worker_state: tuple[Callable, tuple] | None = None


def _start_worker(function: Callable, state: tuple) -> None:
    global _worker_state
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the parent's to handle, as in flake8
    _worker_state = (function, state)


def _run_in_worker(filename: str) -> object:
    assert _worker_state is not None
    function, state = _worker_state
    return function(filename, *state)
