"""The training monitor: ``@watch_training`` and ``TrainingMonitor``.

Every step, on the device and without a host synchronisation, it records the loss, the global and
per-layer gradient norms (read when the optimizer steps, so that zero_grad() after step() loses nothing;
a layer without a gradient is *missing*, never a NaN), the GradScaler's scale and the learning rate, into
a fixed-size ring buffer. Every ``sample_every`` steps, forward hooks add per-module activation statistics
(max |x|, headroom, underflow, distortion) and each layer's fraction of zero gradient elements. Every
``report_every`` steps the buffer comes to the host in one transfer, the values are judged against
baselines learned during warm-up, and alerts go to the ``flake8_amp.runtime`` logger, visible without
configuring logging. What the host already knows is said at once: a skipped GradScaler step (its step()
synchronised to decide it), a loss returned as a float, any value on a CPU. Anything else is *reported* at
the next report step, but always *named* with the exact step and layer where it happened
(``sync_every_step=True`` reports at once, at the cost of one host read per step).

The package is split by concern, as TransformerEngine's debug tools are:

* :mod:`.watch` what to watch: layers, sampled modules and their forward order, optimizer and scaler;
* :mod:`.compute` how to compute: device-side statistics, no host read;
* :mod:`.buffer` how to buffer and reduce: the ring buffer, one transfer, all_gather across ranks;
* :mod:`.judge` how to judge: host-side and torch-free, rows with named columns in, alerts out;
* :mod:`.outputs` where it goes: the log, a TensorBoard writer, JSON lines, a plot.

The monitor never changes training: it reads detached tensors, draws no random numbers, its hooks return
None, and any exception inside it is logged once and turns it off (a failing writer is dropped alone).
"""

from __future__ import annotations

import importlib

# Loaded on first use: the torch-free parts (judge, options) import without torch.
_EXPORTS = {
    "TrainingMonitor": "core",
    "watch_training": "decorator",
    "MISSING": "compute",
    "Alert": "judge",
    "MonitorSummary": "judge",
    "CONSECUTIVE_SKIPS": "judge",
    "SCALE_COLLAPSE": "judge",
    "HISTORY_STEPS": "judge",
    "validate_options": "options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
