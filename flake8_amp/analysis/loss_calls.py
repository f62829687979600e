"""Recognising a call that computes a loss."""

from __future__ import annotations

import ast
import re

from .module_analysis import ModuleAnalysis, call_name
from .torch_api import LOSS_FUNCTIONS

# Names people give loss callables: criterion, loss_fn, loss_func, loss_fct, ce_loss, mlm_criterion ...
_LOSS_CALLABLE_NAME = re.compile(r"^(criterion|loss_?fn|loss_?func(tion)?|loss_?fct|.+_loss|.+_criterion)$")


def is_loss_call(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """A torch loss function, an ``nn.*Loss`` instance, or a callable named like a loss."""
    qualified = analysis.resolve(call.func)
    if qualified is not None:
        return qualified.startswith("torch.") and qualified.rpartition(".")[2] in LOSS_FUNCTIONS
    if any(_is_torch_loss_class(cls) for cls in analysis.constructed_classes(call.func)):
        return True
    name = call_name(call)
    if name is None or not _LOSS_CALLABLE_NAME.match(name):
        return False
    # `forward_step_calc_loss(model, out)`, `train_step_loss(...)`: orchestration that runs the model and
    # its loss function itself, not a loss function.
    return "step" not in name and not name.startswith("forward")


def _is_torch_loss_class(qualified: str) -> bool:
    return qualified.startswith("torch.nn.") and qualified.endswith("Loss")
