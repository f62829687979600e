"""AMP007: a finite constant beyond float16's range filled or mixed into a tensor that may be float16.

``scores.masked_fill(mask, -1e9)`` on a float16 tensor raises "value cannot be converted to type
c10::Half without overflow" (so do ``fill_``, ``new_full``, ``full_like`` and ``torch.full(...,
dtype=torch.float16)``); ``torch.where(mask, -1e9, scores)`` and ``h * 1e5`` silently give inf.
"""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.bindings import Bindings
from ..analysis.constants import constant_value, is_int_constant, overflows_fp16
from ..analysis.dtypes import literal_dtype
from ..analysis.fp16_values import FP16, NOT_FP16, UNKNOWN, Fp16Values
from ..analysis.model_code import unknown_dtype_may_be_fp16
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.precision import FP16 as FP16_PRECISION, module_precision
from ..analysis.source_text import excerpt
from ..runtime.evidence import LineEvidence, Outcome, RunEvidence, Probe, Verdict, fmt, judge_numeric
from .base import Finding, Rule, Severity

# Tensor methods whose result keeps the receiver's dtype -> position of the fill value.
_FILL_METHODS = {"masked_fill": 1, "masked_fill_": 1, "fill_": 0, "new_full": 1, "where": 1}
_FILL_METHOD_KEYWORDS = {
    "masked_fill": "value",
    "masked_fill_": "value",
    "fill_": "value",
    "new_full": "fill_value",
    "where": "other",
}
_FILL_NAMES = frozenset(_FILL_METHODS) | {"full", "full_like"}
# Ops whose result is a floating tensor: evidence that an integer fill is meant for floats.
_FLOAT_PRODUCERS = frozenset({"matmul", "bmm", "baddbmm", "mm", "einsum", "linear", "softmax", "log_softmax"})
_MAX_DEPTH = 16


class Fp16OverflowLiteral(Rule):
    code = "AMP007"
    name = "fp16-overflow-literal"
    severity = Severity.HIGH
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "A literal beyond float16's range (|x| > 65504, e.g. -1e9) filled or mixed into a tensor"
    why = "float16 turns it into inf (then NaN in softmax), or masked_fill raises 'value cannot be converted to type c10::Half without overflow'"
    fix = "use torch.finfo(x.dtype).min (or .max), which fits every dtype"
    quiet_in_bf16 = True

    probes = frozenset({Probe.RECOMPUTE})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # "value cannot be converted to type at::Half without overflow", or an inf produced here
        verdict = judge_numeric(evidence)
        records = [r for r in evidence.ops.values() if r.output_dtypes]
        if verdict.outcome is not Outcome.NOT_OBSERVED or not records:
            return verdict
        # the margin: the largest value the line produced, in the dtypes it ran in, against float16's max
        largest = max(records, key=lambda r: r.max_abs_output)
        return Verdict(Outcome.NOT_OBSERVED, f"{verdict.evidence}; largest |value| {fmt(largest.max_abs_output)} "
                                             f"({largest.op}, {', '.join(sorted(largest.output_dtypes))}), "
                                             f"float16 holds up to 65504")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        precision = analysis.derived(module_precision)
        # What an unknown dtype means: in fp16 code it may be float16; without any low-precision
        # evidence, only model code (the methods of an nn.Module that this module does not itself train
        # in float32) is code that some trainer may run under float16 autocast, in a project that runs
        # anything in low precision at all (one that never mentions it runs its models in float32).
        values = None
        for call in analysis.calls_named(*_FILL_NAMES):
            site = _fill_site(call, analysis)
            if site is None:
                continue
            fill, tensor, dtype_node = site
            number = constant_value(fill, analysis)
            if not overflows_fp16(number):
                continue
            values = values or analysis.derived(Fp16Values)
            verdict = _fill_verdict(tensor, dtype_node, analysis, values)
            if verdict == NOT_FP16:
                continue
            if verdict != FP16:
                if not unknown_dtype_may_be_fp16(call, analysis):
                    continue
                if precision != FP16_PRECISION and tensor is not None and values.float32_under_autocast(tensor):
                    continue  # `(1 - probs.gather(...)).masked_fill(m, -1e5)`: autocast runs softmax in float32
                if _builds_a_mask(call, tensor):
                    continue  # `mask.masked_fill(mask == 0, -1e9)`: a 0/1 mask of unknown dtype, not scores
                region = analysis.context(call).innermost_region
                if region is not None and region.inputs_dtype in ("float32", "float64"):
                    continue  # in a @custom_fwd(cast_inputs=torch.float32) function: float32 inputs, autocast off
                if is_int_constant(fill) and not _floating_result(tensor, analysis):
                    continue  # an integer fill may well be for an index tensor
            yield self.finding(fill, _fill_message(call, number) + _reason(call, analysis))
        overflowed: set[ast.AST] = set()
        for node, constant, operand in _arithmetic(analysis):
            if operand in overflowed:
                overflowed.add(node)  # `h * 1e9 * 1e9`: the first product already overflowed, once is enough
                continue
            number = constant_value(constant, analysis)
            if not overflows_fp16(number):
                continue
            values = values or analysis.derived(Fp16Values)
            if values.verdict(operand) == FP16:
                overflowed.add(node)
                yield self.finding(
                    constant,
                    f"{number:g} mixed into '{excerpt(operand)}', a float16 value, overflows float16 (max 65504)"
                    + _reason(node, analysis),
                    fix="scale in float32 (.float() first) or keep the constant within 65504",
                )


def _fill_site(call: ast.Call, analysis: ModuleAnalysis) -> tuple[ast.expr, ast.expr | None, ast.expr | None] | None:
    """(fill value, the tensor whose dtype the result takes or None, the dtype= argument or None)."""
    func = call.func
    keywords = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    dtype_node = keywords.get("dtype")
    qualified = analysis.resolve(func)
    if qualified is None and isinstance(func, ast.Attribute) and func.attr in _FILL_METHODS:
        position = _FILL_METHODS[func.attr]
        fill = call.args[position] if position < len(call.args) else keywords.get(_FILL_METHOD_KEYWORDS[func.attr])
        return (fill, func.value, dtype_node) if fill is not None else None
    if qualified == "torch.full":
        fill = call.args[1] if len(call.args) > 1 else keywords.get("fill_value")
        # Without dtype= the result is float32 (or int64): nothing overflows.
        return (fill, None, dtype_node) if fill is not None and dtype_node is not None else None
    if qualified == "torch.full_like":
        tensor = call.args[0] if call.args else keywords.get("input")
        fill = call.args[1] if len(call.args) > 1 else keywords.get("fill_value")
        return (fill, tensor, dtype_node) if fill is not None else None
    if qualified == "torch.where":
        operands = list(call.args[1:3]) + [keywords[k] for k in ("input", "other") if k in keywords]
        constants = [o for o in operands if constant_value(o, analysis) is not None]
        tensors = [o for o in operands if constant_value(o, analysis) is None]
        if len(operands) != 2 or len(constants) != 1:
            return None  # two scalars make a float32 tensor; two tensors hold no literal
        return constants[0], tensors[0], None
    return None


def _builds_a_mask(call: ast.Call, tensor: ast.expr | None) -> bool:
    """``mask.masked_fill(mask == 0, v)``: the fill's condition compares the filled tensor itself with 0 or
    1, so the tensor holds a 0/1 mask (a tokenizer's integer attention mask, most often), which an additive
    mask is being built from: not scores that autocast made float16. Where it is later added to float16
    scores, the value becomes -inf there, which is what a mask means."""
    if tensor is None or not call.args or not isinstance(call.func, ast.Attribute) or call.func.attr not in ("masked_fill", "masked_fill_"):
        return False
    condition = call.args[0]
    if not (isinstance(condition, ast.Compare) and len(condition.ops) == 1 and isinstance(condition.ops[0], (ast.Eq, ast.NotEq))):
        return False
    sides = [condition.left, condition.comparators[0]]
    constant = next((side for side in sides if isinstance(side, ast.Constant)), None)
    other = next((side for side in sides if side is not constant), None)
    return (
        constant is not None
        and constant.value in (0, 1)
        and other is not None
        and ast.dump(other) == ast.dump(tensor)
    )


def _fill_verdict(
    tensor: ast.expr | None, dtype_node: ast.expr | None, analysis: ModuleAnalysis, values: Fp16Values
) -> str:
    """Whether the filled result is float16: from a literal ``dtype=``, else from the tensor."""
    if dtype_node is not None:
        dtype = literal_dtype(dtype_node, analysis.resolve)
        if dtype == "float16":
            return FP16
        if dtype is not None:
            return NOT_FP16
        if isinstance(dtype_node, ast.Attribute) and dtype_node.attr == "dtype":
            tensor = dtype_node.value  # dtype=scores.dtype: as float16 as scores is
        else:
            return UNKNOWN
    return values.verdict(tensor) if tensor is not None else UNKNOWN


def _floating_result(tensor: ast.expr | None, analysis: ModuleAnalysis, depth: int = 0) -> bool:
    """``q @ k.T``, ``torch.bmm(...)``, ``x.softmax(-1)``, or a name bound to one, or methods and torch
    functions of those: surely floating."""
    if tensor is None or depth > _MAX_DEPTH:
        return False
    if isinstance(tensor, ast.BinOp):
        return isinstance(tensor.op, (ast.MatMult, ast.Div)) or any(
            _floating_result(side, analysis, depth + 1) for side in (tensor.left, tensor.right)
        )
    if isinstance(tensor, ast.Call):
        if call_name(tensor) in _FLOAT_PRODUCERS:
            return True
        func = tensor.func
        if analysis.resolve(func) is None and isinstance(func, ast.Attribute):
            return _floating_result(func.value, analysis, depth + 1)  # scores.masked_fill(...) is scores
        return (analysis.resolve(func) or "").startswith("torch.") and any(
            _floating_result(arg, analysis, depth + 1) for arg in tensor.args
        )
    if isinstance(tensor, ast.Name):
        values = analysis.derived(Bindings).reaching_values(tensor)
        return any(_floating_result(value, analysis, depth + 1) for value in values)
    return False


def _arithmetic(analysis: ModuleAnalysis) -> Iterator[tuple[ast.AST, ast.expr, ast.expr]]:
    """(node, constant side, tensor side) of every ``*``, ``+``, ``-`` (also augmented), inner operations
    before the ones around them."""
    for node in reversed(analysis.nodes(ast.BinOp)):
        if isinstance(node.op, (ast.Mult, ast.Add, ast.Sub)):
            yield node, node.left, node.right
            yield node, node.right, node.left
    for node in analysis.nodes(ast.AugAssign):
        if isinstance(node.op, (ast.Mult, ast.Add, ast.Sub)):
            yield node, node.value, node.target


def _fill_message(call: ast.Call, number: float) -> str:
    name = call_name(call)
    if name == "where":
        return f"{number:g} in {name}() becomes {'-' if number < 0 else ''}inf in float16 (max 65504)"
    return f"{number:g} as the fill value of {name}() overflows float16 (max 65504)"


def _reason(node: ast.AST, analysis: ModuleAnalysis) -> str:
    region = analysis.context(node).innermost_region
    return region.reason() if region is not None else ""


