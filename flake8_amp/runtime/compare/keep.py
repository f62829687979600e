"""``keep_fp32(model, names)``: autocast off around the named layers, their floating inputs in float32;
removable and idempotent."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Iterable

import torch
from torch import nn

from .common import _cast_floating, _resolve_modules, _tensors
from .report import CompareReport


# ------------------------------------------------------------------------------------------ keep_fp32
class _KeepFp32Forward:
    """The ``forward`` that :func:`keep_fp32` puts on a module instance: autocast off, floating inputs in
    float32. An object rather than a closure so that ``copy.deepcopy(model)`` gives the copy a wrapper of
    its own module (a closure would keep calling the original)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.count = 1
        self.previous = module.__dict__.get("forward")  # an instance-level forward set before ours
        #: (owner, "_parameters" or "_buffers", name, dtype) of each tensor model_dtype= moved to float32
        self.converted: list[tuple[nn.Module, str, str, torch.dtype]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _cast_floating((args, kwargs), torch.float32)
        inner = self.previous if self.previous is not None else type(self.module).forward.__get__(self.module)
        with _autocast_disabled((args, kwargs)):
            return inner(*args, **kwargs)

    def to_float32(self) -> None:
        """The module's float16 / bfloat16 parameters and buffers in float32 (a model cast whole)."""
        for owner in self.module.modules():
            for kind in ("_parameters", "_buffers"):
                for name, tensor in getattr(owner, kind).items():
                    if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16):
                        self.converted.append((owner, kind, name, tensor.dtype))
                        _set_tensor(owner, kind, name, tensor.float())

    def restore(self) -> None:
        for owner, kind, name, dtype in self.converted:
            _set_tensor(owner, kind, name, getattr(owner, kind)[name].to(dtype))
        self.converted = []


def _set_tensor(owner: nn.Module, kind: str, name: str, value: torch.Tensor) -> None:
    """Replace a parameter's values (the Parameter object stays, so optimizers still hold it) or a buffer."""
    if kind == "_parameters":
        with torch.no_grad():
            owner._parameters[name].data = value
    else:
        owner._buffers[name] = value


class KeepFp32Handle:
    """What :func:`keep_fp32` returns: ``.remove()`` puts everything back (also on leaving a ``with``)."""

    def __init__(self, modules: list[tuple[str, nn.Module]], hooks: list[Any]) -> None:
        self.names = [name for name, _ in modules]
        self._modules = [module for _, module in modules]
        self._hooks = hooks
        self._removed = False

    def remove(self) -> None:
        if self._removed:
            return
        self._removed = True
        for hook in self._hooks:
            hook.remove()
        for module in self._modules:
            wrapper = module.__dict__.get("forward")
            if not isinstance(wrapper, _KeepFp32Forward):
                continue
            wrapper.count -= 1
            if wrapper.count == 0:
                wrapper.restore()
                if wrapper.previous is not None:
                    module.__dict__["forward"] = wrapper.previous
                else:
                    del module.__dict__["forward"]

    def __enter__(self) -> "KeepFp32Handle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"KeepFp32Handle({self.names!r}{', removed' if self._removed else ''})"


def keep_fp32(model: nn.Module, names: Iterable[str] | str | CompareReport, *,
              model_dtype: torch.dtype | None = None) -> KeepFp32Handle:
    """Run the modules ``names`` (paths as in ``model.named_modules()``, or a :class:`CompareReport`, whose
    ``keep_fp32`` is taken) in float32: autocast is disabled around each and its floating inputs (not
    float64) are cast to float32. That is all under autocast (``model_dtype=None``).

    For a model cast whole to float16 / bfloat16 (``mode="cast"``), pass that dtype as ``model_dtype``:
    the kept modules' low-precision parameters and buffers go to float32 too, and every other module with
    parameters of its own (outside the kept ones) casts its floating inputs to ``model_dtype``, so the
    float32 that leaves a kept module (possibly beyond ``model_dtype``'s range) meets the next layer in
    its dtype only there. Applying it twice to a module wraps it once; the returned handle's ``remove()``
    undoes this call (a module stays wrapped while another handle holds it; weights go back to their dtype
    when the last one is removed)."""
    if isinstance(names, CompareReport):
        names = names.keep_fp32
    if isinstance(names, str):
        names = [names]
    if model_dtype is not None and model_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"model_dtype is the dtype the model was cast to, torch.float16 or torch.bfloat16; got "
                         f"{model_dtype!r}")
    modules = _resolve_modules(model, list(dict.fromkeys(names)), "keep_fp32")
    for _, module in modules:
        wrapper = module.__dict__.get("forward")
        if isinstance(wrapper, _KeepFp32Forward):
            wrapper.count += 1
        else:
            wrapper = module.__dict__["forward"] = _KeepFp32Forward(module)
        if model_dtype is not None:
            wrapper.to_float32()
    hooks = []
    if model_dtype is not None:
        island = {id(inner) for _, module in modules for inner in module.modules()}

        def cast_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return _cast_floating((args, kwargs), model_dtype)

        for _, module in model.named_modules():
            if id(module) not in island and next(module.parameters(recurse=False), None) is not None:
                hooks.append(module.register_forward_pre_hook(cast_inputs, with_kwargs=True))
    return KeepFp32Handle(modules, hooks)


def _autocast_disabled(values: Any) -> ExitStack:
    """Autocast turned off for every device type it is on for (CUDA, the CPU, the inputs' device)."""
    stack = ExitStack()
    devices = dict.fromkeys(["cuda", "cpu", *(t.device.type for t in _tensors(values))])
    for device_type in devices:
        try:
            enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError:  # a device type this build does not know
            continue
        if enabled:
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


