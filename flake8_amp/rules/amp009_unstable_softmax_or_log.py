"""AMP009: softmax and log written by hand in numerically unstable forms."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from .base import Finding, Rule, Severity

_MAX_NAMES = frozenset({"max", "amax", "logsumexp"})


class UnstableSoftmaxOrLog(Rule):
    code = "AMP009"
    name = "unstable-softmax-or-log"
    severity = Severity.HIGH
    summary = "Hand-written softmax exp(x)/exp(x).sum() without the max subtracted; log(softmax(x)); log(sigmoid(x))"
    why = "exp overflows past 11.09 in float16 (88.7 in float32) and log of an underflowed probability is -inf"
    fix = "use torch.softmax / torch.log_softmax / F.logsigmoid, which are stable in every precision"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        for node in analysis.nodes(ast.BinOp):
            if isinstance(node.op, ast.Div):
                exponent = self._exp_argument(node.left, analysis)
                if (
                    exponent is not None
                    and self._sums_an_exp(node.right, analysis)
                    and not _max_subtracted(exponent, analysis)
                ):
                    yield self.finding(
                        node,
                        "hand-written softmax exp(x) / exp(x).sum() without subtracting the max",
                        fix="use torch.softmax(x, dim) (or subtract x.amax(dim, keepdim=True) first)",
                    )
        for call in analysis.calls:
            argument = self._log_argument(call, analysis)
            if argument is None:
                continue
            inner = self._callee(argument, analysis)
            if inner in ("softmax",):
                yield self.finding(call, "log(softmax(x))", fix="use torch.log_softmax(x, dim)")
            elif inner == "sigmoid":
                yield self.finding(call, "log(sigmoid(x))", fix="use torch.nn.functional.logsigmoid(x)")

    @staticmethod
    def _callee(node: ast.AST, analysis: ModuleAnalysis) -> str | None:
        """``softmax`` / ``sigmoid`` / ``exp`` for torch's function or the Tensor method."""
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            return None
        qualified = analysis.resolve(node.func)
        name = node.func.attr
        if qualified is None:
            return name  # a Tensor method: x.softmax(-1), x.exp()
        if qualified.startswith("torch."):
            return name
        return None

    def _exp_argument(self, node: ast.AST, analysis: ModuleAnalysis) -> ast.AST | None:
        if isinstance(node, ast.Name):
            bound = analysis.bound_values(node)
            node = bound[-1] if len(bound) == 1 else node
        if self._callee(node, analysis) != "exp":
            return None
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        return node.args[0] if node.args else node.func.value

    def _sums_an_exp(self, node: ast.AST, analysis: ModuleAnalysis) -> bool:
        for inner in ast.walk(node):
            if self._callee(inner, analysis) == "sum":
                assert isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                summed = inner.args[0] if analysis.resolve(inner.func) and inner.args else inner.func.value
                if self._exp_argument(summed, analysis) is not None:
                    return True
        return False

    def _log_argument(self, call: ast.Call, analysis: ModuleAnalysis) -> ast.AST | None:
        if self._callee(call, analysis) != "log":
            return None
        assert isinstance(call.func, ast.Attribute)
        if analysis.resolve(call.func):
            return call.args[0] if call.args else None
        return call.func.value


def _max_subtracted(exponent: ast.AST, analysis: ModuleAnalysis) -> bool:
    """``x - x.max(-1, keepdim=True).values``, ``x - torch.amax(x)``, ``x - logsumexp``, also through a
    name bound to such a difference."""
    if isinstance(exponent, ast.Name):
        return any(_max_subtracted(value, analysis) for value in analysis.bound_values(exponent))
    if not (isinstance(exponent, ast.BinOp) and isinstance(exponent.op, ast.Sub)):
        return False
    for node in ast.walk(exponent.right):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if name and any(marker in name for marker in _MAX_NAMES):
            return True
    return False
