"""Where a finding would be wrong although the code matches: one policy, applied to every rule.

* **Tests** exercise hazards on purpose: test functions (``test*``, ``_test*``), test classes (``Test*``,
  ``*Tests``, ``*Tester*``, ``unittest.TestCase`` subclasses), pytest fixtures, test modules
  (``test_*.py``, ``*_test.py``, ``test.py``, ``tests.py``, ``conftest.py``) and every module under a
  ``tests/`` or ``test/`` folder of the project (the helpers tests share). Rules about the API itself (a
  deprecated spelling, a decorator that raises at import) still apply there.
* **Version fallbacks** keep old torch releases working: the arm of a version check taken on an old
  torch, or an ``except ImportError`` after trying ``torch.amp`` (see :mod:`.control_flow`).
* **Evaluation-only code** does not train: under ``torch.no_grad()`` / ``inference_mode()`` (a block or
  a decorator), or in a LightningModule's ``validation_step`` / ``test_step`` / ``predict_step``, which
  Lightning runs without gradients. Only rules about training honour it.
* **Precision switches**: the arm of ``if use_amp:`` (or ``args.fp16``, ``scaler is not None``, an
  ``enabled=`` flag ...) where low precision is off is the float32 path, where no low-precision hazard
  can happen; a cast under a condition on a precision setting is the configuration itself.

Each rule says which of these apply to it (:class:`~flake8_amp.rules.base.Rule`'s attributes); the
engine asks this policy about the node of every finding.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

from .control_flow import ControlFlow, ancestors
from .module_analysis import ModuleAnalysis
from .project_index import find_root, is_test_module

if TYPE_CHECKING:
    from ..rules.base import Rule

TEST = "test code"
VERSION_FALLBACK = "a fallback for older torch"
EVALUATION = "evaluation-only code"
FLOAT32_PATH = "the float32 arm of a precision switch"
PRECISION_SETTING = "a precision the code configures on purpose"

# test_step, _test_training (a helper a test mixin's tests call); TestAttention, AttentionTests,
# QuantizationTesterMixin
_TEST_FUNCTION = re.compile(r"^_*test")
_TEST_CLASS = re.compile(r"^Test|Tests?(Case|Mixin)?$|Tester")
_EVALUATION_HOOKS = frozenset({"validation_step", "test_step", "predict_step", "on_validation_batch_end"})


class ExemptionPolicy:
    """Use as ``analysis.derived(ExemptionPolicy)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis
        self.flow = analysis.derived(ControlFlow)
        self.test_module = _is_test_module(analysis)
        self._tests: dict[ast.AST, bool] = {}

    def exemption(self, node: ast.AST, rule: "Rule") -> str | None:
        """Why a finding of ``rule`` at ``node`` would be wrong, or None when it stands."""
        if rule.exempt_in_tests and self.in_test(node):
            return TEST
        if self.flow.in_version_fallback(node):
            return VERSION_FALLBACK
        if rule.training_only and self.evaluation_only(node):
            return EVALUATION
        if rule.low_precision_hazard and self.flow.on_float32_path(node):
            return FLOAT32_PATH
        if rule.deliberate_when_configured and self.flow.under_precision_setting(node):
            return PRECISION_SETTING
        return None

    def in_test(self, node: ast.AST) -> bool:
        if self.test_module:
            return True
        statement = self.analysis.statement_of(node)  # what decides it lies above the statement
        if statement not in self._tests:
            self._tests[statement] = self._in_test(statement)
        return self._tests[statement]

    def _in_test(self, statement: ast.AST) -> bool:
        for _, parent in ancestors(statement, self.analysis, cross_scopes=True):
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _TEST_FUNCTION.match(parent.name) or any(_is_fixture(d, self.analysis) for d in parent.decorator_list):
                    return True
            elif isinstance(parent, ast.ClassDef):
                if _TEST_CLASS.search(parent.name) or any(_is_test_case(base, self.analysis) for base in parent.bases):
                    return True
        return False

    def evaluation_only(self, node: ast.AST) -> bool:
        if self.analysis.context(node).grad_disabled:
            return True
        for child, parent in ancestors(self.analysis.statement_of(node), self.analysis, cross_scopes=True):
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and parent.name in _EVALUATION_HOOKS:
                owner = self.analysis.parents.get(parent)
                if isinstance(owner, ast.ClassDef) and any(
                    (self.analysis.resolve(base) or getattr(base, "id", "")).endswith("LightningModule") for base in owner.bases
                ):
                    return True
        return False


def _is_test_module(analysis: ModuleAnalysis) -> bool:
    if not analysis.path:
        return False
    root = analysis.project.root if analysis.project is not None else find_root(analysis.path)
    return is_test_module(analysis.path, root)


def _is_fixture(decorator: ast.AST, analysis: ModuleAnalysis) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (analysis.resolve(target) or "").startswith("pytest.fixture")


def _is_test_case(base: ast.AST, analysis: ModuleAnalysis) -> bool:
    qualified = analysis.resolve(base) or (base.id if isinstance(base, ast.Name) else "")
    return qualified.endswith("TestCase")
