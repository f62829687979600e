"""What a checkpoint holds: an optimizer's state, a GradScaler's state, or neither.

A checkpoint is whatever reaches ``torch.save``: a dict literal (``{"optimizer": opt.state_dict(), ...}``),
a dict built under a name in the same function (``ckpt = {...}``; ``ckpt["scaler"] = ...``;
``ckpt.update(...)``), a spread of another object's state (``{"epoch": e, **trainer.state_dict()}``),
the ``state_dict()`` of a class that says what its own holds, or what a helper returns
(``torch.save(make_checkpoint(model, opt), path)``); the last two are read off the class's or helper's
summary, in this module or another.
"""

from __future__ import annotations

import ast
import re

from .bindings import Bindings
from .module_analysis import ModuleAnalysis, binding_key
from .training_calls import TrainingCalls

States = dict  # {"optimizer": bool, "scaler": bool}
# The names under which code keeps a GradScaler or its state (`"amp_state": amp_scaler.state_dict()`).
_SCALER_WORDS = re.compile(r"scaler|(?<![a-z])amp(?![a-z])|loss_scale", re.I)
_MAX_DEPTH = 4


def checkpoint_states(obj: ast.AST, analysis: ModuleAnalysis, depth: int = 0) -> States | None:
    """Which states ``obj`` holds, or None when the source does not show what it is."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(obj, ast.Dict):
        return _merge(_pair_states(key, value, analysis, depth) for key, value in zip(obj.keys, obj.values))
    if isinstance(obj, ast.Name):
        return _named_dict_states(obj, analysis, depth)
    if isinstance(obj, ast.Call):
        return _call_states(obj, analysis, depth)
    return None


def _pair_states(key: ast.AST | None, value: ast.AST, analysis: ModuleAnalysis, depth: int) -> States:
    if key is None:  # {**other}
        return checkpoint_states(value, analysis, depth + 1) or {"optimizer": False, "scaler": False}
    named_scaler = isinstance(key, ast.Constant) and isinstance(key.value, str) and bool(_SCALER_WORDS.search(key.value))
    found = _value_states(value, analysis)
    return {"optimizer": found["optimizer"], "scaler": found["scaler"] or named_scaler}


def _value_states(value: ast.AST, analysis: ModuleAnalysis) -> States:
    """A ``<owner>.state_dict()`` among the value's calls, by what the owner is."""
    training = analysis.derived(TrainingCalls)
    found = {"optimizer": False, "scaler": False}
    for node in ast.walk(value):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "state_dict":
            owner = node.func.value
            if training.is_scaler(owner) or _SCALER_WORDS.search(_identifier(owner)):
                found["scaler"] = True
            elif training.is_optimizer(owner):
                found["optimizer"] = True
    return found


def _named_dict_states(name: ast.Name, analysis: ModuleAnalysis, depth: int) -> States | None:
    """``ckpt = {...}`` in the function that saves it, with what is added under ``ckpt[...] = ...`` and
    ``ckpt.update(...)`` in the same function."""
    bindings = analysis.derived(Bindings)
    values = bindings.reaching_values(name)
    if not values:
        return None
    found = [checkpoint_states(value, analysis, depth + 1) for value in values]
    if any(states is None for states in found):
        return None
    function = bindings.scope_of(name)
    extra = []
    for assign in analysis.nodes(ast.Assign):
        target = assign.targets[0]
        if (
            isinstance(target, ast.Subscript)
            and binding_key(target.value) == name.id
            and bindings.scope_of(assign) is function
        ):
            extra.append(_pair_states(target.slice, assign.value, analysis, depth))
    for call in analysis.calls_named("update"):
        if not isinstance(call.func, ast.Attribute):
            continue  # a function of the module named update(), not ckpt.update(...)
        receiver = call.func.value
        if binding_key(receiver) == name.id and bindings.scope_of(call) is function and call.args:
            extra.append(checkpoint_states(call.args[0], analysis, depth + 1) or {"optimizer": False, "scaler": False})
    return _merge([*found, *extra])  # type: ignore[list-item]


def _call_states(call: ast.Call, analysis: ModuleAnalysis, depth: int) -> States | None:
    from .summaries import LOCAL, Summaries

    summaries = analysis.derived(Summaries)
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "state_dict":
        owner = func.value
        direct = _value_states(call, analysis)
        if direct["scaler"] or direct["optimizer"]:
            return direct
        facts = _instance_class_facts(owner, summaries)
        if not facts or facts.get("state_dict") is None:
            return None
        return {**facts["state_dict"], "scaler_owned": bool(facts.get("owns_scaler"))}
    if isinstance(func, ast.Name) and func.id == "dict":
        return _merge(_pair_states(ast.Constant(kw.arg) if kw.arg else None, kw.value, analysis, depth) for kw in call.keywords)
    reference = summaries.call_reference(call)
    if reference is None:
        return None
    for target in summaries.local_targets(reference):
        return summaries.returned_states(target)
    if reference.startswith(LOCAL) or analysis.project is None or not analysis.path:
        return None
    facts = analysis.project.function_facts(analysis.path, reference)
    return facts.get("returns_states") if facts else None


def _instance_class_facts(owner: ast.AST, summaries) -> dict | None:
    """The class facts of the object ``owner`` holds (``trainer = Trainer(...)``, ``self``)."""
    from .summaries import LOCAL

    analysis = summaries.analysis
    if isinstance(owner, ast.Name) and owner.id == "self":
        cls = summaries._enclosing_class(owner)
        return summaries.class_facts(cls) if cls is not None else None
    reference = summaries._instance_class(owner)
    if reference is None:
        return None
    if reference.startswith(LOCAL):
        cls = summaries.definitions.get(reference[len(LOCAL) :])
        return summaries.class_facts(cls) if isinstance(cls, ast.ClassDef) else None
    if analysis.project is None or not analysis.path:
        return None
    return analysis.project.class_facts(analysis.path, reference)


def _identifier(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _merge(parts) -> States:
    merged = {"optimizer": False, "scaler": False}
    for states in parts:
        if states is None:
            continue
        for name, value in states.items():
            merged[name] = merged.get(name, False) or value
    return merged
