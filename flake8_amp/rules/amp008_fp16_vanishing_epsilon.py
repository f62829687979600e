"""AMP008: an epsilon that rounds to zero in float16 guarding float16 math.

``x16 / (n16 + 1e-8)``, ``torch.log(p16 + 1e-8)``, ``torch.sqrt(v16 + 1e-12)``: float16 stores the
epsilon as 0, so the guard is gone. ``F.normalize`` (default ``eps=1e-12``) on a float16 zero vector
is NaN. Norm layers with ``eps=1e-12`` in a model cast to float16 have NaN gradients on constant rows
and lose their eps wherever the norm is computed in float16 (exports, fused kernels).
"""

from __future__ import annotations

import ast
import math
from typing import Iterator

from ..analysis.constants import constant_value, rounds_to_zero_in_fp16
from ..analysis.control_flow import ControlFlow
from ..analysis.dtypes import FP16_MAX, cast_dtype
from ..analysis.fp16_values import FP16, NOT_FP16, Fp16Values
from ..analysis.model_code import unknown_dtype_may_be_fp16
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.source_text import excerpt
from ..runtime.evidence import LineEvidence, RunEvidence, Probe, Verdict, judge_numeric
from .base import Finding, Rule, Severity

# norm -> position of eps
_NORMS = {
    "torch.nn.LayerNorm": 1,
    "torch.nn.GroupNorm": 2,
    "torch.nn.RMSNorm": 1,
    "torch.nn.functional.layer_norm": 4,
    "torch.layer_norm": 4,
    "torch.nn.functional.group_norm": 4,
    "torch.group_norm": 4,
    "torch.nn.functional.rms_norm": 3,
    "torch.rms_norm": 3,
}
_NORMALIZE = "torch.nn.functional.normalize"
_NORM_CALLS = frozenset(_NORMS) | {_NORMALIZE}
_NORMALIZE_EPS_POSITION = 3
_GUARDED_FUNCTIONS = frozenset({"sqrt", "rsqrt", "log", "log2", "log10"})
# Below this, 1/sqrt(eps) exceeds float16's max: a norm's float16 backward overflows on constant rows.
_NORM_BACKWARD_OVERFLOW = 1.0 / FP16_MAX**2


class Fp16VanishingEpsilon(Rule):
    code = "AMP008"
    name = "fp16-vanishing-epsilon"
    severity = Severity.MEDIUM
    summary = "An epsilon that rounds to zero in float16 (1e-8, 1e-12) guarding float16 math"
    why = "float16 rounds it to zero: the division, sqrt or log it was meant to guard returns inf or NaN"
    fix = "use an epsilon float16 can hold (>= 6.1e-5, e.g. 1e-5), or compute the guarded op in float32"
    quiet_in_bf16 = True

    probes = frozenset({Probe.RECOMPUTE})

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # the NaN/Inf the epsilon failed to prevent, or values float32 keeps and float16 flushes to 0
        return judge_numeric(evidence)

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        values = None
        casts_to_fp16 = None
        for call in analysis.calls_to(_NORM_CALLS):
            qualified = analysis.resolve(call.func)
            context = analysis.context(call)
            region = context.innermost_region
            if region is not None and region.may_be_enabled and not region.is_cpu:
                continue  # CUDA autocast runs norms and normalize in float32
            if casts_to_fp16 is None:
                casts_to_fp16 = any(cast_dtype(c, analysis.resolve) == "float16" for c in analysis.calls_named("half", "to", "type"))
            eps = _argument(call, "eps", _NORMALIZE_EPS_POSITION if qualified == _NORMALIZE else _NORMS[qualified])
            value = constant_value(eps, analysis)
            if qualified == _NORMALIZE:
                values = values or analysis.derived(Fp16Values)
                data = _argument(call, "input", 0)
                fp16_input = data is not None and values.verdict(data) == FP16
                if eps is None and fp16_input:
                    yield self.finding(
                        call,
                        f"{call_name(call)}() of float16 '{excerpt(data)}' uses the default eps=1e-12, "
                        "which rounds to zero in float16: a zero vector gives NaN",
                        fix="pass eps=1e-4 (or normalize in float32: F.normalize(x.float(), ...).to(x.dtype))",
                    )
                elif eps is not None and rounds_to_zero_in_fp16(value) and (fp16_input or casts_to_fp16):
                    yield self.finding(
                        eps,
                        f"eps={ast.unparse(eps)} in {call_name(call)}() rounds to zero in float16: "
                        "a zero vector gives NaN",
                        fix="use eps=1e-4 or normalize in float32",
                    )
            elif eps is not None and casts_to_fp16 and rounds_to_zero_in_fp16(value):
                yield self.finding(
                    eps, _norm_message(call, eps, value), fix="use eps=1e-5 (the default) or keep the norm in float32"
                )
        for node in analysis.nodes(ast.BinOp):
            if not isinstance(node.op, ast.Add):
                continue
            for eps, other in ((node.right, node.left), (node.left, node.right)):
                if not rounds_to_zero_in_fp16(constant_value(eps, analysis)):
                    continue
                if not _guards_a_singularity(node, analysis):
                    continue
                values = values or analysis.derived(Fp16Values)
                verdict = values.verdict(other)
                if verdict == FP16:
                    yield self.finding(
                        eps,
                        f"{ast.unparse(eps)} added to '{excerpt(other)}', a float16 value, rounds to zero in float16",
                    )
                elif (
                    verdict != NOT_FP16
                    and _guarded_by_log(node, analysis)
                    and _sigmoid_probability(other, analysis, values)
                    and unknown_dtype_may_be_fp16(node, analysis)
                ):
                    yield self.finding(
                        eps,
                        f"{ast.unparse(eps)} added to '{excerpt(other)}', a sigmoid probability that autocast "
                        "leaves in float16, rounds to zero in float16: the log is -inf once it saturates",
                        fix="use F.logsigmoid(x) (log p) and F.logsigmoid(-x) (log(1 - p)) on the logits, or an epsilon of 1e-4",
                    )


def _argument(call: ast.Call, keyword: str, position: int) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if position < len(call.args) else None


def _norm_message(call: ast.Call, eps: ast.expr, value: float | None) -> str:
    where = f"eps={ast.unparse(eps)} in {call_name(call)}() of a module cast to float16"
    if value is not None and value < _NORM_BACKWARD_OVERFLOW:
        return (
            f"{where}: 1/sqrt(eps) = {1 / math.sqrt(value):.0e} overflows float16, so the backward of a "
            "constant row is inf/NaN, and float16 kernels or exports round eps to 0"
        )
    return f"{where} rounds to 0 wherever the norm is computed in float16 (ONNX/TensorRT exports, fused kernels)"


def _guarded_by_log(add: ast.BinOp, analysis: ModuleAnalysis) -> bool:
    """``torch.log(p + eps)``, ``(p + eps).log()``."""
    parent = analysis.parents.get(add)
    if isinstance(parent, ast.Call) and add in parent.args:
        return call_name(parent) in _LOGS and (analysis.resolve(parent.func) or "").startswith("torch.")  # not math/numpy
    return isinstance(parent, ast.Attribute) and parent.attr in _LOGS and isinstance(analysis.parents.get(parent), ast.Call)


_LOGS = frozenset({"log", "log2", "log10"})
_SIGMOIDS = frozenset({"sigmoid", "expit"})
# Ops that only move elements around: a sigmoid's output stays one through them.
_LAYOUT_OPS = frozenset({"flatten", "view", "reshape", "unsqueeze", "squeeze", "permute", "transpose", "contiguous", "detach", "clone"})


def _sigmoid_probability(
    node: ast.AST, analysis: ModuleAnalysis, values: Fp16Values, depth: int = 0, use: ast.AST | None = None
) -> bool:
    """``p`` or ``1 - p`` where ``p`` is a sigmoid of a value not known to be float32
    (``outputs["pred_logits"].flatten(0, 1).sigmoid()``), directly or through names bound to one on the
    use's path (``if focal: p = x.sigmoid() else: p = x.softmax(-1)`` ... ``if focal: (p + 1e-8).log()``):
    a DETR matcher's class cost ``-(p + 1e-8).log()``, ``-(1 - p + 1e-8).log()``."""
    use = use or node
    if depth > 3:
        return False
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and isinstance(node.left, ast.Constant) and node.left.value == 1:
        return _sigmoid_probability(node.right, analysis, values, depth + 1, use)
    while isinstance(node, ast.Subscript) or isinstance(node, ast.Call) and call_name(node) in _LAYOUT_OPS and isinstance(node.func, ast.Attribute):
        node = node.value if isinstance(node, ast.Subscript) else node.func.value  # type: ignore[attr-defined]
    if isinstance(node, ast.Call) and call_name(node) in _SIGMOIDS:
        method = isinstance(node.func, ast.Attribute) and not node.args and analysis.resolve(node.func) is None
        if not method and not (analysis.resolve(node.func) or "").startswith("torch."):
            return False  # scipy.special.expit(x), jax.nn.sigmoid(x), a local helper: not known to be torch's
        argument = node.func.value if method else (node.args[0] if node.args else None)  # type: ignore[attr-defined]
        return argument is not None and values.verdict(argument) != NOT_FP16
    if isinstance(node, ast.Name):
        from ..analysis.bindings import Bindings  # read only for a name guarded by a log

        flow = analysis.derived(ControlFlow)
        bindings = [b for b in analysis.derived(Bindings).reaching(node) if flow.may_share_a_pass(b.statement, use)]
        if not bindings or any(b.value is None for b in bindings):
            return False  # a parameter, a loop target: not a sigmoid seen here
        return all(_sigmoid_probability(b.value, analysis, values, depth + 1, use) for b in bindings)
    return False


def _guards_a_singularity(add: ast.BinOp, analysis: ModuleAnalysis) -> bool:
    """``a / (b + eps)``, ``sqrt(v + eps)``, ``torch.log(p + eps)``, ``(v + eps).rsqrt()``,
    ``(v + eps) ** -0.5``."""
    parent = analysis.parents.get(add)
    if isinstance(parent, ast.BinOp):
        if isinstance(parent.op, ast.Div) and parent.right is add:
            return True
        if isinstance(parent.op, ast.Pow) and parent.left is add:
            exponent = constant_value(parent.right, analysis)
            return exponent is not None and exponent < 1
        return False
    if isinstance(parent, ast.Call) and add in parent.args and call_name(parent) in _GUARDED_FUNCTIONS:
        return True
    if isinstance(parent, ast.Attribute) and parent.attr in _GUARDED_FUNCTIONS:
        return isinstance(analysis.parents.get(parent), ast.Call)
    return False
