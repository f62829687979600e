"""Which calls compute a loss."""

from __future__ import annotations

import ast
import re

from .bindings import Bindings
from .module_analysis import ModuleAnalysis, call_name
from .torch_api import LOSS_FUNCTIONS

# Names people give loss callables: criterion, loss_fn, loss_func, loss_fct, ce_loss, mlm_criterion,
# kd_loss_soft ...
_LOSS_CALLABLE_NAME = re.compile(
    r"^(criterion|loss_?fn|loss_?func(tion)?|loss_?fct|.+_criterion|(.+_)?loss(_.+)?)$", re.I
)


def is_loss_call(call: ast.Call, analysis: ModuleAnalysis) -> bool:
    """A torch loss function, an ``nn.*Loss`` instance, a function this module or the project defines
    that returns a loss, or a callable named like a loss."""
    qualified = analysis.resolve(call.func)
    if qualified is not None and qualified.startswith("torch."):
        return qualified.rpartition(".")[2] in LOSS_FUNCTIONS
    if any(_is_torch_loss_class(cls) for cls in analysis.derived(Bindings).constructed_classes(call.func)):
        return True
    from .summaries import Summaries  # summaries ask which calls are losses in turn

    facts = analysis.derived(Summaries).callee_facts(call)
    if facts is not None and facts.get("computes_loss"):
        return True
    name = call_name(call)
    if name is None or not _LOSS_CALLABLE_NAME.match(name):
        return False
    # `forward_step_calc_loss(model, out)`, `train_step_loss(...)`, `loss.backward`: orchestration that runs
    # the model and its loss itself, or a method of a loss tensor, not a loss function.
    if re.search(r"step|backward|scale", name) or name.startswith("forward"):
        return False
    return facts is None or facts.get("trains") is not True


def _is_torch_loss_class(qualified: str) -> bool:
    return qualified.startswith("torch.nn.") and qualified.endswith("Loss")
