"""Which layers break in low precision, and what to do about it.

* :mod:`.layers` ``compare_precision(model, inputs)``: each layer's error in float16 / bfloat16 against
  float32, on its own and accumulated, worst first, and the smallest set of layers to keep in float32;
* :mod:`.keep` ``keep_fp32(model, names)``: applies that set (autocast off around them);
* :mod:`.training` ``compare_training(make_model, make_batches, steps)``: the same model trained side by side
  in each precision, from the same weights and data;
* :mod:`.gradient_risk` ``gradient_overflow_risk(model)``: after a backward, which gradients float16 would
  overflow or flush at a loss scale;
* :mod:`.report` the report of ``compare_precision``; :mod:`.common` what they share.
"""

from __future__ import annotations

from .gradient_risk import GradientRiskReport, ParameterGradientRisk, gradient_overflow_risk
from .keep import KeepFp32Handle, keep_fp32
from .common import default_layers
from .layers import compare_precision
from .report import CompareReport, KeepFp32Plan, LayerComparison
from .training import StepRecord, TrainingComparison, compare_training

__all__ = ["compare_precision", "keep_fp32", "compare_training", "gradient_overflow_risk", "CompareReport",
           "LayerComparison", "KeepFp32Plan", "KeepFp32Handle", "TrainingComparison", "StepRecord",
           "GradientRiskReport", "ParameterGradientRisk", "default_layers"]
