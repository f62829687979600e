"""The rule registry: every AMP rule, in code order."""

from __future__ import annotations

from .amp001_manual_half_cast import ManualHalfCast
from .amp002_binary_cross_entropy import BinaryCrossEntropy
from .amp003_loss_outside_autocast import LossOutsideAutocast
from .amp004_low_precision_softmax import LowPrecisionSoftmax
from .amp005_low_precision_reduction import LowPrecisionReduction
from .amp006_custom_function_without_custom_fwd import CustomFunctionWithoutCustomFwd
from .base import Finding, Rule, Severity

ALL_RULES: tuple[Rule, ...] = (
    ManualHalfCast(),
    BinaryCrossEntropy(),
    LossOutsideAutocast(),
    LowPrecisionSoftmax(),
    LowPrecisionReduction(),
    CustomFunctionWithoutCustomFwd(),
)
RULES_BY_CODE: dict[str, Rule] = {rule.code: rule for rule in ALL_RULES}

__all__ = ["ALL_RULES", "RULES_BY_CODE", "Finding", "Rule", "Severity"]
