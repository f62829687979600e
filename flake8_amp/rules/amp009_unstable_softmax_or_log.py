"""AMP009: softmax and log written by hand in numerically unstable forms.

``torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)`` overflows (exp(11.1) is inf in float16, exp(88.8)
in float32) or underflows to 0/0; ``torch.log(torch.softmax(x))`` and ``torch.log(torch.sigmoid(x))``
are -inf where the probability underflows. ``softmax``, ``log_softmax`` and ``logsigmoid`` are stable.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Iterator

from ..analysis.bindings import Bindings
from ..analysis.constants import provably_nonpositive
from ..analysis.fp16_values import Fp16Values
from ..analysis.losses import sigmoid_input
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..fixes.edits import Fix, FixSafety
from ..runtime.evidence import LineEvidence, Outcome, RunEvidence, Probe, Verdict, fmt, judge_numeric
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule

_MAX_NAMES = ("max", "amax", "logsumexp")
#: where exp overflows: the largest finite value of each format
_FORMAT_MAX = {"float16": 65504.0, "bfloat16": 3.39e38, "float32": 3.40e38, "float64": 1.80e308}
# nn modules whose call is the op of the same name
_MODULE_OPS = {"torch.nn.Softmax": "softmax", "torch.nn.Sigmoid": "sigmoid"}
_FUNCTION_OPS = {
    "torch.special.expit": "sigmoid",
    "torch.special.softmax": "softmax",
    "torch.special.exp": "exp",
    "torch.nn.functional.gumbel_softmax": "softmax",  # hard=True gives exact zeros: log is -inf
}
_MAX_DEPTH = 3
_REFERENCE = re.compile(r"reference|(^|_)ref(_|$)", re.I)


class UnstableSoftmaxOrLog(Rule):
    code = "AMP009"
    name = "unstable-softmax-or-log"
    severity = Severity.HIGH
    preview = True  # held-out precision below 75% (benchmarks/precision.md)
    summary = "Hand-written softmax exp(x)/exp(x).sum() without the max subtracted; log(softmax(x)); log(sigmoid(x))"
    why = "exp overflows past 11.09 in float16 (88.7 in float32) and log of an underflowed probability is -inf"
    fix = "use torch.softmax / torch.log_softmax / F.logsigmoid, which are stable in every precision"

    probes = frozenset({Probe.RECOMPUTE})

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "rewrites `log(softmax(x, dim))` to `log_softmax(x, dim)` (in the softmax's own spelling: "
        "`F.log_softmax`, `torch.log_softmax`, `x.log_softmax`), `log(sigmoid(x))` to `F.logsigmoid(x)`, and "
        "`exp(x) / exp(x).sum(dim, keepdim=True)` to `torch.softmax(x, dim=dim)`."
    )
    fix_safety_reason = (
        "Each replacement computes the same function in the input's dtype, and differs only where the "
        "original overflowed or underflowed (inf, NaN, -inf), where it gives the finite value. Only the "
        "nested form is fixed: a probability bound to a name first (`p = F.softmax(x)` ... `p.log()`) may "
        "be used elsewhere, an `nn.Softmax` / `nn.Sigmoid` instance may be replaced, and an exponent with a "
        "call in it (`exp(f(x))`) ran twice."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        node = finding.node
        text = _stable_softmax(node, module) if isinstance(node, ast.BinOp) else _stable_log(node, module)
        return Fix((module.replace(node, text),)) if text is not None else None

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # exp overflowing to inf (inf / inf is NaN), log of an underflowed 0 (-inf), or the low-precision
        # ops losing precision against float32
        verdict = judge_numeric(evidence)
        exp = evidence.ops.get("exp")
        if verdict.outcome is not Outcome.NOT_OBSERVED or exp is None or not exp.output_dtypes:
            return verdict
        # the margin: how close exp came to the largest value of the format it ran in
        limits = ", ".join(f"{dtype} max {_FORMAT_MAX[dtype]:g}" for dtype in sorted(exp.output_dtypes)
                           if dtype in _FORMAT_MAX)
        return Verdict(Outcome.NOT_OBSERVED, f"{verdict.evidence}; largest exp(x) {fmt(exp.max_abs_output)}"
                                             + (f" ({limits})" if limits else ""))

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        shifted_in_place = None
        for node in analysis.nodes(ast.BinOp):
            if not isinstance(node.op, ast.Div) or not isinstance(node.left, (ast.Name, ast.Call)):
                continue
            exponent = _exp_argument(node.left, analysis)
            if exponent is None or not _sums_an_exp(node.right, analysis):
                continue
            if shifted_in_place is None:
                shifted_in_place = _names_shifted_in_place(analysis)
            if (
                _max_subtracted(exponent, analysis, shifted_in_place)
                or provably_nonpositive(exponent, analysis)  # a Gaussian kernel: exp(-d**2 / s) <= 1
                or _deliberate(node, analysis)
                or all(_computed_in_float32(exp, "exp", analysis) for exp in _op_calls_through_name(node.left, analysis))
            ):
                continue
            yield self.finding(
                node,
                "hand-written softmax exp(x) / exp(x).sum() without subtracting the max",
                fix="use torch.softmax(x, dim) (or subtract x.amax(dim, keepdim=True) first)",
            )
        for call in analysis.calls_named("log"):
            if _op(call, analysis) != "log":
                continue
            argument = _log_argument(call, analysis)
            inner = _op_through_name(argument, analysis)
            if inner not in ("softmax", "sigmoid") or _deliberate(call, analysis):
                continue
            if all(_computed_in_float32(node, inner, analysis) for node in _op_calls_through_name(argument, analysis)):
                continue  # the probabilities are float32 here: as in a run without AMP
            if inner == "softmax":
                yield self.finding(call, "log(softmax(x))", fix="use torch.log_softmax(x, dim)")
            else:
                yield self.finding(call, "log(sigmoid(x))", fix="use torch.nn.functional.logsigmoid(x)")


def _deliberate(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    """In a reference implementation that tests compare against (``def softmax_reference(...)``,
    ``reference_fn=lambda i: i.sigmoid().log()``): naive on purpose."""
    child, parent = node, analysis.parents.get(node)
    while parent is not None:
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and _REFERENCE.search(parent.name):
            return True
        if isinstance(child, ast.Lambda) and isinstance(parent, ast.keyword) and _REFERENCE.search(parent.arg or ""):
            return True
        child, parent = parent, analysis.parents.get(parent)
    return False


def _op(node: ast.AST | None, analysis: ModuleAnalysis) -> str | None:
    """``exp`` / ``log`` / ``sum`` / ``softmax`` / ``sigmoid`` for torch's function, the Tensor method
    (``x.exp()``), torch.special's spelling, or a call of an ``nn.Softmax`` / ``nn.Sigmoid`` instance."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    qualified = analysis.resolve(func)
    if qualified in _FUNCTION_OPS:
        return _FUNCTION_OPS[qualified]
    if isinstance(func, ast.Attribute):
        if qualified is None:
            instance_op = _instance_op(func, analysis)
            return instance_op or func.attr  # a Tensor method: x.softmax(-1), x.exp()
        if qualified.startswith("torch.") and qualified.count(".") == 1 or qualified.startswith(
            "torch.nn.functional."
        ):
            return func.attr
        return None
    if isinstance(func, ast.Name):
        if qualified is not None and qualified.startswith(("torch.", "torch.nn.functional.")):
            return qualified.rpartition(".")[2]  # from torch import exp
        return _instance_op(func, analysis)
    return None


def _instance_op(func: ast.expr, analysis: ModuleAnalysis) -> str | None:
    """``self.softmax(x)`` where ``self.softmax = nn.Softmax(dim=-1)``."""
    classes = analysis.derived(Bindings).constructed_classes(func)
    ops = {_MODULE_OPS.get(cls) for cls in classes}
    return ops.pop() if len(ops) == 1 else None


def _op_through_name(node: ast.AST | None, analysis: ModuleAnalysis, depth: int = 0) -> str | None:
    """The op of a call, or of the value a name is bound to (``p = F.softmax(x)`` ... ``torch.log(p)``)."""
    if isinstance(node, ast.Name) and depth < _MAX_DEPTH:
        values = analysis.derived(Bindings).reaching_values(node)
        ops = {_op_through_name(value, analysis, depth + 1) for value in values}
        return ops.pop() if len(ops) == 1 else None
    return _op(node, analysis)


def _op_calls_through_name(node: ast.AST | None, analysis: ModuleAnalysis, depth: int = 0) -> list[ast.Call]:
    """The calls that make the value: the call itself, or the calls a name is bound to."""
    if isinstance(node, ast.Name) and depth < _MAX_DEPTH:
        found: list[ast.Call] = []
        for value in analysis.derived(Bindings).reaching_values(node):
            found += _op_calls_through_name(value, analysis, depth + 1)
        return found
    return [node] if isinstance(node, ast.Call) else []


def _computed_in_float32(call: ast.Call, op: str, analysis: ModuleAnalysis) -> bool:
    """The op's result is float32 where it runs: its input is (``x.float()``, a fresh tensor), or it is
    ``softmax`` / ``exp`` inside an enabled CUDA autocast region (this function's, or the one a call
    reaches it from), which runs them in float32 whatever their input. There the underflow needs logit
    gaps beyond about 100, as in a run without AMP. ``sigmoid`` keeps its input's dtype under autocast:
    float16 scores stay float16, and underflow below about -17."""
    subject = _subject(call, analysis)
    if subject is not None and analysis.derived(Fp16Values).full_precision(subject):
        return True
    if op not in ("softmax", "exp"):
        return False
    region = analysis.context(call).innermost_region
    return region is not None and region.may_be_enabled and not region.is_cpu


def _exp_argument(node: ast.AST, analysis: ModuleAnalysis) -> ast.AST | None:
    """``x`` of ``torch.exp(x)`` / ``x.exp()``, also through a name bound (only) to one."""
    if isinstance(node, ast.Name):
        values = analysis.derived(Bindings).reaching_values(node)
        node = values[0] if len(values) == 1 else node
    if call_name(node) != "exp" if isinstance(node, ast.Call) else True:
        return None
    if _op(node, analysis) != "exp":
        return None
    assert isinstance(node, ast.Call)
    return _subject(node, analysis)


def _subject(call: ast.Call, analysis: ModuleAnalysis) -> ast.AST | None:
    """The tensor an op works on: the first argument of a function, the receiver of a method."""
    func = call.func
    if isinstance(func, ast.Attribute) and analysis.resolve(func) is None:
        return func.value
    return call.args[0] if call.args else None


def _sums_an_exp(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call) and _op(inner, analysis) == "sum":
            summed = _subject(inner, analysis)
            if summed is not None and _exp_argument(summed, analysis) is not None:
                return True
    return False


def _log_argument(call: ast.Call, analysis: ModuleAnalysis) -> ast.AST | None:
    return _subject(call, analysis)


def _names_shifted_in_place(analysis: ModuleAnalysis) -> set[tuple[ast.AST | None, str]]:
    """(scope, name) of names shifted in place by a max: ``x.sub_(x.amax(-1, keepdim=True))``."""
    bindings = analysis.derived(Bindings)
    names = set()
    for call in analysis.calls_named("sub_"):
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and any(_mentions_max(arg) for arg in call.args)
        ):
            names.add((bindings.scope_of(call), func.value.id))
    return names


def _max_subtracted(exponent: ast.AST, analysis: ModuleAnalysis, shifted_in_place: set, depth: int = 0) -> bool:
    """``x - x.max(-1, keepdim=True).values``, ``x - torch.amax(x)``, ``x - logsumexp``, ``x - m`` with
    ``m = x.max(...)``, also through the bindings that reach a name (``x -= x.max(...)`` among them) or a
    name shifted in place."""
    if depth > _MAX_DEPTH:
        return False
    bindings = analysis.derived(Bindings)
    if isinstance(exponent, ast.Name):
        if (bindings.scope_of(exponent), exponent.id) in shifted_in_place:
            return True
        for binding in bindings.reaching(exponent):
            value = binding.value
            if isinstance(value, ast.AugAssign):
                if isinstance(value.op, ast.Sub) and _mentions_max(value.value):
                    return True
            elif value is not None and _max_subtracted(value, analysis, shifted_in_place, depth + 1):
                return True
        return False
    if isinstance(exponent, (ast.BinOp)) and isinstance(exponent.op, ast.Div):
        # (x - m) / T: a temperature does not undo the shift
        return _max_subtracted(exponent.left, analysis, shifted_in_place, depth + 1)
    if not (isinstance(exponent, ast.BinOp) and isinstance(exponent.op, ast.Sub)):
        return False
    if _mentions_max(exponent.right):
        return True
    return any(
        _mentions_max(value)
        for node in ast.walk(exponent.right)
        if isinstance(node, ast.Name)
        for value in bindings.reaching_values(node)
    )


def _mentions_max(node: ast.AST) -> bool:
    for inner in ast.walk(node):
        name = inner.attr if isinstance(inner, ast.Attribute) else inner.id if isinstance(inner, ast.Name) else None
        if name and any(marker in name.lower() for marker in _MAX_NAMES):
            return True
    return False


# ---------------------------------------------------------------------------------------------- the fix
_SOFTMAX_FUNCTIONS = frozenset({"torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"})


def _single_subject(call: ast.AST, analysis: ModuleAnalysis) -> ast.AST | None:
    """The tensor of ``torch.op(x)`` / ``x.op()`` when the call passes nothing else (no ``out=``)."""
    if not isinstance(call, ast.Call) or call.keywords:
        return None
    func = call.func
    if isinstance(func, ast.Attribute) and analysis.resolve(func) is None:
        return None if call.args or _instance_op(func, analysis) else func.value
    return call.args[0] if len(call.args) == 1 else None


def _stable_log(call: ast.Call, module: "FixableModule") -> str | None:
    """``log(softmax(x, dim))`` as ``log_softmax(x, dim)``; ``log(sigmoid(x))`` as ``F.logsigmoid(x)``."""
    analysis = module.analysis
    inner = _single_subject(call, analysis)
    if not isinstance(inner, ast.Call):
        return None  # through a name: the probability may be used elsewhere
    logits = sigmoid_input(inner, analysis)
    if logits is not None:
        logsigmoid = module.spelling("torch.nn.functional.logsigmoid")
        return f"{logsigmoid}({module.source(logits)})" if logsigmoid else None
    func = inner.func
    qualified = analysis.resolve(func)
    method = isinstance(func, ast.Attribute) and qualified is None and not _instance_op(func, analysis)
    if not (method and func.attr == "softmax" or qualified in _SOFTMAX_FUNCTIONS):  # type: ignore[union-attr]
        return None
    if isinstance(func, ast.Attribute):
        renamed = f"{module.source(func.value)}.log_softmax"
    else:
        renamed = module.spelling(qualified.replace("softmax", "log_softmax"))  # type: ignore[union-attr]
    return None if renamed is None else renamed + module.text[module.end(func) : module.end(inner)]


def _stable_softmax(division: ast.BinOp, module: "FixableModule") -> str | None:
    """``exp(x) / exp(x).sum(dim, keepdim=True)`` (or ``torch.sum(exp(x), dim, keepdim=True)``) as
    ``torch.softmax(x, dim=dim)``, where ``x`` is written the same in both and calls nothing."""
    analysis = module.analysis
    subject = _single_subject(division.left, analysis) if _op(division.left, analysis) == "exp" else None
    total = division.right
    if subject is None or any(isinstance(node, ast.Call) for node in ast.walk(subject)):
        return None
    if not isinstance(total, ast.Call) or _op(total, analysis) != "sum":
        return None
    function_form = analysis.resolve(total.func) is not None
    summed = total.args[0] if function_form and total.args else getattr(total.func, "value", None)
    rest = total.args[1:] if function_form else total.args
    keywords = {kw.arg: kw.value for kw in total.keywords}
    dim = rest[0] if rest else keywords.get("dim")
    keepdim = rest[1] if len(rest) > 1 else keywords.get("keepdim")
    if len(rest) > 2 or set(keywords) - {"dim", "keepdim"} or dim is None:
        return None
    several = isinstance(dim, (ast.Tuple, ast.List, ast.Set))
    if several or isinstance(dim, ast.Constant) and not isinstance(dim.value, int):
        return None  # a sum over several dimensions (or all): softmax takes one
    if not (isinstance(keepdim, ast.Constant) and keepdim.value is True):
        return None  # without keepdim the division broadcasts along another dimension
    if _op(summed, analysis) != "exp" or ast.dump(_single_subject(summed, analysis) or division) != ast.dump(subject):
        return None
    softmax = module.spelling("torch.softmax")
    return f"{softmax}({module.source(subject)}, dim={module.source(dim)})" if softmax else None
