"""The number an expression stands for, its sign, and float16's thresholds checked against torch."""

from __future__ import annotations

import ast
import sys

import pytest

from flake8_amp.analysis.constants import (
    constant_value,
    overflows_fp16,
    provably_nonpositive,
    rounds_to_zero_in_fp16,
)
from flake8_amp.analysis.dtypes import FP16_MAX, FP16_ZERO_ROUNDING_LIMIT
from flake8_amp.analysis.module_analysis import ModuleAnalysis


def value_of(source: str, prelude: str = "NEG = -1e9\n"):
    tree = ast.parse(f"{prelude}value = {source}\n")
    analysis = ModuleAnalysis(tree)
    return tree.body[-1].value, analysis


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
        ("10**400", sys.float_info.max),  # beyond float range: as far out as a float goes, not a crash
        ("-" + "1" + "0" * 400, -sys.float_info.max),
        ("x * 1e9", None),
    ],
)
def test_constant_value(source, value):
    node, analysis = value_of(source)
    assert constant_value(node, analysis) == value


def test_a_constant_through_a_name_bound_in_the_function():
    tree = ast.parse("def f(s, m):\n    big = -1e9\n    return s.masked_fill(m, big)\n")
    analysis = ModuleAnalysis(tree)
    fill = tree.body[0].body[1].value.args[1]
    assert constant_value(fill, analysis) == -1e9


def test_a_product_thousands_of_factors_long_is_evaluated_without_recursion():
    node, analysis = value_of(" * ".join(["1.0001"] * 900))
    assert constant_value(node, analysis) == pytest.approx(1.0001**900)


@pytest.mark.parametrize(
    "source, nonpositive",
    [
        ("-((x - c) ** 2) / (2 * sigma**2)", True),
        ("-0.5 * (x / sigma).pow(2)", True),
        ("-x.pow(2.0) / (2 * s.pow(2.0))", True),
        ("-x.abs()", True),
        ("-(x * x)", True),
        ("-x / t", False),  # the signs of x and t are not known
        ("-x.abs() / sigma", False),
        ("x - x.max()", False),  # true, but not by sign analysis (AMP009 knows the max shift)
        ("-x ** 3", False),
    ],
)
def test_provably_nonpositive(source, nonpositive):
    node, analysis = value_of(source, prelude="")
    assert provably_nonpositive(node, analysis) is nonpositive


def test_thresholds():
    assert overflows_fp16(65520.0) and overflows_fp16(-1e9) and not overflows_fp16(FP16_MAX)
    assert not overflows_fp16(float("-inf"))  # -inf is a deliberate mask value, not an overflow
    assert rounds_to_zero_in_fp16(1e-8) and not rounds_to_zero_in_fp16(1e-7) and not rounds_to_zero_in_fp16(0.0)


def test_zero_rounding_threshold_matches_torch():
    torch = pytest.importorskip("torch")
    just_above = FP16_ZERO_ROUNDING_LIMIT * (1 + 2**-20)
    for value in (1e-12, 1e-8, FP16_ZERO_ROUNDING_LIMIT, just_above, 5e-8, 1e-7, 1e-6, 6.1e-5):
        stored_as_zero = torch.tensor(value, dtype=torch.float16).item() == 0
        assert rounds_to_zero_in_fp16(value) == stored_as_zero, value
    assert torch.finfo(torch.float16).max == FP16_MAX
