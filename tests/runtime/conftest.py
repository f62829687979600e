"""Runtime tests train small models: one thread is several times faster than two on two shared cores."""

from __future__ import annotations

try:
    import torch
except ImportError:  # the runtime tests skip themselves without torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)
