"""The bundled examples: the buggy scripts trip every rule, their fixed twins lint clean and train."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flake8_amp.engine import LintOptions, lint_source
from flake8_amp.rules import ALL_RULES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BUGGY = sorted(EXAMPLES.glob("*_buggy.py"))
FIXED = sorted(EXAMPLES.glob("*_fixed.py"))
EVERY_CODE = {rule.code for rule in ALL_RULES}
STABLE_CODES = {rule.code for rule in ALL_RULES if not rule.preview}


def codes(path: Path, preview: bool = True) -> set[str]:
    """The codes the example raises, preview rules included unless ``preview`` is False."""
    return {finding.code for finding in lint_source(path.read_text(encoding="utf-8"), LintOptions(preview=preview))}


def test_every_buggy_script_has_a_fixed_twin():
    assert BUGGY
    assert [path.name.replace("_buggy", "_fixed") for path in BUGGY] == [path.name for path in FIXED]


def test_the_buggy_examples_together_trip_every_rule():
    assert set().union(*(codes(path) for path in BUGGY)) == EVERY_CODE


def test_train_buggy_trips_every_rule_that_can_share_one_module():
    # AMP016 needs a module without a GradScaler, AMP017 one whose every autocast region is bfloat16, and
    # AMP014 stops its module at import, before anything could run: finetune_buggy.py,
    # pretrain_bf16_buggy.py and fused_op_buggy.py hold them.
    assert codes(EXAMPLES / "train_buggy.py") == EVERY_CODE - {"AMP014", "AMP016", "AMP017"}
    assert codes(EXAMPLES / "finetune_buggy.py") == {"AMP016"}
    assert codes(EXAMPLES / "pretrain_bf16_buggy.py") == {"AMP017"}
    assert codes(EXAMPLES / "fused_op_buggy.py") == {"AMP014"}


def test_by_default_the_buggy_examples_raise_the_stable_rules_only():
    assert codes(EXAMPLES / "train_buggy.py", preview=False) == STABLE_CODES - {"AMP014", "AMP016", "AMP017"}
    assert set().union(*(codes(path, preview=False) for path in BUGGY)) == STABLE_CODES


@pytest.mark.parametrize("path", FIXED, ids=lambda path: path.name)
def test_the_fixed_twin_lints_clean(path):
    assert codes(path) == set()


@pytest.mark.parametrize("path", FIXED, ids=lambda path: path.name)
def test_the_fixed_twin_runs_and_every_number_it_prints_is_finite(path):
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and not [line for line in lines if "Error" in line]  # no stage of train_fixed.py raised
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?|nan|inf", result.stdout)]
    assert numbers and all(math.isfinite(number) for number in numbers)


def test_the_readme_shows_what_the_first_set_up_command_prints():
    """README set-up, command 1: `flake8 --select AMP examples/` (and with preview on), as printed."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    default = subprocess.run([sys.executable, "-m", "flake8", "--select", "AMP", "examples/"], capture_output=True,
                             text=True, cwd=EXAMPLES.parent)
    preview = subprocess.run([sys.executable, "-m", "flake8", "--select", "AMP", "--amp-preview=on", "examples/"],
                             capture_output=True, text=True, cwd=EXAMPLES.parent)
    assert default.returncode == preview.returncode == 1
    shown = readme.split("The first prints ", 1)[1]
    count, block = shown.split(" findings", 1)[0], shown.split("```\n", 1)[1].split("```", 1)[0]
    assert int(count) == len(default.stdout.splitlines())
    assert all(line in default.stdout.splitlines() for line in block.splitlines())
    assert f"With `--amp-preview=on` it prints {len(preview.stdout.splitlines())}," in readme


@pytest.mark.parametrize("path", BUGGY + FIXED, ids=lambda path: path.name)
def test_the_main_block_calls_every_function_the_example_defines(path):
    """So that `flake8-amp verify` can reach every hazard (and show the fixed twin clean everywhere)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    main = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert len(main) == 1, "no `if __name__ == '__main__':` block"
    called = {node.id for node in ast.walk(main[0]) if isinstance(node, ast.Name)}
    assert functions <= called, f"never called from the main block: {sorted(functions - called)}"
