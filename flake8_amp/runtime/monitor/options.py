"""The monitor's options, checked where they are given (torch-free): a typo or a value out of range is an
error at once, not a monitor that turns itself off at the first step."""

from __future__ import annotations

import math
from typing import Any

OPTIONS = ("warmup_steps", "alert_window", "sigma", "sample_every", "report_every", "precision", "writer",
           "histograms", "sync_every_step")


def validate_options(**options: Any) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown monitor option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                        f"the options are {', '.join(sorted(OPTIONS))}")
    for name in ("warmup_steps", "alert_window", "sample_every", "report_every"):
        value = options.get(name)
        if value is None:
            continue
        smallest = 0 if name == "warmup_steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ValueError(f"{name} must be an integer of at least {smallest}, got {value!r}")
    sigma = options.get("sigma")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                              or not math.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"sigma must be a finite number above 0, got {sigma!r}")
    if options.get("precision") not in (None, "fp16", "bf16"):
        raise ValueError(f"precision must be 'fp16', 'bf16' or None, got {options['precision']!r}")
    for name in ("histograms", "sync_every_step"):
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be True or False, got {options[name]!r}")
    writer = options.get("writer")
    if writer is not None and not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(f"writer must have add_scalar(tag, value, step) (a TensorBoard SummaryWriter), got "
                        f"{type(writer).__name__}")
