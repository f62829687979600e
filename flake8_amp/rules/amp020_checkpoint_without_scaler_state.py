"""AMP020: a checkpoint with the optimizer's state but not the GradScaler's."""

from __future__ import annotations

import ast
from typing import Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..analysis.training_calls import TrainingCalls
from .base import Finding, Rule, Severity


class CheckpointWithoutScalerState(Rule):
    code = "AMP020"
    name = "checkpoint-without-scaler-state"
    severity = Severity.LOW
    summary = "torch.save of an optimizer state_dict() without the GradScaler's"
    why = "a resumed run restarts the loss scale at 65536 and skips steps until it has shrunk again"
    fix = "save scaler.state_dict() with the optimizer's and load it on resume"

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        if not analysis.uses_grad_scaler:
            return
        training = analysis.derived(TrainingCalls)
        reported: set[tuple[ast.AST | None, str]] = set()
        for call in analysis.calls_to({"torch.save"}):
            if not call.args:
                continue
            # The same checkpoint dict saved to several paths (last.pt, best.pt) is one finding.
            key = (analysis.context(call).function, ast.unparse(call.args[0]))
            if key in reported:
                continue
            parts = _checkpoint_parts(call.args[0], call, analysis)
            if parts is None:
                continue
            if _holds_state_of(parts, training.is_optimizer, None) and not _holds_state_of(parts, training.is_scaler, "scaler"):
                reported.add(key)
                yield self.finding(call, "checkpoint saves the optimizer state but not the GradScaler's")


def _checkpoint_parts(obj: ast.expr, save: ast.Call, analysis: ModuleAnalysis) -> list[tuple[ast.expr | None, ast.expr]] | None:
    """(key, value) pairs of a dict literal, or of a dict built in the same function under a name
    (``ckpt = {...}``; ``ckpt["scaler"] = scaler.state_dict()``)."""
    if isinstance(obj, ast.Dict):
        return list(zip(obj.keys, obj.values))
    if not isinstance(obj, ast.Name):
        return None
    function = analysis.context(save).function
    parts: list[tuple[ast.expr | None, ast.expr]] = []
    found = False
    for value in analysis.bound_values(obj):
        if isinstance(value, ast.Dict) and analysis.context(value).function is function:
            parts += list(zip(value.keys, value.values))
            found = True
    for assign in analysis.nodes(ast.Assign):
        target = assign.targets[0]
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == obj.id
            and analysis.context(assign).function is function
        ):
            parts.append((target.slice, assign.value))
    return parts if found else None


def _holds_state_of(parts, is_owner, key_word: str | None) -> bool:
    """A ``<owner>.state_dict()`` among the values, or (with ``key_word``) a key that names the owner."""
    for key, value in parts:
        if key_word and isinstance(key, ast.Constant) and isinstance(key.value, str) and key_word in key.value.lower():
            return True
        for node in ast.walk(value):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "state_dict"
                and is_owner(node.func.value)
            ):
                return True
    return False
