"""Which calls compute a loss."""

from __future__ import annotations

import ast
import re

from .bindings import Bindings
from .module_analysis import ModuleAnalysis, call_name
from .torch_api import LOSS_FUNCTIONS

# Names people give loss callables: criterion, loss_fn, loss_func, loss_fct, ce_loss, mlm_criterion ...
_LOSS_CALLABLE_NAME = re.compile(r"^(criterion|loss|loss_?fn|loss_?func(tion)?|loss_?fct|.+_loss|.+_criterion)$", re.I)
# Names of loss definitions: `def focal_loss(...)`, `class DiceLoss(nn.Module)`, `class SSIMCriterion`.
_LOSS_DEFINITION_NAME = re.compile(r"(^|_)loss$|Loss$|Criterion$|(^|_)criterion$")
SIGMOID_FUNCTIONS = frozenset({"torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit"})


def is_loss_call(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """A torch loss function, an ``nn.*Loss`` instance, a function this module or the project defines
    that returns a loss (``kd_loss_soft(out, soft)``, whatever its name), or, when the source does not
    show what the callee is (a parameter, another package), a callable named like a loss. A function the
    project defines is judged by what it returns, never by its name: ``compute_loss_weighting(...)`` is
    no loss."""
    qualified = analysis.resolve(call.func)
    if qualified is not None and qualified.startswith("torch."):
        return qualified.rpartition(".")[2] in LOSS_FUNCTIONS
    if any(_is_torch_loss_class(cls) for cls in analysis.derived(Bindings).constructed_classes(call.func)):
        return True
    from .summaries import Summaries  # summaries ask which calls are losses in turn

    summaries = analysis.derived(Summaries)
    facts = summaries.callee_facts(call)
    if facts is not None:
        # What the definition returns, or what its author named it: `class FocalLoss(nn.Module)`.
        defined = (summaries.call_reference(call) or "").removesuffix(".__call__").rpartition(".")[2]
        named = bool(_LOSS_DEFINITION_NAME.search(defined)) and not _orchestration(defined) and not facts.get("trains")
        return bool(facts.get("computes_loss")) or named
    name = call_name(call)
    return name is not None and bool(_LOSS_CALLABLE_NAME.match(name)) and not _orchestration(name)


def _orchestration(name: str) -> bool:
    """`forward_step_calc_loss(model, out)`, `train_step_loss(...)`: code that runs the model and its loss
    itself (or scales or backwards it), not a loss function."""
    return bool(re.search(r"step|backward|scale", name, re.I)) or name.startswith("forward")


def _is_torch_loss_class(qualified: str) -> bool:
    return qualified.startswith("torch.nn.") and qualified.endswith("Loss")


def sigmoid_input(node: ast.AST, analysis: ModuleAnalysis) -> ast.expr | None:
    """The logits ``x`` of ``torch.sigmoid(x)``, ``F.sigmoid(x)``, ``torch.special.expit(x)`` or
    ``x.sigmoid()`` when the call passes nothing else (an ``out=`` would be lost in a rewrite), else None."""
    if not isinstance(node, ast.Call) or node.keywords:
        return None
    func = node.func
    qualified = analysis.resolve(func)
    if qualified in SIGMOID_FUNCTIONS:
        return node.args[0] if len(node.args) == 1 and not isinstance(node.args[0], ast.Starred) else None
    if qualified is None and isinstance(func, ast.Attribute) and func.attr == "sigmoid" and not node.args:
        return func.value
    return None
