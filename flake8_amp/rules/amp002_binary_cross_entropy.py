"""AMP002: binary_cross_entropy / BCELoss where it runs under autocast, which refuses to run it."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from ..analysis.bindings import Bindings
from ..analysis.losses import sigmoid_input
from ..analysis.module_analysis import ModuleAnalysis, binding_key
from ..analysis.summaries import Summaries
from ..fixes.edits import Edit, Fix, FixSafety
from ..runtime.evidence import LineEvidence, Outcome, Probe, RunEvidence, Verdict, crashed_here, fmt
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule

_UNSAFE = {
    "torch.nn.functional.binary_cross_entropy": "binary_cross_entropy",
    "torch.nn.BCELoss": "BCELoss",
}
_UNSAFE_NAMES = frozenset(_UNSAFE.values())
# Frameworks that turn autocast on from configuration and run the hooks of their classes under it:
# Lightning's training_step (Trainer(precision="16-mixed")), speechbrain's compute_forward and
# compute_objectives (Brain with precision fp16/bf16). The base classes whose methods run so:
_AUTOCASTING_BASES = re.compile(r"(^|\.)(LightningModule|Brain)$")
_SAFE_REPLACEMENT = {
    "binary_cross_entropy": "F.binary_cross_entropy_with_logits on the logits (drop the sigmoid)",
    "BCELoss": "nn.BCEWithLogitsLoss on the logits (drop the sigmoid)",
}


class BinaryCrossEntropy(Rule):
    code = "AMP002"
    name = "unsafe-binary-cross-entropy"
    severity = Severity.HIGH
    summary = "binary_cross_entropy / BCELoss where it runs under autocast, which raises on CUDA"
    why = "torch refuses to autocast binary_cross_entropy: the forward raises a RuntimeError under CUDA autocast"
    fix = "use binary_cross_entropy_with_logits / BCEWithLogitsLoss on logits"

    probes = frozenset({Probe.SATURATION})

    fix_safety = FixSafety.UNSAFE
    fix_summary = (
        "replaces `BCELoss` with `BCEWithLogitsLoss` (`binary_cross_entropy` with "
        "`binary_cross_entropy_with_logits`) and hands it the logits the sigmoid was applied to: "
        "`criterion(torch.sigmoid(x), y)` becomes "
        "`criterion(x, y)`; a probability bound to a name (`probs = torch.sigmoid(x)`) and read only by the "
        "loss is bound to the logits instead, renamed `logits` (from `probs`) where that name is free."
    )
    fix_safety_reason = (
        "The loss is the same function, computed stably in float32, but its values differ where the "
        "sigmoid saturated (BCELoss clamps its log at -100, the fused loss does not), so the training does "
        "too. Only where the sigmoid feeds nothing but the loss: a `BCELoss` instance whose every use is a "
        "call given a sigmoid, and a sigmoid's result read by that call alone."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        edits = _logits_loss_edits(finding.node, module)
        return Fix(tuple(edits), FixSafety.UNSAFE) if edits else None

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # The error CUDA autocast raises; on CPU (which runs it in float32) float16 probabilities that
        # saturated to exactly 0 or 1, where the log is clamped at -100. A later crash (the NaN that a
        # saturated probability's gradient spreads) is reported after the saturation that caused it.
        refused = [e for e in evidence.errors if "unsafe to autocast" in e.message]
        if refused:
            return crashed_here(replace(evidence, errors=refused))  # type: ignore[return-value]
        bce = evidence.ops.get("binary_cross_entropy")
        if bce is None or not bce.calls:
            return crashed_here(evidence) or Verdict(
                Outcome.NOT_REACHED, f"created ({evidence.executions} runs) but binary_cross_entropy never ran")
        where = f"{bce.calls} calls, {bce.under_autocast} under autocast"
        if bce.saturated:
            crash = crashed_here(evidence)
            then = f"; then {crash.evidence}" if crash is not None else ""
            return Verdict(Outcome.CONFIRMED, f"{where}: {bce.saturated} of {bce.probabilities} float16/bfloat16 "
                                              f"probabilities were exactly 0 or 1 (log clamped to -100){then}")
        verdict = crashed_here(evidence)
        if verdict is not None:
            return verdict
        low = sorted(bce.input_dtypes & {"float16", "bfloat16"})
        if low:
            closest = bce.saturation_margin
            margin = f", the closest {fmt(closest)} from 0 or 1" if math.isfinite(closest) else ""
            inputs = f"{'/'.join(low)} probabilities, none saturated{margin}"
        else:
            inputs = "float32 probabilities"
        return Verdict(Outcome.NOT_OBSERVED, f"{where} ({inputs}); CUDA autocast raises on this call")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        aliases = analysis.imports.local_names_for(set(_UNSAFE))
        candidates = [n for n in analysis.nodes(ast.Name) if n.id in aliases]
        candidates += [n for n in analysis.nodes(ast.Attribute) if n.attr in _UNSAFE_NAMES]
        candidates = [n for n in candidates if isinstance(n.ctx, ast.Load) and analysis.resolve(n) in _UNSAFE]
        if not candidates:
            return
        for node in sorted(candidates, key=lambda n: (n.lineno, n.col_offset)):  # type: ignore[attr-defined]
            short = _UNSAFE[analysis.resolve(node)]  # type: ignore[index]
            where = _runs_under_autocast(node, short, analysis)
            if where is None and _in_a_framework_hook(node, analysis):
                where = ""
            if where is not None:
                yield self.finding(node, f"{short} is unsafe to autocast{where or ''}", fix=f"use {_SAFE_REPLACEMENT[short]}")


def _runs_under_autocast(node: ast.AST, short: str, analysis: ModuleAnalysis) -> str | None:
    """None, or "" (or, where only a caller shows it, why) when the loss runs under autocast. Where the loss is computed: its call (``F.binary_cross_entropy(p, y)``), or, for ``BCELoss``, the
    calls of the instance, in an enabled autocast region (this module's, or the one its function is
    called in). A function object or instance handed elsewhere (``loss_fn=F.binary_cross_entropy``,
    ``train(model, criterion)``) may be called anywhere: it counts where the module uses autocast."""
    parent = analysis.parents.get(node)
    if short == "binary_cross_entropy":
        if isinstance(parent, ast.Call) and parent.func is node:
            return _in_enabled_region(parent, analysis)
        return _module_runs_autocast(analysis)
    # nn.BCELoss: find where the instance is called
    if not (isinstance(parent, ast.Call) and parent.func is node):
        return _module_runs_autocast(analysis)
    construction = parent
    holder = analysis.parents.get(construction)
    if isinstance(holder, ast.Call) and holder.func is construction:
        return _in_enabled_region(holder, analysis)  # nn.BCELoss()(p, y)
    if not _bound_keys(construction, analysis):
        return _module_runs_autocast(analysis)
    bindings = analysis.derived(Bindings)
    owner = _enclosing_class(construction, bindings)
    statement = analysis.parents[construction]
    for binding in bindings.made_by(statement):
        for read in bindings.reads_reached_by(binding):
            if binding.key.startswith("self.") and _enclosing_class(read, bindings) is not owner:
                continue  # another class's attribute of the same name
            read_parent = analysis.parents.get(read)
            if isinstance(read_parent, ast.Call) and read_parent.func is read:
                where = _in_enabled_region(read_parent, analysis)
                if where is not None:
                    return where
            elif not isinstance(read_parent, ast.Attribute) and _module_runs_autocast(analysis) is not None:
                return ""  # handed elsewhere: it may be called under autocast there
    return None


def _in_a_framework_hook(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    """In a method of a LightningModule or a speechbrain Brain, which their frameworks run under
    autocast when a mixed precision is configured."""
    cls = _enclosing_class(node, analysis.derived(Bindings))
    if not isinstance(cls, ast.ClassDef):
        return False
    return any(
        _AUTOCASTING_BASES.search(analysis.resolve(base) or getattr(base, "attr", getattr(base, "id", "")))
        for base in cls.bases
    )


def _enclosing_class(node: ast.AST, bindings: Bindings) -> ast.AST | None:
    scope = bindings.scope_of(node)
    while scope is not None and not isinstance(scope, ast.ClassDef):
        scope = bindings.scope_of(scope)
    return scope


def _in_enabled_region(node: ast.AST, analysis: ModuleAnalysis) -> str | None:
    region = analysis.context(node).innermost_region
    return region.reason() if region is not None and region.may_be_enabled else None


def _module_runs_autocast(analysis: ModuleAnalysis) -> str | None:
    return "" if analysis.uses_autocast or analysis.derived(Summaries).runs_under_autocast else None


def _bound_keys(construction: ast.Call, analysis: ModuleAnalysis) -> list[str]:
    statement = analysis.parents.get(construction)
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        return [key for target in targets if (key := binding_key(target))]
    return []


# ---------------------------------------------------------------------------------------------- the fix
_WITH_LOGITS = {
    "binary_cross_entropy": "torch.nn.functional.binary_cross_entropy_with_logits",
    "BCELoss": "torch.nn.BCEWithLogitsLoss",
}


def _logits_loss_edits(node: ast.AST, module: "FixableModule") -> list[Edit] | None:
    """The loss reference renamed to its with-logits twin, and every call of it given the logits instead
    of their sigmoid; None where some use of it cannot be rewritten so."""
    analysis = module.analysis
    short = _UNSAFE.get(analysis.resolve(node) or "")
    construction = analysis.parents.get(node)
    if short is None or not (isinstance(construction, ast.Call) and construction.func is node):
        return None  # handed elsewhere (`loss_fn=F.binary_cross_entropy`): its calls are not here to fix
    if isinstance(node, ast.Attribute):
        renamed = f"{module.source(node.value)}.{_WITH_LOGITS[short].rpartition('.')[2]}"
    else:
        renamed = module.spelling(_WITH_LOGITS[short])
    if renamed is None:
        return None
    edits = [module.replace(node, renamed)]
    if short == "binary_cross_entropy":
        calls = [construction]
    else:
        calls = _instance_calls(construction, analysis)
    for call in calls or []:
        logits = _logits_edits(call, module)
        if logits is None:
            return None
        edits += logits
    return edits if calls else None


def _instance_calls(construction: ast.Call, analysis: ModuleAnalysis) -> list[ast.Call] | None:
    """The calls of a ``BCELoss()`` instance: ``nn.BCELoss()(p, y)``, or every read of the name it is bound
    to, each a call, reached by that binding alone; None when any is not."""
    holder = analysis.parents.get(construction)
    if isinstance(holder, ast.Call) and holder.func is construction:
        return [holder]
    statement = analysis.parents.get(construction)
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1 and statement.value is construction):
        return None
    bindings = analysis.derived(Bindings)
    calls = []
    for binding in bindings.made_by(statement):
        for read in bindings.reads_reached_by(binding):
            call = analysis.parents.get(read)
            if not (isinstance(call, ast.Call) and call.func is read) or bindings.reaching(read) != [binding]:
                return None
            calls.append(call)
    return calls or None


def _logits_edits(call: ast.Call, module: "FixableModule") -> list[Edit] | None:
    """The loss call's first argument made the logits: ``sigmoid(x)`` written there, or a name bound to one
    and read by this call alone (renamed ``logits`` from ``probs`` where that name is free)."""
    analysis = module.analysis
    if not call.args:
        return None
    argument = call.args[0]
    logits = sigmoid_input(argument, analysis)
    if logits is not None:
        return [module.replace(argument, module.source(logits))]
    if not isinstance(argument, ast.Name):
        return None
    bindings = analysis.derived(Bindings)
    reaching = bindings.reaching(argument)
    if len(reaching) != 1 or bindings.reads_reached_by(reaching[0]) != [argument]:
        return None
    statement = reaching[0].statement
    logits = sigmoid_input(reaching[0].value, analysis) if reaching[0].value is not None else None
    if logits is None or not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
        return None
    target = statement.targets[0]
    if not isinstance(target, ast.Name):
        return None
    name = _logits_name(target.id, bindings.scope_of(statement), analysis)
    value = module.replace(reaching[0].value, module.source(logits))
    return [module.replace(target, name), value, module.replace(argument, name)]


def _logits_name(name: str, scope: ast.AST | None, analysis: ModuleAnalysis) -> str:
    """``probs`` -> ``logits``, ``pred_prob`` -> ``pred_logit``, where the new name is unused in the scope;
    else the name as it is."""
    renamed = re.sub(r"prob(?=s?$|s?_)", "logit", name)
    if renamed == name:
        return name
    bindings = analysis.derived(Bindings)
    used = bindings.reads_of(renamed) or any(b.scope is scope for b in bindings.bindings_of(renamed))
    return name if used else renamed
