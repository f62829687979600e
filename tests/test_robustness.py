"""The linter never crashes on a file: every .py file of the installed torch package and of this
repository lints without an exception and without an AMP000 (a rule that failed)."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import pytest

from flake8_amp.engine import INTERNAL_ERROR_CODE, lint_tree, mentions_torch

REPOSITORY = Path(__file__).resolve().parent.parent


def lint_every_file(root: Path) -> tuple[int, list[str]]:
    linted, failures = 0, []
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # flake8 reports E999 itself and never hands the plugin a tree
        linted += 1
        if not mentions_torch(source.splitlines()):
            continue
        try:
            findings = lint_tree(tree)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            failures.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        failures += [f"{path}: {f.message}" for f in findings if f.code == INTERNAL_ERROR_CODE]
    return linted, failures


def test_lints_every_file_of_this_repository():
    linted, failures = lint_every_file(REPOSITORY / "flake8_amp")
    linted_tests, failures_tests = lint_every_file(REPOSITORY / "tests")
    assert linted + linted_tests > 20
    assert failures + failures_tests == []


def test_lints_every_file_of_the_installed_torch_package(capsys):
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch is not installed")
    linted, failures = lint_every_file(Path(next(iter(spec.submodule_search_locations))))
    with capsys.disabled():
        print(f"\n[robustness] linted {linted} files of the installed torch package")
    assert linted > 1000
    assert failures == []
