"""What verify must put back after running a script in-process, whatever the script did.

The script runs as ``__main__`` in verify's own interpreter. Afterwards argv, the working directory,
sys.path, sys.modules (the project's modules the script imported are dropped, so the next run imports
them afresh, and every entry that was there before is the same object again; installed packages it
imported stay loaded, as unloading an extension module is not possible), the trace function,
the warning filters, and torch's global state -- function and dispatch modes,
autocast state per device, default dtype, grad mode, deterministic flags, anomaly mode -- are as they
were, on success, exception, ``SystemExit`` or ``KeyboardInterrupt`` alike.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_state() -> dict[str, tuple[bool, Any]]:
    state = {}
    for device in _AUTOCAST_DEVICES:
        try:
            state[device] = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        except (RuntimeError, TypeError):  # a build without that device's autocast
            continue
    return state


class ScriptIsolation:
    """``with ScriptIsolation(project_root): runpy.run_path(...)`` puts the interpreter back as it found it."""

    def __init__(self, project_root: str) -> None:
        self.project_root = os.path.realpath(project_root) + os.sep

    def __enter__(self) -> "ScriptIsolation":
        self.argv = list(sys.argv)
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.modules = dict(sys.modules)
        self.trace = sys.gettrace()
        self.warning_filters = list(warnings.filters)
        self.showwarning = warnings.showwarning
        self.default_dtype = torch.get_default_dtype()
        self.grad_enabled = torch.is_grad_enabled()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        self.anomaly = torch.is_anomaly_enabled()
        self.autocast = _autocast_state()
        self.autocast_cache = torch.is_autocast_cache_enabled()
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.function_modes = _function_mode_depth()
        self.dispatch_modes = _dispatch_mode_depth()
        self.num_threads = torch.get_num_threads()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.restore()

    def restore(self) -> None:
        sys.settrace(self.trace)
        _pop_modes_above(self.function_modes, self.dispatch_modes)
        sys.argv[:] = self.argv
        os.chdir(self.cwd)
        sys.path[:] = self.path
        for name, module in list(sys.modules.items()):
            if name not in self.modules and self._is_project_module(module):
                del sys.modules[name]
        sys.modules.update(self.modules)
        warnings.filters[:] = self.warning_filters
        warnings.showwarning = self.showwarning
        warnings._filters_mutated()  # type: ignore[attr-defined]
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
            self.deterministic, self.deterministic_warn_only
        ):
            torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = self.cudnn
        torch.set_anomaly_enabled(self.anomaly)
        for device, (enabled, dtype) in self.autocast.items():
            torch.set_autocast_enabled(device, enabled)
            torch.set_autocast_dtype(device, dtype)
        torch.set_autocast_cache_enabled(self.autocast_cache)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_num_threads(self.num_threads)


    def _is_project_module(self, module: Any) -> bool:
        filename = getattr(module, "__file__", None)
        return bool(filename) and os.path.realpath(filename).startswith(self.project_root)


def _function_mode_depth() -> int:
    return len(torch.overrides._get_current_function_mode_stack())  # type: ignore[attr-defined]


def _dispatch_mode_depth() -> int:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return len(_get_current_dispatch_mode_stack())


def _pop_modes_above(function_depth: int, dispatch_depth: int) -> None:
    """Modes a script entered and never left (an exception past a ``with mode:``'s frame cannot leave them
    open, but ``mode.__enter__()`` without an exit can)."""
    from torch.utils._python_dispatch import _pop_mode

    while _function_mode_depth() > function_depth:
        torch._C._pop_torch_function_stack()
    while _dispatch_mode_depth() > dispatch_depth:
        _pop_mode()
