"""Conditions as facts: which statements share a pass, the float32 arm of a precision switch, version
fallbacks."""

from __future__ import annotations

import ast
import textwrap

import pytest

from flake8_amp.analysis.control_flow import ControlFlow, Fact, facts_when
from flake8_amp.analysis.module_analysis import ModuleAnalysis


def flow_of(source: str) -> tuple[ModuleAnalysis, ControlFlow]:
    analysis = ModuleAnalysis(ast.parse(textwrap.dedent(source)))
    return analysis, analysis.derived(ControlFlow)


def call(analysis: ModuleAnalysis, name: str) -> ast.Call:
    return next(c for c in analysis.calls if isinstance(c.func, ast.Name) and c.func.id == name)


@pytest.mark.parametrize(
    "test, truth, facts",
    [
        ("use_amp", True, {("use_amp", True)}),
        ("not use_amp", True, {("use_amp", False)}),
        ("scaler is not None", True, {("scaler", True)}),
        ("scaler is None", True, {("scaler", False)}),
        ("args.fp16 == False", True, {("args.fp16", False)}),
        ("a and not b", True, {("a", True), ("b", False)}),
        ("a and b", False, {("a and b", False)}),  # one of them is false: which one is open
        ("a or b", True, {("a or b", True)}),
        ("a or b", False, {("a", False), ("b", False)}),
        ("mode != 'fp16'", True, {("mode == 'fp16'", False)}),
        ("bool(self.amp)", True, {("self.amp", True)}),
    ],
)
def test_facts_a_condition_gives(test, truth, facts):
    assert {(f.key, f.holds) for f in facts_when(ast.parse(test, mode="eval").body, truth)} == facts


def test_equal_conditions_in_different_places_are_one_path():
    analysis, flow = flow_of(
        """
        def step(use_amp):
            if use_amp:
                scaled()
            else:
                plain()
            if use_amp:
                stepped()
            else:
                direct()
        """
    )
    assert flow.may_share_a_pass(call(analysis, "scaled"), call(analysis, "stepped"))
    assert flow.may_share_a_pass(call(analysis, "plain"), call(analysis, "direct"))
    assert not flow.may_share_a_pass(call(analysis, "scaled"), call(analysis, "direct"))
    assert not flow.may_share_a_pass(call(analysis, "plain"), call(analysis, "stepped"))


def test_the_else_of_a_conjunction_excludes_every_path_where_both_parts_hold():
    analysis, flow = flow_of(
        """
        def train(args, scaler, optimizer):
            if args.fp16:
                if args.amp == "pytorch":
                    unscaled()
            if args.fp16 and args.amp == "pytorch":
                stepped()
            else:
                direct()
            if args.fp16:
                only_fp16()
        """
    )
    assert not flow.may_share_a_pass(call(analysis, "unscaled"), call(analysis, "direct"))
    assert not flow.may_share_a_pass(call(analysis, "stepped"), call(analysis, "direct"))
    assert flow.may_share_a_pass(call(analysis, "only_fp16"), call(analysis, "direct"))  # fp16 with apex
    assert flow.may_share_a_pass(call(analysis, "unscaled"), call(analysis, "stepped"))
    # "some part is false" is no precision switch: the else arm is not known to be float32
    assert not flow.on_float32_path(call(analysis, "direct"))


def test_a_disjunction_that_holds_excludes_the_path_where_every_part_fails():
    analysis, flow = flow_of(
        """
        if use_fp16 or use_bf16:
            low()
        if not use_fp16:
            if not use_bf16:
                full()
        """
    )
    assert not flow.may_share_a_pass(call(analysis, "low"), call(analysis, "full"))


def test_one_setting_equal_to_two_different_constants_is_two_paths():
    analysis, flow = flow_of(
        """
        def run(self, dtype, mode):
            if self.amp_type == AmpType.APEX:
                apex_backward()
            if self.amp_type == AmpType.PYTORCH:
                scaler_step()
            if AmpType.PYTORCH == self.amp_type:
                scaler_update()
            if self.amp_type != AmpType.APEX:
                not_apex()
            if dtype == torch.float32:
                full()
            if dtype == torch.half:
                half()
            if dtype == torch.float16:
                float16()
            if mode == "amp":
                amp_mode()
            if mode == 2:
                mode_two()
            if mode == self.mode:
                same_as_attribute()
            if other == "amp":
                other_setting()
        """
    )
    exclusive = [("apex_backward", "scaler_step"), ("apex_backward", "scaler_update"), ("apex_backward", "not_apex"),
                 ("full", "half"), ("full", "float16")]
    for a, b in exclusive:
        assert not flow.may_share_a_pass(call(analysis, a), call(analysis, b)), (a, b)
    shared = [("scaler_step", "scaler_update"), ("scaler_step", "not_apex"), ("half", "float16"),
              ("amp_mode", "same_as_attribute"), ("amp_mode", "other_setting"), ("apex_backward", "full"),
              ("amp_mode", "mode_two")]  # a string and a number: kinds not compared
    for a, b in shared:
        assert flow.may_share_a_pass(call(analysis, a), call(analysis, b)), (a, b)
    # constants of different kinds may be equal (a str Enum's member and a string; 1 and 1.0 are one
    # number; torch.long is torch.int64), and a subject with a call may change between the tests
    analysis, flow = flow_of(
        """
        def run(mode, x, d, it):
            if mode == AMPType.NATIVE:
                native()
            if mode == "native":
                native_text()
            if x == 1:
                one()
            if x == 1.0:
                one_float()
            if x == 2:
                two()
            if d == torch.long:
                long()
            if d == torch.int64:
                int64()
            if next(it) == 1:
                first()
            if next(it) == 2:
                second()
        """
    )
    assert not flow.may_share_a_pass(call(analysis, "one"), call(analysis, "two"))
    shared = [("native", "native_text"), ("one", "one_float"), ("long", "int64"), ("first", "second")]
    for a, b in shared:
        assert flow.may_share_a_pass(call(analysis, a), call(analysis, b)), (a, b)


def test_an_exit_nested_in_conditions_excludes_the_rest_of_the_block_on_that_path():
    analysis, flow = flow_of(
        """
        def update(self):
            while True:
                if clip:
                    clipped()
                    if too_large:
                        if skip:
                            skipped()
                            break
                    for group in groups:
                        if empty:
                            continue  # leaves the inner loop's pass, not this block
                after()
                if other:
                    return
                last()
        """
    )
    assert not flow.may_share_a_pass(call(analysis, "skipped"), call(analysis, "after"))
    assert flow.may_share_a_pass(call(analysis, "clipped"), call(analysis, "after"))  # clip without skipping
    assert flow.may_share_a_pass(call(analysis, "skipped"), call(analysis, "clipped"))
    assert not flow.may_share_a_pass(call(analysis, "skipped"), call(analysis, "last"))
    assert flow.assumptions(call(analysis, "last")) >= {Fact("other", False)}
    # a condition known only in part (`a or (b and c)` true) says nothing about the rest of the block
    analysis, flow = flow_of(
        """
        for x in loader:
            if a or (b and c):
                if skip:
                    continue
            after()
            if skip:
                under_skip()
        """
    )
    assert flow.may_share_a_pass(call(analysis, "after"), call(analysis, "under_skip"))
    assert flow.assumptions(call(analysis, "after")) == frozenset()


def test_an_early_exit_makes_the_opposite_hold_for_the_rest_of_the_block():
    analysis, flow = flow_of(
        """
        def step(self):
            if not self.use_amp:
                plain()
                return
            scaled()
        """
    )
    assert flow.assumptions(call(analysis, "scaled")) == {Fact("self.use_amp", True)}
    assert not flow.may_share_a_pass(call(analysis, "plain"), call(analysis, "scaled"))


def test_conditional_expressions_are_arms_too():
    analysis, flow = flow_of("x = on() if use_amp else off()\n")
    assert flow.assumptions(call(analysis, "off")) == {Fact("use_amp", False)}


@pytest.mark.parametrize(
    "condition, arm, float32",
    [
        ("use_amp", "else", True),
        ("use_amp", "if", False),
        ("args.fp16", "else", True),
        ("self.scaler is not None", "else", True),
        ("scaler.is_enabled()", "else", True),
        ("not args.amp", "if", True),
        ("args.fp32", "if", True),
        ("cfg.mixed", "else", True),
        ("epoch > 3", "else", False),
        ("example", "else", False),  # "amp" inside a word is no switch
    ],
)
def test_the_float32_arm_of_a_precision_switch(condition, arm, float32):
    analysis, flow = flow_of(
        f"""
        if {condition}:
            in_if()
        else:
            in_else()
        """
    )
    assert flow.on_float32_path(call(analysis, "in_" + arm)) is float32


def test_an_enabled_flag_is_a_precision_switch_whatever_its_name():
    analysis, flow = flow_of(
        """
        import torch
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.low)
        if cfg.low:
            on()
        else:
            off()
        """
    )
    assert flow.on_float32_path(call(analysis, "off")) and not flow.on_float32_path(call(analysis, "on"))


@pytest.mark.parametrize(
    "source, fallback",
    [
        ('if torch.__version__ < "1.10":\n    old()\nelse:\n    new()', "old"),
        ("if TORCH_VERSION >= (1, 10):\n    new()\nelse:\n    old()", "old"),
        ('if digit_version(torch.__version__) < digit_version("1.10"):\n    old()\nelse:\n    new()', "old"),
        ("if _TORCH_GREATER_EQUAL_2_4:\n    new()\nelse:\n    old()", "old"),
        ("if is_torch_min_version('2.4'):\n    new()\nelse:\n    old()", "old"),
        ('if hasattr(torch, "amp") and torch.__version__ >= "2.4":\n    new()\nelse:\n    old()', "old"),
        ("x = new() if hasattr(torch.amp, 'GradScaler') else old()", "old"),
        ("try:\n    from torch.amp import GradScaler\n    new()\nexcept ImportError:\n    old()", "old"),
        ("if epoch < 10:\n    new()\nelse:\n    old()", None),
        ("try:\n    new()\nexcept RuntimeError:\n    old()", None),
    ],
)
def test_version_fallbacks(source, fallback):
    analysis, flow = flow_of("import torch\n" + source)
    for name in ("old", "new"):
        assert flow.in_version_fallback(call(analysis, name)) is (name == fallback), name


def test_ancestors_stop_at_the_function():
    from flake8_amp.analysis.control_flow import ancestors

    analysis, _ = flow_of("if c:\n    def f():\n        g()\n")
    parents = [type(parent).__name__ for _, parent in ancestors(call(analysis, "g"), analysis)]
    assert parents == ["Expr", "FunctionDef"]
    every = [type(parent).__name__ for _, parent in ancestors(call(analysis, "g"), analysis, cross_scopes=True)]
    assert every == ["Expr", "FunctionDef", "If", "Module"]
