"""One exemption policy for every rule: each rule says which parts apply to it, the policy decides."""

from __future__ import annotations

import ast
import textwrap

import pytest

from flake8_amp.analysis.exemptions import (
    EVALUATION,
    FLOAT32_PATH,
    PRECISION_SETTING,
    TEST,
    VERSION_FALLBACK,
    ExemptionPolicy,
)
from flake8_amp.analysis.module_analysis import ModuleAnalysis
from flake8_amp.rules import RULES_BY_CODE


def exemption(source: str, code: str, path: str | None = None) -> str | None:
    """The policy's verdict for rule ``code`` at the call ``target()`` in ``source``."""
    analysis = ModuleAnalysis(ast.parse(textwrap.dedent(source)), path=path)
    node = next(c for c in analysis.calls if isinstance(c.func, ast.Name) and c.func.id == "target")
    return analysis.derived(ExemptionPolicy).exemption(node, RULES_BY_CODE[code])


@pytest.mark.parametrize(
    "source",
    [
        "def test_half():\n    target()\n",
        "class TestTraining:\n    def setup_method(self):\n        target()\n",
        "import unittest\nclass Checks(unittest.TestCase):\n    def helper(self):\n        target()\n",
        "import pytest\n@pytest.fixture\ndef half_model():\n    return target()\n",
    ],
)
def test_test_code_is_exempt_from_hazard_rules_but_not_from_api_rules(source):
    assert exemption(source, "AMP015") == TEST
    assert exemption(source, "AMP013") is None  # a deprecated spelling breaks tests as well


def test_test_modules_are_recognised_by_their_name():
    assert exemption("target()\n", "AMP007", path="pkg/tests/test_attention.py") == TEST
    assert exemption("target()\n", "AMP007", path="pkg/conftest.py") == TEST
    assert exemption("target()\n", "AMP007", path="pkg/attention.py") is None


def test_version_fallbacks_are_exempt_for_every_rule():
    source = "import torch\nif torch.__version__ < '1.10':\n    target()\n"
    assert {exemption(source, code) for code in RULES_BY_CODE} == {VERSION_FALLBACK}


def test_evaluation_only_code_is_exempt_from_training_rules_only():
    source = "import torch\nwith torch.no_grad():\n    target()\n"
    assert exemption(source, "AMP003") == EVALUATION  # a loss metric for the log
    assert exemption(source, "AMP002") is None  # BCE raises under autocast even without gradients
    assert exemption(source, "AMP007") is None  # a -1e9 fill overflows float16 in evaluation too


def test_lightning_evaluation_hooks_run_without_gradients():
    source = """
    import lightning as L
    class Model(L.LightningModule):
        def validation_step(self, batch, i):
            target()
    """
    assert exemption(source, "AMP003") == EVALUATION


def test_the_float32_arm_is_exempt_from_low_precision_rules():
    source = "if use_amp:\n    pass\nelse:\n    target()\n"
    assert exemption(source, "AMP019") == FLOAT32_PATH
    assert exemption(source, "AMP013") is None


def test_a_cast_under_a_precision_setting_is_the_configuration():
    source = "if args.dtype == 'float16':\n    target()\n"
    assert exemption(source, "AMP001") == PRECISION_SETTING
    # a torch.optim optimizer over a float16 model keeps no float32 copy, whatever chose float16
    assert exemption(source, "AMP015") is None
    assert exemption(source, "AMP007") is None


def test_plain_code_has_no_exemption():
    assert {exemption("target()\n", code) for code in RULES_BY_CODE} == {None}


def test_modules_under_a_tests_folder_of_the_project_are_test_code(tmp_path):
    project = tmp_path / "project"
    (project / "tests" / "helpers").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    helper = project / "tests" / "helpers" / "models.py"
    helper.write_text("target()\n")
    assert exemption("target()\n", "AMP015", path=str(helper)) == TEST
    # a folder named tests above the project says nothing about the project's own modules
    outer = tmp_path / "tests" / "project"
    (outer / "src").mkdir(parents=True)
    (outer / "setup.cfg").write_text("")
    assert exemption("target()\n", "AMP015", path=str(outer / "src" / "train.py")) is None
