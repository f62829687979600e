"""What the comparisons share: their constants, inputs, layers, devices, casts and tables."""

from __future__ import annotations

import difflib
import math
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..cuda_emulation import CudaEmulation
from ..formats import FloatFormat, get_format

MODES = ("autocast", "cast")
DEFAULT_TARGET_SQNR = 40.0
#: the formats autocast (and a whole-layer cast) can run a layer in
LOW_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: GradScaler's initial scale: the fp16 gradient comparison starts from it, halving on inf/NaN as GradScaler does
INITIAL_LOSS_SCALE = 65536.0
_MAX_SCALE_BACKOFFS = 16
_SHOWN_ROWS = 20
#: elements per statistics step: small enough on the CPU that temporaries stay in cache and are reused
_STAT_CHUNK = 1 << 16
_STAT_CHUNK_ACCELERATOR = 1 << 22




# ------------------------------------------------------------------------------------------ helpers
def _split_inputs(inputs: Any, caller: str) -> tuple[tuple, dict]:
    """(args, kwargs) from a tensor (one argument), a tuple (positional arguments) or a dict (keywords)."""
    if inputs is None or (isinstance(inputs, (tuple, list, dict)) and len(inputs) == 0):
        raise ValueError(f"{caller}() needs inputs: a tensor, a tuple of forward's positional arguments or a dict "
                         "of its keyword arguments")
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def _low_precision_formats(formats: Sequence[str] | str) -> list[FloatFormat]:
    if isinstance(formats, (str, FloatFormat)):
        formats = [formats]
    fmts = [get_format(spec) for spec in formats]
    if not fmts:
        raise ValueError("formats is empty: name one or more of 'fp16', 'bf16'")
    for fmt in fmts:
        if fmt.name not in LOW_PRECISION_DTYPES:
            raise ValueError(f"format {fmt.name!r} cannot run a layer: autocast and casts run in 'fp16' or 'bf16'")
    return list(dict.fromkeys(fmts))


def default_layers(model: nn.Module) -> list[str]:
    """Every module with parameters of its own and no children, and every ``nn.MultiheadAttention`` whole
    (its ``out_proj`` is used as a weight, never called), in ``named_modules()`` order; a model without
    children is its own one layer, ``""``."""
    if next(model.children(), None) is None:  # a single layer: the model itself, named ""
        return [""] if next(model.parameters(), None) is not None else []
    names: list[str] = []
    attention: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in attention):
            continue
        if isinstance(module, nn.MultiheadAttention):
            attention.append(name)
            names.append(name)
        elif next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None:
            names.append(name)
    return names


def _select_layers(model: nn.Module, layers: Sequence[str] | str | None) -> list[str]:
    if layers is None:
        names = default_layers(model)
        if not names:
            raise ValueError("the model has no module with parameters to compare: name modules with layers=")
        return names
    if isinstance(layers, str):
        layers = [layers]
    names = list(dict.fromkeys(layers))
    if not names:
        raise ValueError("layers is empty: name modules as model.named_modules() does, or leave it None")
    _resolve_modules(model, names, "compare_precision")
    return names


def _resolve_modules(model: nn.Module, names: list[str], caller: str) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}() needs a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    resolved = []
    for name in names:
        if not isinstance(name, str) or name not in modules:
            close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"{caller}(): the model has no layer {name!r}{hint} (names are paths as in "
                             "model.named_modules(), e.g. 'encoder.0.linear')")
        resolved.append((name, modules[name]))
    return resolved


def _model_device(model: nn.Module, values: Any) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers(), *_tensors(values)):
        return tensor.device
    return torch.device("cpu")


def _resolve_device_type(mode: str, device_type: str | None, device: torch.device) -> tuple[str | None, bool]:
    """(the autocast device type, whether CUDA must be emulated): see the module doc."""
    if mode == "cast":
        return None, False
    if device_type is None:
        device_type = "cuda" if device.type == "cpu" else device.type
    if device_type == "cuda" and device.type == "cpu":
        return "cuda", not CudaEmulation._active
    if device_type not in ("cpu", device.type):
        raise ValueError(f"device_type={device_type!r} does not fit a model on {device.type}: use "
                         f"{device.type!r}{', or cuda (emulated) / cpu' if device.type == 'cpu' else ''}")
    return device_type, False


@contextmanager
def _emulation(needed: bool) -> Iterator[None]:
    if not needed:
        yield
        return
    with CudaEmulation():
        yield


@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (dropout off, batch-norm statistics read, not updated) for the comparison;
    each module's own training flag put back after, on every path."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _castable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dtype is not torch.float64


def _cast_floating(value: Any, dtype: torch.dtype | None) -> Any:
    """``value`` with every floating tensor inside (not float64) cast to ``dtype``; containers rebuilt."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if _castable(value) and value.dtype is not dtype else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cast_floating(v, dtype) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _float_tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in _tensors(value) if t.is_floating_point()]


def _versions(value: Any) -> tuple[int, ...]:
    return tuple(t._version for t in _tensors(value))


def _detached_copy(value: Any) -> Any:
    """The floating tensors of a layer's output, copied: a later in-place op of the float32 run must not
    change what the low-precision run is compared with."""
    return [t.detach().clone() for t in _float_tensors(value)]


def _first_of(*values: float | None) -> float:
    return next(value for value in values if value is not None)


def _db(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2e}"


def _table(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])

def _g(value: float) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.4g}"
