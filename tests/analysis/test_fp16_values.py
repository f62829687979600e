"""Whether a value of model code would be float32 inside CUDA autocast (Fp16Values.float32_under_autocast)."""

from __future__ import annotations

import ast

import pytest

from flake8_amp.analysis.fp16_values import Fp16Values
from flake8_amp.analysis.module_analysis import ModuleAnalysis

PRELUDE = """\
import torch
import torch.nn.functional as F
from einops import rearrange


def f(logits, hidden, w, ids, flag):
    probs = logits.softmax(dim=-1)
    projected = hidden @ w
    either = probs
    if flag:
        either = projected
"""


def under_autocast(expression: str) -> bool:
    tree = ast.parse(f"{PRELUDE}    value = {expression}\n")
    analysis = ModuleAnalysis(tree)
    function = tree.body[-1]
    assert isinstance(function, ast.FunctionDef)
    return analysis.derived(Fp16Values).float32_under_autocast(function.body[-1].value)


@pytest.mark.parametrize(
    "expression, float32",
    [
        ("1 - probs.gather(2, ids)", True),  # softmax is on autocast's float32 list; gather keeps its dtype
        ("rearrange(probs, 'b n v -> b v n')", True),
        ("torch.log_softmax(logits, -1).view(-1)", True),
        ("hidden.float() * 2", True),
        ("torch.zeros(4, 4)", True),
        ("logits.norm(dim=-1) / 3", True),
        ("projected", False),  # a matmul: float16 under autocast
        ("probs @ probs.transpose(1, 2)", False),  # whatever its inputs' dtype
        ("F.linear(probs, w)", False),
        ("logits", False),  # a parameter: its dtype is not known
        ("either", False),  # one of the bindings reaching it is a matmul
        ("probs * projected", False),
        ("torch.zeros(4, dtype=torch.float16)", False),
        ("some_helper(probs)", False),  # an unknown function
    ],
)
def test_float32_under_autocast(expression, float32):
    assert under_autocast(expression) is float32
