"""``gradient_overflow_risk(model)``: after a backward, which gradients float16 would overflow or flush to
zero at a loss scale, and the scale that would fit them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..analyzer import _flat
from ..formats import FloatFormat, get_format, json_safe
from .common import INITIAL_LOSS_SCALE, _g, _table


# ------------------------------------------------------------------------------------------ gradient_overflow_risk
@dataclass
class ParameterGradientRisk:
    """One parameter's gradient against a low-precision format at a loss scale.

    ``underflow_pct``: non-zero elements that the scaled gradient flushes to zero; ``below_normal_pct``:
    those below the smallest normal (zero or subnormal, a few bits left); ``overflow_count``: elements
    beyond the format's max. ``max_scale``: the largest power of two at which no element overflows (inf
    when the gradient is all zero); ``needed_scale``: the smallest power of two that keeps ``coverage`` of
    the non-zero elements at or above the smallest normal (None when all zero)."""

    name: str
    layer: str
    numel: int
    nonzero: int
    nonfinite: int
    min_abs: float | None
    max_abs: float
    underflow_pct: float
    below_normal_pct: float
    overflow_count: int
    max_scale: float
    needed_scale: float | None
    status: str


@dataclass
class GradientRiskReport:
    """:func:`gradient_overflow_risk`'s answer. ``layers``: module name -> the worst status of its
    parameters; ``max_scale`` / ``needed_scale``: over the whole model (a scale in between suits every
    parameter when ``needed_scale <= max_scale``)."""

    format: str
    scale: float
    coverage: float
    parameters: list[ParameterGradientRisk]
    layers: dict[str, str]
    max_scale: float
    needed_scale: float | None

    @property
    def overflowing(self) -> list[str]:
        return [layer for layer, status in self.layers.items() if status in ("overflow", "non-finite")]

    @property
    def underflowing(self) -> list[str]:
        return [layer for layer, status in self.layers.items() if status == "underflow"]

    @property
    def fits(self) -> bool:
        """Whether one power-of-two scale keeps every gradient in range (``needed_scale <= max_scale``)."""
        return self.needed_scale is None or self.needed_scale <= self.max_scale

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(overflowing=self.overflowing, underflowing=self.underflowing, fits=self.fits)
        return json_safe(data)

    def __str__(self) -> str:
        fmt = get_format(self.format)
        lines = [
            f"gradient_overflow_risk: {len(self.parameters)} gradients at loss scale {self.scale:g} in {self.format} "
            f"(max {fmt.max:g}, smallest normal {fmt.smallest_normal:.3g})"
        ]
        headers = ["parameter", "max |g|", "min |g|>0", "flushed %", "subnormal %", "overflow", "max scale",
                   "needed scale", "status"]
        rows = [[p.name, _g(p.max_abs), _g(p.min_abs), f"{p.underflow_pct:.3g}",
                 f"{p.below_normal_pct - p.underflow_pct:.3g}", str(p.overflow_count), _scale(p.max_scale),
                 _scale(p.needed_scale), p.status] for p in self.parameters]
        lines.append(_table(headers, rows, right=range(1, 8)))
        verdict = (f"any power of two from {_scale(self.needed_scale)} to {_scale(self.max_scale)} keeps "
                   f"{self.coverage:.1%} of every gradient's non-zero elements normal without overflow"
                   if self.fits else
                   f"no single scale fits: overflow needs <= {_scale(self.max_scale)}, underflow needs >= "
                   f"{_scale(self.needed_scale)} (keep the widest layers' gradients in float32 or use bfloat16)")
        lines.append(verdict)
        if self.overflowing:
            lines.append(f"overflow at {self.scale:g}: {', '.join(self.overflowing)}")
        if self.underflowing:
            lines.append(f"underflow at {self.scale:g} (more than {1 - self.coverage:.2%} of non-zero elements below "
                         f"the smallest normal): {', '.join(self.underflowing)}")
        return "\n".join(lines)


_EXPONENT_OFFSET = 1100  # frexp exponents of float64 values start at -1073


def gradient_overflow_risk(model: nn.Module, scale: float | Any = None, *, format: str | FloatFormat = "fp16",
                           coverage: float = 0.999) -> GradientRiskReport:
    """After a backward, judge each parameter's ``.grad`` (unscaled: a float32 backward, or after
    ``scaler.unscale_(optimizer)``) against ``format``'s range at loss ``scale`` (default GradScaler's
    initial 65536; a GradScaler is read with ``get_scale()``). A parameter *overflows* when ``|g| * scale``
    exceeds the format's max somewhere, *underflows* when more than ``1 - coverage`` of its non-zero
    elements fall below the smallest normal. The weight gradients stand for the activation gradients that
    flow through the same layers in the low-precision backward: a proxy, not a replay of it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gradient_overflow_risk() needs a torch.nn.Module, got {type(model).__name__}")
    if scale is None:
        scale = INITIAL_LOSS_SCALE
    elif hasattr(scale, "get_scale"):
        scale = scale.get_scale()
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    fmt = get_format(format)
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        raise ValueError("no parameter has a gradient: call gradient_overflow_risk() after loss.backward()")
    parameters = [_parameter_risk(name, grad.detach(), fmt, scale, coverage) for name, grad in named]
    severity = {"ok": 0, "underflow": 1, "overflow": 2, "non-finite": 3}
    layers: dict[str, str] = {}
    for p in parameters:
        if severity[p.status] >= severity.get(layers.get(p.layer, "ok"), 0):
            layers[p.layer] = p.status
    needed = [p.needed_scale for p in parameters if p.needed_scale is not None]
    return GradientRiskReport(
        format=fmt.name,
        scale=scale,
        coverage=coverage,
        parameters=parameters,
        layers=layers,
        max_scale=min(p.max_scale for p in parameters),
        needed_scale=max(needed) if needed else None,
    )


def _parameter_risk(name: str, grad: torch.Tensor, fmt: FloatFormat, scale: float,
                    coverage: float) -> ParameterGradientRisk:
    """Counts at ``scale`` exactly, chunk by chunk in float64; the power-of-two scales from a histogram of
    binary exponents (exact for powers of two: ``|g| * 2**k`` crosses a power of two only at a binade)."""
    flat = _flat(grad)
    histogram = torch.zeros(2 * _EXPONENT_OFFSET, dtype=torch.int64, device=grad.device)
    counts = torch.zeros(4, dtype=torch.float64, device=grad.device)  # nonzero, flushed, below normal, overflow
    nonfinite = torch.zeros((), dtype=torch.int64, device=grad.device)
    max_abs = torch.zeros((), dtype=torch.float64, device=grad.device)
    min_abs = torch.full((), math.inf, dtype=torch.float64, device=grad.device)
    flush_limit = fmt.smallest_subnormal / 2  # at most half the smallest subnormal rounds to zero (ties to even)
    for start in range(0, flat.numel(), 1 << 16):
        magnitude = flat[start : start + (1 << 16)].double().abs()
        finite = torch.isfinite(magnitude)
        nonfinite += (~finite).sum()
        magnitude = torch.where(finite, magnitude, 0.0)
        nonzero = magnitude > 0
        scaled = magnitude * scale
        counts += torch.stack([
            nonzero.sum(), (nonzero & (scaled <= flush_limit)).sum(),
            (nonzero & (scaled < fmt.smallest_normal)).sum(), (scaled > fmt.max).sum(),
        ]).double()
        max_abs = torch.maximum(max_abs, magnitude.amax())
        min_abs = torch.minimum(min_abs, torch.where(nonzero, magnitude, math.inf).amin())
        exponents = torch.frexp(magnitude[nonzero])[1].long() + _EXPONENT_OFFSET
        histogram += torch.bincount(exponents, minlength=histogram.numel())[: histogram.numel()]
    nonzero, flushed, below, overflow = counts.tolist()
    max_value, min_value, bad = float(max_abs), float(min_abs), int(nonfinite)
    if max_value > 0:
        k = math.floor(math.log2(fmt.max / max_value))
        while max_value * 2.0**k > fmt.max:
            k -= 1
        while max_value * 2.0 ** (k + 1) <= fmt.max:
            k += 1
        max_scale = 2.0**k
    else:
        max_scale = math.inf
    needed_scale = None
    if nonzero:
        # |g| in [2**(e-1), 2**e) for frexp exponent e, so |g| * 2**k is below the smallest normal 2**m exactly
        # when e + k <= m: the count below normal at 2**k is the histogram summed up to exponent m - k
        m = fmt.min_exponent
        cumulative = torch.cumsum(histogram, 0).tolist()
        present = torch.nonzero(histogram).flatten().tolist()
        highest = present[-1] - _EXPONENT_OFFSET

        def below_at(k: int) -> int:
            index = m - k + _EXPONENT_OFFSET
            return 0 if index < 0 else cumulative[min(index, len(cumulative) - 1)]

        k = m - highest  # at this scale every non-zero element is below normal; each step up frees a binade
        while below_at(k) > (1 - coverage) * nonzero:
            k += 1
        needed_scale = 2.0**k
    if bad:
        status = "non-finite"
    elif overflow:
        status = "overflow"
    elif nonzero and below > (1 - coverage) * nonzero:
        status = "underflow"
    else:
        status = "ok"
    return ParameterGradientRisk(
        name=name,
        layer=name.rpartition(".")[0] or "(model)",
        numel=grad.numel(),
        nonzero=int(nonzero),
        nonfinite=bad,
        min_abs=min_value if nonzero else None,
        max_abs=max_value,
        underflow_pct=100 * flushed / nonzero if nonzero else 0.0,
        below_normal_pct=100 * below / nonzero if nonzero else 0.0,
        overflow_count=int(overflow),
        max_scale=max_scale,
        needed_scale=needed_scale,
        status=status,
    )


def _scale(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    exponent = math.log2(value)
    return f"2^{exponent:.0f}" if exponent == int(exponent) else f"{value:g}"
