"""Floating-point formats described by their bit layout, and exact simulation of casts to them.

Everything here but :func:`quantize` is pure Python (the ``flake8-amp formats`` and ``bits`` commands
run without torch). :func:`quantize` needs torch and agrees bit for bit with torch's own casts to
float16, bfloat16, float8_e4m3fn and float8_e5m2 (round to nearest, ties to even; subnormals; overflow
to inf, or saturation for the fp8 "fn" format as torch implements it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``has_inf=False`` describes the fp8 "fn" formats: the all-ones exponent holds normal numbers, only
    the all-ones mantissa there is NaN, and (as torch casts) values beyond the maximum saturate to it.
    """

    # Defaults only so that FloatFormat(exponent_bits=6, mantissa_bits=17) reads as written (the name is then
    # generated, "e6m17"); the bit counts are checked below, so a format without them is an error.
    name: str = ""
    exponent_bits: int = 0
    mantissa_bits: int = -1
    has_inf: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"e{self.exponent_bits}m{self.mantissa_bits}")
        if not (2 <= self.exponent_bits <= 11) or not (0 <= self.mantissa_bits <= 52):
            raise ValueError(
                f"format {self.name!r}: exponent_bits must be 2..11 and mantissa_bits 0..52, "
                f"got {self.exponent_bits} and {self.mantissa_bits}"
            )
        if not self.has_inf and self.mantissa_bits == 0:
            raise ValueError(f"format {self.name!r}: a format without inf needs mantissa bits for NaN")

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        top = 2**self.exponent_bits - (2 if self.has_inf else 1)
        return top - self.bias

    @property
    def max(self) -> float:
        m = self.mantissa_bits
        largest_mantissa = 2**m - 1 if self.has_inf else 2**m - 2
        return math.ldexp(1 + largest_mantissa / 2**m, self.max_exponent)

    @property
    def smallest_normal(self) -> float:
        return math.ldexp(1.0, self.min_exponent)

    @property
    def smallest_subnormal(self) -> float:
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1.0 and the next representable number."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits: log10(2**(mantissa_bits + 1))."""
        return (self.mantissa_bits + 1) * math.log10(2)

    @property
    def dynamic_range(self) -> float:
        """log2(max) - log2(smallest subnormal): the binades the format spans."""
        return math.log2(self.max) - math.log2(self.smallest_subnormal)

    def limits(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bits": self.bits,
            "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits,
            "has_inf": self.has_inf,
            "max": self.max,
            "smallest_normal": self.smallest_normal,
            "smallest_subnormal": self.smallest_subnormal,
            "eps": self.eps,
            "decimal_digits": round(self.decimal_digits, 2),
            "dynamic_range_binades": round(self.dynamic_range, 2),
        }


FP32 = FloatFormat("fp32", 8, 23)
FP16 = FloatFormat("fp16", 5, 10)
BF16 = FloatFormat("bf16", 8, 7)
FP8_E4M3FN = FloatFormat("fp8_e4m3fn", 4, 3, has_inf=False)
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2)

FORMATS: dict[str, FloatFormat] = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3FN, FP8_E5M2)}
_ALIASES = {
    "float32": "fp32", "float": "fp32", "single": "fp32",
    "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn", "e4m3": "fp8_e4m3fn", "fp8": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2",
}


def get_format(spec: str | FloatFormat | Any) -> FloatFormat:
    """A format from its name (``"fp16"``, ``"bfloat16"``, ``"e4m3"``), a torch dtype, or a FloatFormat."""
    if isinstance(spec, FloatFormat):
        return spec
    key = str(spec).lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    known = ", ".join(sorted(FORMATS))
    raise ValueError(f"unknown float format {spec!r}; known formats: {known} (or FloatFormat(name, e, m))")


# ---------------------------------------------------------------- scalars (pure Python)
def round_to_format(value: float, fmt: str | FloatFormat) -> float:
    """The value a cast to ``fmt`` stores, for one Python float (the scalar twin of :func:`quantize`)."""
    fmt = get_format(fmt)
    if math.isnan(value):
        return value
    if math.isinf(value):
        return value if fmt.has_inf else math.copysign(fmt.max, value)
    if value == 0:
        return value
    magnitude = abs(value)
    exponent = max(math.frexp(magnitude)[1] - 1, fmt.min_exponent)
    quantum = math.ldexp(1.0, exponent - fmt.mantissa_bits)
    rounded = round(magnitude / quantum) * quantum  # round() is ties-to-even on floats
    if rounded > fmt.max:
        rounded = math.inf if fmt.has_inf else fmt.max
    return math.copysign(rounded, value)


@dataclass(frozen=True)
class BitPattern:
    value: float
    stored: float
    sign: str
    exponent: str
    mantissa: str
    format: FloatFormat

    @property
    def relative_error(self) -> float:
        if self.value == 0 or math.isnan(self.value) or math.isinf(self.value) or math.isinf(self.stored):
            return 0.0 if self.stored == self.value else math.inf
        return abs(self.stored - self.value) / abs(self.value)

    def __str__(self) -> str:
        return (
            f"{self.format.name}: {self.sign} | {self.exponent} | {self.mantissa} = {self.stored!r} "
            f"(from {self.value!r}, relative error {self.relative_error:.3g})"
        )


def bits(value: float, fmt: str | FloatFormat = "fp16") -> BitPattern:
    """The sign | exponent | mantissa bits of ``value`` stored in ``fmt``, and the value stored."""
    fmt = get_format(fmt)
    value = float(value)
    stored = round_to_format(value, fmt)
    e_bits, m_bits = fmt.exponent_bits, fmt.mantissa_bits
    sign = "1" if math.copysign(1.0, stored) < 0 else "0"
    if math.isnan(stored):
        exponent, mantissa = 2**e_bits - 1, 2**m_bits - 1 if not fmt.has_inf else 2 ** (m_bits - 1)
    elif math.isinf(stored):
        exponent, mantissa = 2**e_bits - 1, 0
    elif stored == 0:
        exponent, mantissa = 0, 0
    else:
        magnitude = abs(stored)
        unbiased = math.frexp(magnitude)[1] - 1
        if unbiased < fmt.min_exponent:  # subnormal
            exponent, mantissa = 0, int(magnitude / fmt.smallest_subnormal)
        else:
            exponent = unbiased + fmt.bias
            mantissa = int((magnitude / math.ldexp(1.0, unbiased) - 1) * 2**m_bits)
    return BitPattern(
        value=value,
        stored=stored,
        sign=sign,
        exponent=format(exponent, f"0{e_bits}b"),
        mantissa=format(mantissa, f"0{m_bits}b") if m_bits else "",
        format=fmt,
    )


def limits_table(formats: Iterable[str | FloatFormat] = FORMATS) -> str:
    """The formats' limits as an aligned text table."""
    rows = [get_format(f).limits() for f in formats]
    headers = ["name", "bits", "exp", "mant", "max", "smallest normal", "smallest subnormal", "eps", "digits", "range (binades)"]
    cells = [
        [
            row["name"],
            str(row["bits"]),
            str(row["exponent_bits"]),
            str(row["mantissa_bits"]),
            f"{row['max']:.6g}",
            f"{row['smallest_normal']:.4g}",
            f"{row['smallest_subnormal']:.4g}",
            f"{row['eps']:.4g}",
            f"{row['decimal_digits']:.2f}",
            f"{row['dynamic_range_binades']:.1f}",
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- tensors (torch)
_CHUNK = 1 << 17  # elements per step: bounds the temporaries of quantize() and the analyzer


def quantize(tensor: Any, fmt: str | FloatFormat) -> Any:
    """The values ``tensor`` would hold after a cast to ``fmt``, as float32 (float64 for float64 input).

    Works for any FloatFormat, on any device, chunk by chunk so that extra memory stays bounded.
    """
    import torch

    fmt = get_format(fmt)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"quantize() needs a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"quantize() needs a floating-point tensor, got {tensor.dtype}")
    out_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    source = tensor.reshape(-1)
    out = torch.empty(source.shape, dtype=out_dtype, device=tensor.device)
    for start in range(0, source.numel(), _CHUNK):
        out[start : start + _CHUNK] = quantize_chunk(source[start : start + _CHUNK].to(out_dtype), fmt)
    return out.reshape(tensor.shape)


def quantize_chunk(x: Any, fmt: FloatFormat) -> Any:
    """:func:`round_to_format` for a float32 or float64 tensor, same dtype out."""
    import torch

    if x.dtype == torch.float32 and fmt.mantissa_bits <= 23 and fmt.exponent_bits <= 8:
        return _quantize_float32(x, fmt)
    return _quantize_float64(x.to(torch.float64), fmt).to(x.dtype)


def _quantize_float32(x: Any, fmt: FloatFormat) -> Any:
    """Round-to-nearest-even on the float32 bit pattern: add half an ulp of the target format (less one,
    plus the lowest kept bit, for ties to even) and clear the dropped bits. A carry into the exponent is
    the correct rounding up to the next binade. The target's subnormal range is rounded with an exact
    scaled ``round``; NaN and overflow are patched in last."""
    import torch

    dropped = 23 - fmt.mantissa_bits
    magnitude = x.abs()
    if dropped:
        pattern = magnitude.view(torch.int32)
        lowest_kept = (pattern >> dropped) & 1
        rounded = (pattern + ((1 << (dropped - 1)) - 1) + lowest_kept) & ~((1 << dropped) - 1)
        result = rounded.view(torch.float32)
    else:
        result = magnitude.clone()
    subnormal = magnitude < fmt.smallest_normal
    quantum = fmt.smallest_subnormal
    result = torch.where(subnormal, torch.round(magnitude / quantum) * quantum, result)
    overflow_value = math.inf if fmt.has_inf else fmt.max
    result = torch.where((result > fmt.max) | torch.isinf(magnitude), overflow_value, result)
    result = torch.copysign(result, x)
    return torch.where(torch.isnan(x), x, result)


def _quantize_float64(x: Any, fmt: FloatFormat) -> Any:
    """The general path (any format, float64 intermediates, which hold every value exactly)."""
    import torch

    magnitude = x.abs()
    _, exponent = torch.frexp(magnitude)
    exponent = torch.clamp(exponent - 1, min=fmt.min_exponent)
    quantum = torch.ldexp(torch.ones_like(magnitude), exponent - fmt.mantissa_bits)
    rounded = torch.round(magnitude / quantum) * quantum  # torch.round is ties-to-even
    overflow = (rounded > fmt.max) | torch.isinf(magnitude)
    rounded = torch.where(overflow, torch.full_like(rounded, math.inf if fmt.has_inf else fmt.max), rounded)
    rounded = torch.where(magnitude == 0, magnitude, rounded)
    result = torch.copysign(rounded, x)
    return torch.where(torch.isnan(x), x, result)


def json_safe(value: Any) -> Any:
    """Floats JSON can hold: NaN becomes null, infinities "inf" / "-inf" (also inside dicts and lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
