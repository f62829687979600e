"""Recognising the objects of a training step: GradScalers, optimizers, tensor ``backward()`` calls,
and which branch of which ``if`` a call sits in.

A scaler is rarely constructed where it is used (``def train_one_epoch(model, loader, optimizer,
scaler)``), so besides names bound to a GradScaler constructor, any receiver ``S`` of the recipe's
unmistakable ``S.scale(loss).backward()`` counts as one.
"""

from __future__ import annotations

import ast
import re
from functools import cached_property

from .module_analysis import FunctionNode, ModuleAnalysis, call_name

_OPTIMIZER_NAME = re.compile(r"(^|_)(optim|optimizer|opt)\d*$|optimizer$", re.I)
# Objects whose .backward(loss) runs the whole mixed-precision recipe (or is not a tensor's backward).
_WRAPPER_NAME = re.compile(r"accelerator|fabric|engine|trainer|strategy|precision|deepspeed|scaler", re.I)

Branch = tuple[ast.AST, str]  # (an If / IfExp / loop / Try node, the field the node sits in)


def receiver_text(call: ast.Call) -> str | None:
    """``scaler`` for ``scaler.step(opt)``, ``self.scaler`` for ``self.scaler.update()``."""
    if isinstance(call.func, ast.Attribute):
        return ast.unparse(call.func.value)
    return None


class TrainingCalls:
    """Per-module facts about the training step. Use as ``analysis.derived(TrainingCalls)``."""

    def __init__(self, analysis: ModuleAnalysis) -> None:
        self.analysis = analysis

    @cached_property
    def scalers(self) -> frozenset[str]:
        """Source texts of the expressions that hold a GradScaler."""
        found = set()
        constructions = set(self.analysis.grad_scaler_constructions)
        if constructions:
            for key, values in self.analysis.assignments.items():
                if any(value in constructions for value in values):
                    found.add(key)
        for call in self.analysis.calls_named("backward"):
            # S.scale(loss).backward()
            if isinstance(call.func, ast.Attribute):
                inner = call.func.value
                if isinstance(inner, ast.Call) and call_name(inner) == "scale":
                    text = receiver_text(inner)
                    if text:
                        found.add(text)
        return frozenset(found)

    def is_scaler(self, node: ast.AST) -> bool:
        return ast.unparse(node) in self.scalers

    def scaler_method(self, call: ast.Call, *methods: str) -> str | None:
        """The scaler's text when ``call`` is ``<scaler>.<method>(...)`` for one of ``methods``."""
        if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
            text = ast.unparse(call.func.value)
            if text in self.scalers:
                return text
        return None

    def is_optimizer(self, node: ast.AST) -> bool:
        for qualified in self.analysis.constructed_classes(node):
            if qualified.startswith("torch.optim.") and ".lr_scheduler." not in qualified:
                return True
        identifier = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
        return bool(_OPTIMIZER_NAME.search(identifier))

    def is_tensor_backward(self, call: ast.Call) -> bool:
        """``loss.backward()``, ``scaler.scale(loss).backward()``; not ``accelerator.backward(loss)``,
        ``engine.backward(loss)`` or an extension module's ``backward``."""
        func = call.func
        if not isinstance(func, ast.Attribute) or func.attr != "backward":
            return False
        receiver = func.value
        if isinstance(receiver, ast.Call):
            return call_name(receiver) == "scale" or not _WRAPPER_NAME.search(ast.unparse(receiver.func))
        if self.analysis.resolve(receiver) is not None:
            return False  # an imported module's backward(): a custom op, not a tensor
        return not _WRAPPER_NAME.search(ast.unparse(receiver))

    def is_scaled_backward(self, call: ast.Call) -> bool:
        func = call.func
        return (
            isinstance(func, ast.Attribute)
            and func.attr == "backward"
            and isinstance(func.value, ast.Call)
            and self.scaler_method(func.value, "scale") is not None
        )


def branches(node: ast.AST, analysis: ModuleAnalysis) -> list[Branch]:
    """The conditional branches around ``node`` inside its function, outermost first: each enclosing
    ``if`` (with "body" or "orelse"), ``try`` handler and conditional expression."""
    path: list[Branch] = []
    child, parent = node, analysis.parents.get(node)
    while parent is not None and not isinstance(parent, (*FunctionNode, ast.Lambda, ast.ClassDef)):
        if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
            field = "body" if _within(child, parent.body) else "orelse"
            path.append((parent, field))
        elif isinstance(parent, ast.ExceptHandler):
            path.append((parent, "handler"))
        child, parent = parent, analysis.parents.get(parent)
    path.reverse()
    return path


def _within(child: ast.AST, block: list[ast.stmt] | ast.expr) -> bool:
    if isinstance(block, list):
        return any(child is statement for statement in block)
    return child is block


def mutually_exclusive(a: list[Branch], b: list[Branch]) -> bool:
    """Two branch paths that can never both run in one pass: opposite arms of the same ``if``."""
    arms = dict(a)
    return any(node in arms and arms[node] != field for node, field in b)
