"""Is this code a model's, which a trainer elsewhere may run under float16 autocast?

A value whose dtype the module does not show (a parameter, a model's output read from a dict) may be
float16 where the code is a model's: a method of a class deriving from ``torch.nn`` (``nn.Module`` and
its subclasses) or a ``LightningModule``, directly or through classes of the project, in a module that
does not train in float32 itself, in a project that runs anything in low precision at all. A model
file is exactly where the classic float16 bugs live: it never mentions float16, and the trainer that
imports it turns on autocast. Helper functions outside a class, scripts and data code are not model
code.
"""

from __future__ import annotations

import ast

from .control_flow import ancestors
from .module_analysis import ModuleAnalysis
from .precision import FP16, module_precision
from .summaries import Summaries
from .training_calls import TrainingCalls

_MAX_DEPTH = 16


def in_model_code(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    """In a method of a class deriving from ``torch.nn.*`` (Module and its subclasses) or a LightningModule:
    directly, through a class of this module, or through a class of the project (``class
    XmodLayer(TransformerEncoderLayerBase)``, read through the project index)."""
    for _, parent in ancestors(node, analysis, cross_scopes=True):
        if isinstance(parent, ast.ClassDef):
            return _is_model_class(parent, analysis, 0)
    return False


def unknown_dtype_may_be_fp16(node: ast.AST, analysis: ModuleAnalysis) -> bool:
    """A value of unknown dtype at ``node`` may be float16: the module works in float16, or (showing no
    format of its own) ``node`` is model code of a project that runs low precision."""
    precision = analysis.derived(module_precision)
    if precision == FP16:
        return True
    return precision is None and analysis.derived(model_code_may_be_fp16) and in_model_code(node, analysis)


def model_code_may_be_fp16(analysis: ModuleAnalysis) -> bool:
    """Whether an unknown dtype in this module's model code may be float16: the module shows no
    low-precision format of its own (the caller asks only then), does not train itself (its own loop
    would show the precision it runs), and the project runs something in low precision (one that never
    does runs its models in float32). Use as ``analysis.derived(model_code_may_be_fp16)``."""
    return not analysis.derived(TrainingCalls).trains and (analysis.project is None or analysis.project.may_run_low_precision())


def _is_torch_module(qualified: str) -> bool:
    return qualified.startswith("torch.nn.") or qualified.endswith("LightningModule")


def _is_model_class(cls: ast.ClassDef, analysis: ModuleAnalysis, depth: int) -> bool:
    summaries = analysis.derived(Summaries)
    for base in cls.bases:
        local = summaries.local_class(base)
        if local is not None:
            if depth < _MAX_DEPTH and _is_model_class(local, analysis, depth + 1):
                return True
            continue
        qualified = analysis.resolve(base) or ""
        if _is_torch_module(qualified):
            return True
        project = analysis.project
        if qualified and not qualified.startswith("torch.") and project is not None and analysis.path:
            if project.derives_from(analysis.path, qualified, _is_torch_module):
                return True
    return False
