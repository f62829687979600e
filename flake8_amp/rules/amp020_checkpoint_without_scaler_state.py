"""AMP020: a checkpoint with the optimizer's state but not the GradScaler's."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Iterator

from ..analysis.bindings import Bindings, parameter_names
from ..analysis.checkpoints import checkpoint_states
from ..analysis.control_flow import ControlFlow
from ..analysis.module_analysis import ModuleAnalysis, call_name
from ..analysis.source_text import excerpt
from ..analysis.summaries import LOCAL, SCALER_CLASS_NAMES, Summaries
from ..analysis.torch_api import GRAD_SCALER_OWNERS
from ..analysis.training_calls import TrainingCalls
from ..fixes.edits import Edit, Fix, FixSafety
from ..runtime.evidence import LineEvidence, RunEvidence, Outcome, Verdict, fmt
from .base import Finding, Rule, Severity

if TYPE_CHECKING:
    from ..fixes.source import FixableModule


class CheckpointWithoutScalerState(Rule):
    code = "AMP020"
    name = "checkpoint-without-scaler-state"
    severity = Severity.LOW
    summary = "A checkpoint (torch.save, a state_dict()) with an optimizer's state but not the GradScaler's"
    why = "a resumed run restarts the loss scale at 65536 and skips steps until it has shrunk again"
    fix = "save scaler.state_dict() with the optimizer's and load it on resume"

    fix_safety = FixSafety.SAFE
    fix_summary = (
        "adds `\"scaler\": scaler.state_dict()` after the optimizer's entry of the checkpoint dict (written in "
        "the `torch.save` call, bound to a name just before it, or returned by `state_dict()`), naming the "
        "GradScaler in scope there: a parameter or local, a module-level name, or `self.<attribute>`."
    )
    fix_safety_reason = (
        "The checkpoint gains a key, and code that reads a checkpoint reads its keys by name. The resume "
        "side is left to you: `scaler.load_state_dict(checkpoint[\"scaler\"])`. Not fixed where no single "
        "GradScaler is in scope, or where the checkpoint is not a dict written there (a helper's result, an "
        "inherited `state_dict()`)."
    )

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        analysis = module.analysis
        node = finding.node
        checkpoint = _checkpoint_dict(node, analysis)
        index = _optimizer_entry(checkpoint, analysis) if checkpoint is not None else None
        scaler = _scaler_in_scope(checkpoint, analysis) if checkpoint is not None and index is not None else None
        if checkpoint is None or index is None or scaler is None:
            return None
        return Fix((_with_scaler_entry(checkpoint, index, f"{scaler}.state_dict()", module),))

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        # A resume from this checkpoint restarts the loss scale at its initial value: confirmed when a save
        # without the scaler's state happened while the scale was elsewhere.
        saves = evidence.calls_of("save")
        if not saves:
            # a state_dict() method or a dict built here and saved elsewhere: what reaches the file is not seen
            return Verdict(Outcome.NOT_CHECKABLE, f"the line ran {evidence.executions} times but calls no torch.save "
                                                  "itself: what is saved happens elsewhere")
        missing = [c for c in saves if not c.detail]
        if not missing:
            return Verdict(Outcome.NOT_OBSERVED, f"{len(saves)} saves, each with a GradScaler's state")
        if not run.scaler_enabled:
            return Verdict(Outcome.NOT_OBSERVED, f"{len(saves)} saves; the GradScaler was disabled in this run")
        initial = run.scales[0] if run.scales else None
        moved = [c for c in missing if c.scale is not None and initial is not None and c.scale != initial]
        if moved:
            call = moved[0]
            return Verdict(Outcome.CONFIRMED, f"step {call.step}: torch.save wrote a checkpoint without the "
                                              f"GradScaler's state at loss scale {fmt(call.scale)}: a resume "
                                              f"restarts at {fmt(initial)} ({len(moved)} of {len(saves)} saves)")
        where = f"its initial {fmt(initial)}" if initial is not None else "its initial value (no update() yet)"
        return Verdict(Outcome.NOT_OBSERVED, f"{len(missing)} saves without the GradScaler's state, but the loss scale "
                                             f"was still at {where} at each: a resume restarts at the same scale "
                                             "(only the growth tracker is lost)")

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        yield from self._saved_checkpoints(analysis)
        yield from self._state_dict_methods(analysis)
        yield from self._checkpoint_helpers(analysis)

    def _checkpoint_helpers(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        """A call, in a module that uses a GradScaler, to a helper of another module (one without a
        scaler) that saves a checkpoint with the optimizer's state, handed no scaler: VITS's
        ``utils.save_checkpoint(net_g, optim_g, lr, epoch, path)``."""
        training = analysis.derived(TrainingCalls)
        if not (training.uses_grad_scaler or training.scalers) or analysis.project is None:
            return
        summaries = analysis.derived(Summaries)
        reported: set[tuple[ast.AST | None, str]] = set()
        for call in analysis.calls:
            reference = summaries.call_reference(call)
            if reference is None or reference.startswith(LOCAL):
                continue
            key = (analysis.context(call).function, reference)
            if key in reported:
                continue  # the generator's checkpoint and the discriminator's: one helper to fix
            facts = summaries.callee_facts(call)
            if not facts or not facts.get("saves_optimizer_without_scaler"):
                continue
            arguments = [*call.args, *(kw.value for kw in call.keywords)]
            if any(training.is_scaler(arg) or "scaler" in excerpt(arg).lower() for arg in arguments):
                continue  # the scaler is handed over: the helper may save it under its own key
            reported.add(key)
            yield self.finding(
                call,
                f"{call_name(call)}() saves a checkpoint with the optimizer state but not the GradScaler's",
                fix="hand the scaler to it and save scaler.state_dict() with the optimizer's (load it on resume)",
            )

    def _saved_checkpoints(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        training = analysis.derived(TrainingCalls)
        # a GradScaler built here, or one handed in that the module uses (`scaler.scale(loss).backward()`,
        # `scaler.unscale_(optimizer)`): the trainer of a project that builds it in main.py
        uses_scaler = training.uses_grad_scaler or bool(training.scalers) or bool(analysis.calls_to(GRAD_SCALER_OWNERS))
        reported: set[tuple[ast.AST | None, str]] = set()
        saves = [(call, saved, checkpoint_states(saved, analysis)) for call, saved in _saves(analysis, uses_scaler)]
        # A checkpoint may be a folder of files (transformers' Trainer writes optimizer.pt and, beside it,
        # scaler.pt): the scaler's state saved by the same function, on a pass the optimizer's save can
        # share, is saved with it.
        scaler_saves = [call for call, _, states in saves if states is not None and states["scaler"]]
        flow = analysis.derived(ControlFlow) if scaler_saves else None
        for call, saved, states in saves:
            if states is None or not states["optimizer"] or states["scaler"]:
                continue
            # The same checkpoint dict saved to several paths (last.pt, best.pt) is one finding.
            function = analysis.context(call).function
            key = (function, excerpt(saved, limit=None))
            if key in reported:
                continue
            if flow is not None and any(
                analysis.context(other).function is function and flow.may_share_a_pass(call, other)
                for other in scaler_saves
            ):
                continue
            if uses_scaler or states.get("scaler_owned"):
                reported.add(key)
                yield self.finding(call, "checkpoint saves the optimizer state but not the GradScaler's")

    def _state_dict_methods(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        """A class that owns a GradScaler and whose ``state_dict()``, its own or the one it inherits,
        leaves it out."""
        if not analysis.calls_named(*SCALER_CLASS_NAMES):
            return  # no class here builds a GradScaler
        summaries = analysis.derived(Summaries)
        for cls in analysis.nodes(ast.ClassDef):
            if not summaries.owns_scaler(cls):
                continue
            facts = summaries.class_facts(cls)
            states = facts["state_dict"]
            if not (facts["owns_scaler"] and states is not None and states["optimizer"] and not states["scaler"]):
                continue
            if facts["inherits_state_dict"]:
                yield self.finding(
                    cls,
                    f"{cls.name} owns a GradScaler, but the state_dict() it inherits holds only the optimizer state",
                    fix="override state_dict() / load_state_dict() to include the scaler's state",
                )
            else:
                yield self.finding(
                    summaries.method(cls, "state_dict"),  # type: ignore[arg-type]
                    f"{cls.name}.state_dict() holds the optimizer state but not the GradScaler's it owns",
                    fix="add the scaler's state_dict() to it (and load it in load_state_dict)",
                )


def _saves(analysis: ModuleAnalysis, helpers: bool) -> list[tuple[ast.Call, ast.expr]]:
    """(call, the object it saves): ``torch.save(obj, path)``; and, with ``helpers`` (in a module with a
    GradScaler, where a checkpoint without its state matters), a call handing ``obj`` to a function of
    the project that passes that parameter to ``torch.save`` (YOLOX's ``save_checkpoint(ckpt_state,
    is_best, save_dir, name)``)."""
    found = [(call, call.args[0]) for call in analysis.calls_to({"torch.save"}) if call.args]
    if not helpers:
        return found
    summaries = analysis.derived(Summaries)
    for call in analysis.calls:
        if not call.args or analysis.resolve(call.func) == "torch.save":
            continue
        facts = summaries.callee_facts(call)
        for position in (facts or {}).get("saved_parameters") or ():
            if position < len(call.args):
                found.append((call, call.args[position]))
    return found


# ---------------------------------------------------------------------------------------------- the fix
def _checkpoint_dict(node: ast.AST, analysis: ModuleAnalysis) -> ast.Dict | None:
    """The dict literal the finding's checkpoint is: ``torch.save({...}, path)``, ``ckpt = {...}`` saved in
    the same function, or what a ``state_dict()`` method returns."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
        value = returns[0].value if len(returns) == 1 else None
        return value if isinstance(value, ast.Dict) else None
    if not isinstance(node, ast.Call) or analysis.resolve(node.func) != "torch.save" or not node.args:
        return None
    saved = node.args[0]
    if isinstance(saved, ast.Name):
        values = analysis.derived(Bindings).reaching_values(saved)
        saved = values[0] if len(values) == 1 else saved
    return saved if isinstance(saved, ast.Dict) else None


def _scaler_in_scope(node: ast.AST, analysis: ModuleAnalysis) -> str | None:
    """The expression holding the GradScaler that code at ``node`` (the checkpoint dict) trains with,
    nearest first: the ``self.<attribute>`` its class binds, else a parameter or local of its function,
    else a module-level name it does not shadow (bound before it, at the top level); None where the nearest
    kind has none or several."""
    function = analysis.context(node).function
    bindings = analysis.derived(Bindings)
    node_position = (node.lineno, 0)  # type: ignore[attr-defined]
    owned, local, module_level = set(), set(), set()
    for text in analysis.derived(TrainingCalls).scalers:
        found = bindings.bindings_of(text)
        if text.startswith("self."):
            if function is not None and _method_of_class_binding(function, text, bindings, analysis):
                owned.add(text)
        elif not text.isidentifier():
            continue
        elif function is not None and (text in parameter_names(function) or any(b.scope is function for b in found)):
            local.add(text)
        elif any(b.scope is None and (function is not None or b.position < node_position) for b in found):
            module_level.add(text)
    nearest = next((tier for tier in (owned, local, module_level) if tier), set())
    return nearest.pop() if len(nearest) == 1 else None


def _method_of_class_binding(function: ast.AST, key: str, bindings: Bindings, analysis: ModuleAnalysis) -> bool:
    """``function`` is a method of a class that binds ``self.<attribute>`` (``key``) in one of its methods."""
    owner = analysis.parents.get(function)
    if not isinstance(owner, ast.ClassDef):
        return False
    for binding in bindings.bindings_of(key):
        method = analysis.context(binding.statement).function
        if method is not None and analysis.parents.get(method) is owner:
            return True
    return False


def _optimizer_entry(checkpoint: ast.Dict, analysis: ModuleAnalysis) -> int | None:
    """The index of the ``<optimizer>.state_dict()`` entry in a dict without ``**`` entries (a spread
    object's missing scaler state is its own class's to add), or None."""
    if None in checkpoint.keys:
        return None
    training = analysis.derived(TrainingCalls)
    for index, entry in enumerate(checkpoint.values):
        func = entry.func if isinstance(entry, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "state_dict" and training.is_optimizer(func.value):
            return index
    return None


def _with_scaler_entry(checkpoint: ast.Dict, index: int, value: str, module: "FixableModule") -> Edit:
    """``"scaler": <value>`` inserted after the entry at ``index``, one entry a line or inline as the dict
    is written, in the quotes its keys use."""
    quote = next((module.source(key)[0] for key in checkpoint.keys if isinstance(key, ast.Constant)), '"')
    quote = quote if quote in "'\"" else '"'
    entry = f"{quote}scaler{quote}: {value}"
    key = checkpoint.keys[index]
    end = module.end(checkpoint.values[index])
    indentation = module.indentation(key)  # type: ignore[arg-type]
    if indentation is None:
        return Edit(end, end, f", {entry}")
    line_end = re.search(r"[\r\n]|$", module.text[end:]).start() + end  # type: ignore[union-attr]
    rest = module.text[end:line_end]  # `,  # a comment` after the entry stays on its line
    if rest.lstrip(" \t").startswith(","):
        return Edit(line_end, line_end, f"{module.newline}{indentation}{entry},")
    return Edit(end, end, f",{module.newline}{indentation}{entry}")
