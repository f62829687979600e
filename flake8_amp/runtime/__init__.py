"""The bundled runtime: float formats, tensor analysis, the training monitor and verify().

The runtime needs torch (``pip install 'flake8-amp[runtime]'``), except the pure-Python format arithmetic
in :mod:`.formats`. Names are loaded on first use so that ``from flake8_amp import runtime`` stays cheap
and the error for a missing torch names what to install.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # float formats
    "FloatFormat": "formats",
    "FORMATS": "formats",
    "get_format": "formats",
    "bits": "formats",
    "quantize": "formats",
    # tensor analysis
    "analyze_tensor": "analyzer",
    "TensorReport": "analyzer",
    "precision_table": "range_explorer",
    "plot_precision_table": "range_explorer",
    # training monitor
    "watch_training": "monitor",
    "TrainingMonitor": "monitor",
    # which layers break in low precision; training side by side; gradient range against a loss scale
    "compare_precision": "compare",
    "CompareReport": "compare",
    "keep_fp32": "compare",
    "compare_training": "compare",
    "TrainingComparison": "compare",
    "gradient_overflow_risk": "compare",
    "GradientRiskReport": "compare",
    # verify: lint, run, and say what happened at each flagged line
    "verify": "verification",
    "VerifyReport": "verification",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'flake8_amp.runtime' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ImportError(
            f"flake8_amp.runtime.{name} needs PyTorch: pip install 'flake8-amp[runtime]' "
            "(or first install the torch build that matches your machine)"
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
