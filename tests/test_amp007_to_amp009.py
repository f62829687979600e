"""AMP007-AMP009: what a fixture cannot say: the configured precision, message text, and the float16
thresholds the rules use (checked against torch's own rounding)."""

from __future__ import annotations

import ast

import pytest

from flake8_amp.analysis.module_analysis import ModuleAnalysis
from flake8_amp.analysis.numeric_constants import FP16_ZERO_ROUNDING_LIMIT, constant_value, rounds_to_zero_in_fp16
from flake8_amp.engine import LintOptions, lint_source

MODEL_MASK = """
import torch
import torch.nn as nn

class Attention(nn.Module):
    def forward(self, q, k, pad_mask):
        scores = q @ k.transpose(-2, -1)
        return scores.masked_fill(pad_mask, -1e9)
"""

SCRIPT_MASK = """
import torch

def masked(scores, pad_mask):
    return scores.masked_fill(pad_mask, -1e9)
"""

HALF_EPS = """
import torch
import torch.nn.functional as F

def unit(x):
    x = x.half()
    return x / (x.norm() + 1e-8), F.normalize(x, dim=-1)
"""


def findings(source: str, code: str, precision: str | None = None) -> list:
    return [f for f in lint_source(source, LintOptions(precision=precision)) if f.code == code]


def test_amp007_configured_bf16_silences_model_code():
    assert findings(MODEL_MASK, "AMP007")
    assert findings(MODEL_MASK, "AMP007", precision="bf16") == []


def test_amp007_configured_fp16_reaches_plain_functions():
    # no model class, no float16 mention: float32 code unless the project says it runs in fp16
    assert findings(SCRIPT_MASK, "AMP007") == []
    assert [(f.line, f.col) for f in findings(SCRIPT_MASK, "AMP007", precision="fp16")] == [(5, 40)]


def test_amp007_message_names_the_value_the_call_and_the_fix():
    (finding,) = findings(MODEL_MASK, "AMP007")
    assert finding.message == (
        "AMP007 -1e+09 as the fill value of masked_fill() overflows float16 (max 65504)"
        " -> use torch.finfo(x.dtype).min (or .max), which fits every dtype (flake8-amp explain AMP007)"
    )


def test_amp008_configured_bf16_silences_it():
    assert len(findings(HALF_EPS, "AMP008")) == 2
    assert findings(HALF_EPS, "AMP008", precision="bf16") == []


def test_amp008_messages():
    guard, normalize = findings(HALF_EPS, "AMP008")
    assert guard.what == "1e-08 added to 'x.norm()', a float16 value, rounds to zero in float16"
    assert "default eps=1e-12" in normalize.what and "NaN" in normalize.what
    assert "eps=1e-4" in normalize.fix


def test_amp009_messages_name_the_stable_op():
    source = "import torch\n\ndef f(x):\n    return torch.log(torch.softmax(x, -1)), x.sigmoid().log()\n"
    softmax, sigmoid = findings(source, "AMP009")
    assert softmax.fix == "use torch.log_softmax(x, dim)"
    assert sigmoid.fix == "use torch.nn.functional.logsigmoid(x)"


@pytest.mark.parametrize(
    "source, value",
    [
        ("-1e9", -1e9),
        ("-1 * 10**9", -1e9),
        ("float('-1e9')", -1e9),
        ("float(-1e30)", -1e30),
        ("float('-inf')", float("-inf")),
        ("NEG", -1e9),
        ("float('nope')", None),
        ("some_call()", None),
    ],
)
def test_constant_value(source, value):
    tree = ast.parse(f"NEG = -1e9\nvalue = {source}\n")
    analysis = ModuleAnalysis(tree)
    assert constant_value(tree.body[1].value, analysis) == value


def test_zero_rounding_threshold_matches_torch():
    torch = pytest.importorskip("torch")
    just_above = FP16_ZERO_ROUNDING_LIMIT * (1 + 2**-20)
    for value in (1e-12, 1e-8, FP16_ZERO_ROUNDING_LIMIT, just_above, 5e-8, 1e-7, 1e-6, 6.1e-5):
        stored_as_zero = torch.tensor(value, dtype=torch.float16).item() == 0
        assert rounds_to_zero_in_fp16(value) == stored_as_zero, value
