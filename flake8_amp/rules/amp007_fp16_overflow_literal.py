"""AMP007: a literal beyond float16's range filled or mixed into a tensor."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.literals import numeric_literal, overflows_fp16
from ..analysis.low_precision import LowPrecisionFlow
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.precision import BF16, FP16, module_precision
from .base import Finding, Rule, Severity
from .source_text import excerpt

# method name -> position of the fill value
_FILL_METHODS = {"masked_fill": 1, "masked_fill_": 1, "fill_": 0, "new_full": 1}
# torch function -> positions that may hold a fill value
_FILL_FUNCTIONS = {"torch.full": (1,), "torch.full_like": (1,), "torch.where": (1, 2)}
_FILL_KEYWORDS = ("value", "fill_value", "other", "input")


class Fp16OverflowLiteral(Rule):
    code = "AMP007"
    name = "fp16-overflow-literal"
    severity = Severity.HIGH
    summary = "A literal beyond float16's range (|x| > 65504, e.g. -1e9) filled or mixed into a tensor"
    why = "float16 turns it into inf (then NaN in softmax), or masked_fill raises 'value cannot be converted to type c10::Half without overflow'"
    fix = "use torch.finfo(x.dtype).min (or .max), which fits every dtype"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        precision = analysis.derived(module_precision)
        if precision == BF16:
            return
        # Model code (an nn.Module) runs under whatever precision its trainer picks.
        may_run_fp16 = precision == FP16 or _defines_a_module(analysis)
        flow = None
        for call in analysis.calls if may_run_fp16 else ():
            for value in _fill_values(call, analysis):
                literal = numeric_literal(value)
                if overflows_fp16(literal):
                    yield self.finding(
                        value,
                        f"{literal:g} as the fill value of {call_name(call)}() overflows float16 (max 65504)",
                    )
        for node in analysis.nodes(ast.BinOp):
            if not isinstance(node.op, (ast.Mult, ast.Add, ast.Sub)):
                continue
            for literal_side, tensor_side in ((node.left, node.right), (node.right, node.left)):
                literal = numeric_literal(literal_side)
                if not overflows_fp16(literal):
                    continue
                flow = flow or analysis.derived(LowPrecisionFlow)
                origin = flow.origin(tensor_side)
                if origin is not None and origin.dtype != "bfloat16":
                    yield self.finding(
                        literal_side,
                        f"{literal:g} mixed into '{excerpt(tensor_side)}', a "
                        f"{origin.dtype_label} value, overflows float16 (max 65504)",
                        fix="scale in float32 (.float() first) or keep the constant within 65504",
                    )


def _fill_values(call: ast.Call, analysis: ModuleAnalysis) -> list[ast.expr]:
    func = call.func
    qualified = analysis.resolve(func)
    if qualified in _FILL_FUNCTIONS:
        positions = _FILL_FUNCTIONS[qualified]
    elif qualified is None and isinstance(func, ast.Attribute) and func.attr in _FILL_METHODS:
        positions = (_FILL_METHODS[func.attr],)
    else:
        return []
    values = [call.args[i] for i in positions if i < len(call.args)]
    values += [kw.value for kw in call.keywords if kw.arg in _FILL_KEYWORDS]
    return values


def _defines_a_module(analysis: ModuleAnalysis) -> bool:
    return any(
        (analysis.resolve(base) or "").startswith("torch.nn.") for cls in analysis.nodes(ast.ClassDef) for base in cls.bases
    )
