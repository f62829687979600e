"""``analyze_tensor``: will this tensor survive float16 / bfloat16 / fp8, and where does it lose precision?

All statistics are computed on the tensor's device, chunk by chunk (bounded extra memory on 100M-element
tensors), and come back to the host in one transfer of a few scalars: a CUDA tensor is never copied to
the host.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from .formats import _CHUNK, FloatFormat, get_format, json_safe, quantize_chunk

# A narrow dimension added to a wide one keeps about (mantissa_bits + 1 - log2(ratio)) of its bits,
# judged in the most precise low-precision format analysed (float16 by default).
HIGH_RISK_BITS_KEPT = 4
MEDIUM_RISK_BITS_KEPT = 8
# Fractions of non-zero values that underflow to zero / land in the subnormal range.
HIGH_RISK_UNDERFLOW = 0.01
MEDIUM_RISK_UNDERFLOW = 1e-4
MEDIUM_RISK_SUBNORMAL = 0.01


@dataclass
class FormatStats:
    """What a cast to one format does to the tensor (percentages of finite values)."""

    format: str
    overflow_pct: float
    underflow_pct: float
    subnormal_pct: float
    mean_relative_error: float
    max_relative_error: float


#: per-index statistics are listed for an axis up to this long; a longer one keeps its summary only
#: (widest, narrowest, their ratio), so that a (2, 20M) tensor does not become five 20M-float lists
MAX_LISTED_INDICES = 65536


@dataclass
class DimensionStats:
    """Per-index statistics along one axis (``axis``; the last by default). The lists are empty for an
    axis longer than MAX_LISTED_INDICES; widest, narrowest and their ranges are always there."""

    min: list[float]
    max: list[float]
    mean: list[float]
    range: list[float]
    widest: int
    narrowest: int
    range_ratio: float
    axis: int = -1
    widest_range: float = 0.0
    narrowest_range: float = 0.0


@dataclass
class TensorReport:
    name: str | None
    shape: list[int]
    dtype: str
    numel: int
    nan_count: int
    inf_count: int
    min: float | None
    max: float | None
    mean: float | None
    min_nonzero_magnitude: float | None
    dynamic_range: float | None  # log2(max |x|) - log2(min non-zero |x|), in binades
    formats: dict[str, FormatStats] = field(default_factory=dict)
    dimensions: DimensionStats | None = None
    risk: str = "LOW"
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    #: the names a report's values go by in the P1 requirements' seed code
    _SEED_KEYS = ("risk_level", "dim_stats", "dim_ratio", "suggestion")

    def __getitem__(self, key: str) -> Any:
        """``report["risk_level"]``, ``report["dim_stats"]`` ({index: {min, max, mean}}), ``report["dim_ratio"]``,
        ``report["suggestion"]``, as the seed spelled them; any field by its own name too."""
        if key == "risk_level":
            return self.risk
        if key == "suggestion":
            return " ".join(self.suggestions) if self.suggestions else "no precision risk found"
        if key == "dim_ratio":
            return self.dimensions.range_ratio if self.dimensions is not None else 1.0
        if key == "dim_stats":
            d = self.dimensions
            if d is None:
                return {}
            return {i: {"min": d.min[i], "max": d.max[i], "mean": d.mean[i]} for i in range(len(d.min))}
        if key in self.__dataclass_fields__:
            return getattr(self, key)
        raise KeyError(f"{key!r}: a report has {', '.join([*self._SEED_KEYS, *self.__dataclass_fields__])}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        title = f"Tensor {self.name!r}" if self.name else "Tensor"
        lines = [f"{title}: shape {tuple(self.shape)}, {self.dtype}, {self.numel} elements   risk: {self.risk}"]
        if self.numel == 0:
            lines.append("  empty: nothing to analyze")
            return "\n".join(lines)
        lines.append(
            f"  min {_num(self.min)}  max {_num(self.max)}  mean {_num(self.mean)}  "
            f"smallest |x|>0 {_num(self.min_nonzero_magnitude)}  dynamic range {_num(self.dynamic_range)} binades"
        )
        if self.nan_count or self.inf_count:
            lines.append(f"  non-finite: {self.nan_count} NaN, {self.inf_count} Inf")
        lines.append("  format        overflow   underflow  subnormal  mean rel err  max rel err")
        for stats in self.formats.values():
            lines.append(
                f"  {stats.format:<12}  {stats.overflow_pct:7.3f}%  {stats.underflow_pct:8.3f}%  "
                f"{stats.subnormal_pct:8.3f}%  {stats.mean_relative_error:12.3g}  {stats.max_relative_error:11.3g}"
            )
        if self.dimensions is not None:
            d = self.dimensions
            axis = "last axis" if d.axis in (-1, len(self.shape) - 1) else f"axis {d.axis}"
            lines.append(
                f"  {axis}: {self.shape[d.axis]} dimensions; widest {d.widest} (range {_num(d.widest_range)}), "
                f"narrowest {d.narrowest} (range {_num(d.narrowest_range)}), ratio {_num(d.range_ratio)}x"
            )
        for suggestion in self.suggestions:
            lines.append(f"  -> {suggestion}")
        return "\n".join(lines)


def analyze_tensor(
    tensor: Any,
    name: str | None = None,
    formats: str | FloatFormat | Sequence[str | FloatFormat] = ("fp16", "bf16"),
    dim: int = -1,
) -> TensorReport:
    """Report what storing ``tensor`` in each of ``formats`` would do to it, and how its values spread
    along axis ``dim`` (the last by default).

    Accepts floating-point tensors on any device, contiguous or not (nothing is copied whole); numpy
    arrays and (nested) lists of numbers are converted with ``torch.as_tensor``. ``formats`` is one name
    or a list. Integer, bool and complex tensors are refused with a TypeError naming the cast to make;
    meta and sparse tensors with one saying why.
    """
    tensor = _as_float_tensor(tensor)
    if isinstance(formats, (str, FloatFormat)):
        formats = (formats,)
    fmts = [get_format(f) for f in formats]
    if tensor.dim() and not -tensor.dim() <= dim < tensor.dim():
        raise IndexError(f"analyze_tensor(): dim {dim} is out of range for a {tensor.dim()}-d tensor")
    if not fmts:
        raise ValueError("analyze_tensor() needs at least one format")
    report = TensorReport(
        name=name,
        shape=list(tensor.shape),
        dtype=str(tensor.dtype).removeprefix("torch."),
        numel=tensor.numel(),
        nan_count=0,
        inf_count=0,
        min=None,
        max=None,
        mean=None,
        min_nonzero_magnitude=None,
        dynamic_range=None,
    )
    if tensor.numel() == 0:
        return report
    scalars = _global_statistics(tensor.detach(), fmts)
    report.nan_count, report.inf_count = int(scalars["nan"]), int(scalars["inf"])
    finite = scalars["finite"]
    if finite:
        report.min, report.max, report.mean = scalars["min"], scalars["max"], scalars["sum"] / finite
        nonzero = scalars["nonzero"]
        if nonzero:
            report.min_nonzero_magnitude = scalars["min_nonzero"]
            report.dynamic_range = math.log2(scalars["max_abs"]) - math.log2(scalars["min_nonzero"])
    for fmt in fmts:
        n = scalars[f"{fmt.name}:counted"]
        report.formats[fmt.name] = FormatStats(
            format=fmt.name,
            overflow_pct=100 * scalars[f"{fmt.name}:overflow"] / finite if finite else 0.0,
            underflow_pct=100 * scalars[f"{fmt.name}:underflow"] / scalars["nonzero"] if scalars["nonzero"] else 0.0,
            subnormal_pct=100 * scalars[f"{fmt.name}:subnormal"] / finite if finite else 0.0,
            mean_relative_error=scalars[f"{fmt.name}:err_sum"] / n if n else 0.0,
            max_relative_error=scalars[f"{fmt.name}:err_max"],
        )
    if tensor.dim() >= 2 and tensor.shape[dim] >= 2:
        report.dimensions = _dimension_statistics(tensor.detach(), bool(report.nan_count or report.inf_count), dim)
    report.risk, report.suggestions = _assess(report, fmts)
    return report


def _as_float_tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"analyze_tensor() needs a tensor (or a numpy array / list of numbers), got {type(value).__name__}"
            ) from exc
    if value.is_meta:
        raise TypeError("analyze_tensor() needs values, and a meta tensor has none (only a shape and a dtype)")
    if value.layout != torch.strided:
        raise TypeError(f"analyze_tensor() needs a dense tensor, got layout {value.layout}: analyze t.to_dense() "
                        "(or t.values(), the stored values)")
    if value.is_complex():
        raise TypeError(f"analyze_tensor() needs real floating-point values, got {value.dtype}: analyze .real and .imag")
    if not value.is_floating_point():
        raise TypeError(
            f"analyze_tensor() needs a floating-point tensor, got {value.dtype}: use t.float() to see how "
            "its values would be stored"
        )
    return value


def _global_statistics(tensor: torch.Tensor, fmts: list[FloatFormat]) -> dict[str, float]:
    """One pass over the tensor in chunks; accumulators stay on the device until one final transfer.

    Chunks are processed in float32 (float64 for float64 tensors) with in-place ops. On CPU, where a
    look at a scalar is free, chunks skip the work they cannot need: masking when every value is finite,
    overflow counting when nothing exceeds the format's max, underflow and subnormal counting when
    nothing is below its smallest normal. On an accelerator every chunk takes the full path, so that
    nothing synchronises with the host before the final transfer.
    """
    device = tensor.device
    on_cpu = device.type == "cpu"
    work_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    flat = _flat(tensor)
    names = ["nan", "inf", "finite", "nonzero", "sum", "min", "max", "max_abs", "min_nonzero"]
    for fmt in fmts:
        names += [f"{fmt.name}:{k}" for k in ("overflow", "underflow", "subnormal", "err_sum", "err_max", "counted")]
    acc = {n: torch.zeros((), dtype=torch.float64, device=device) for n in names}
    acc["min"].fill_(math.inf)
    acc["max"].fill_(-math.inf)
    acc["min_nonzero"].fill_(math.inf)
    tiny = torch.finfo(work_dtype).tiny
    for start in range(0, flat.numel(), _CHUNK):
        x = flat[start : start + _CHUNK].to(work_dtype)
        n = x.numel()
        finite_mask = torch.isfinite(x)
        finite_count = finite_mask.sum()
        if not on_cpu or int(finite_count) != n:
            nan_count = torch.isnan(x).sum()
            acc["nan"] += nan_count
            acc["inf"] += n - finite_count - nan_count
            low, high = torch.where(finite_mask, x, math.inf).min(), torch.where(finite_mask, x, -math.inf).max()
            x = torch.where(finite_mask, x, 0.0)  # excluded from sums and errors; counted apart below
        else:
            low, high = torch.aminmax(x)
        acc["finite"] += finite_count
        acc["min"] = torch.minimum(acc["min"], low.double())
        acc["max"] = torch.maximum(acc["max"], high.double())
        acc["sum"] += x.sum(dtype=torch.float64)
        magnitude = x.abs()
        chunk_max_abs = magnitude.max()
        acc["max_abs"] = torch.maximum(acc["max_abs"], chunk_max_abs.double())
        nonzero_mask = magnitude > 0
        nonzero_count = nonzero_mask.sum()
        chunk_min_nonzero = torch.where(nonzero_mask, magnitude, math.inf).min()
        acc["nonzero"] += nonzero_count
        acc["min_nonzero"] = torch.minimum(acc["min_nonzero"], chunk_min_nonzero.double())
        zero_count = finite_count - nonzero_count
        safe_magnitude = magnitude.clamp_min(tiny)
        for fmt in fmts:
            stored = quantize_chunk(magnitude, fmt)
            may_overflow = not on_cpu or float(chunk_max_abs) > fmt.max
            may_underflow = not on_cpu or float(chunk_min_nonzero) < fmt.smallest_normal
            overflow = None
            if may_overflow:
                # inf for IEEE-like formats; saturation to max for the fp8 "fn" format
                overflow = torch.isinf(stored) if fmt.has_inf else magnitude > fmt.max
                overflow_count = overflow.sum()
                acc[f"{fmt.name}:overflow"] += overflow_count
                acc[f"{fmt.name}:counted"] += nonzero_count - overflow_count
            else:
                acc[f"{fmt.name}:counted"] += nonzero_count
            if may_underflow:
                stored_zero = (stored == 0).sum()
                acc[f"{fmt.name}:underflow"] += stored_zero - zero_count - (n - finite_count)
                acc[f"{fmt.name}:subnormal"] += (stored < fmt.smallest_normal).sum() - stored_zero
            error = stored.sub_(magnitude).abs_().div_(safe_magnitude)
            if overflow is not None:
                error.masked_fill_(overflow, 0.0)
            acc[f"{fmt.name}:err_sum"] += error.sum(dtype=torch.float64)
            acc[f"{fmt.name}:err_max"] = torch.maximum(acc[f"{fmt.name}:err_max"], error.max().double())
    values = torch.stack([acc[n] for n in names]).tolist()  # the one device-to-host transfer
    return dict(zip(names, values))


def _dimension_statistics(tensor: torch.Tensor, has_non_finite: bool, dim: int = -1) -> DimensionStats:
    """Min, max and mean of each index along ``dim``, reducing over every other axis. Chunked along another
    axis, each chunk a view: a transposed or otherwise non-contiguous tensor is never copied whole, and the
    extra memory is one chunk plus a few vectors as long as the axis (an axis longer than
    MAX_LISTED_INDICES is reduced a block of indices at a time and only summarised)."""
    axis = dim % tensor.dim()
    columns = tensor.shape[axis]
    widest = narrowest = -1
    widest_range, narrowest_range = -math.inf, math.inf
    for start in range(0, columns, MAX_LISTED_INDICES):
        block = tensor.narrow(axis, start, min(MAX_LISTED_INDICES, columns - start))
        col_min, col_max, col_sum, col_count = _axis_reductions(block, has_non_finite, axis)
        col_range = (col_max.double() - col_min.double()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        index = int(col_range.argmax())
        if float(col_range[index]) > widest_range:
            widest, widest_range = start + index, float(col_range[index])
        spanning = col_range > 0
        if bool(spanning.any()):
            index = int(torch.where(spanning, col_range, math.inf).argmin())
            if float(col_range[index]) < narrowest_range:
                narrowest, narrowest_range = start + index, float(col_range[index])
    if narrowest < 0:  # no index spans anything
        narrowest, narrowest_range = widest, widest_range
    ratio = widest_range / narrowest_range if narrowest_range > 0 else 1.0
    if columns > MAX_LISTED_INDICES:
        return DimensionStats([], [], [], [], widest, narrowest, ratio, axis, widest_range, narrowest_range)
    mins, maxs, sums, counts, ranges = torch.stack(
        [col_min.double(), col_max.double(), col_sum, col_count, col_range]
    ).tolist()
    means = [s / c if c else math.nan for s, c in zip(sums, counts)]
    return DimensionStats(mins, maxs, means, ranges, widest, narrowest, ratio, axis, widest_range, narrowest_range)


def _axis_reductions(tensor: torch.Tensor, has_non_finite: bool, axis: int) -> tuple[torch.Tensor, ...]:
    """Per index of ``axis``: min, max, sum and count of its finite values, chunked along the longest
    other axis (at most one chunk is copied, to lay the axis last)."""
    columns = tensor.shape[axis]
    others = [d for d in range(tensor.dim()) if d != axis]
    split = max(others, key=lambda d: tensor.shape[d])
    per_slice = max(1, tensor.numel() // max(1, tensor.shape[split]))
    step = max(1, _CHUNK // per_slice)
    work_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    col_min = torch.full((columns,), math.inf, dtype=work_dtype, device=tensor.device)
    col_max = torch.full((columns,), -math.inf, dtype=work_dtype, device=tensor.device)
    col_sum = torch.zeros(columns, dtype=torch.float64, device=tensor.device)
    col_count = torch.zeros(columns, dtype=torch.float64, device=tensor.device)
    for start in range(0, tensor.shape[split], step):
        block = tensor.narrow(split, start, min(step, tensor.shape[split] - start)).to(work_dtype)
        block = block.movedim(axis, -1).reshape(-1, columns)
        if has_non_finite:
            finite = torch.isfinite(block)
            col_min = torch.minimum(col_min, torch.where(finite, block, math.inf).amin(0))
            col_max = torch.maximum(col_max, torch.where(finite, block, -math.inf).amax(0))
            col_sum += torch.where(finite, block, 0.0).sum(0, dtype=torch.float64)
            col_count += finite.sum(0)
        else:
            low, high = torch.aminmax(block, dim=0)
            col_min = torch.minimum(col_min, low)
            col_max = torch.maximum(col_max, high)
            col_sum += block.sum(0, dtype=torch.float64)
            col_count += block.shape[0]
    return col_min, col_max, col_sum, col_count


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's elements in one dimension, for statistics that do not care about order: a view when
    some order of its axes is contiguous (a transpose, a permute), so that it is not copied whole."""
    if tensor.is_contiguous():
        return tensor.reshape(-1)
    order = sorted(range(tensor.dim()), key=lambda d: (-tensor.stride(d), -tensor.shape[d]))
    permuted = tensor.permute(order)
    return permuted.reshape(-1) if permuted.is_contiguous() else tensor.reshape(-1)


def _assess(report: TensorReport, fmts: list[FloatFormat]) -> tuple[str, list[str]]:
    """Risk level and suggestions in plain words. HIGH: values overflow, NaN/Inf present, >= 1% of
    non-zero values underflow, or a dimension keeps < 4 bits in a shared low-precision reduction;
    MEDIUM: any underflow >= 0.01%, >= 1% subnormal, or a dimension keeps < 8 bits."""
    risk, notes = 0, []
    if report.nan_count or report.inf_count:
        risk = 2
        notes.append(f"the tensor already holds {report.nan_count} NaN and {report.inf_count} Inf values")
    for stats in report.formats.values():
        if stats.overflow_pct > 0:
            risk = 2
            notes.append(
                f"{stats.overflow_pct:.3g}% of values overflow {stats.format} "
                f"(max {get_format(stats.format).max:.6g}): scale them down or keep this tensor in float32"
            )
        if stats.underflow_pct >= 100 * HIGH_RISK_UNDERFLOW:
            risk = 2
            notes.append(f"{stats.underflow_pct:.3g}% of non-zero values become 0 in {stats.format}: scale them up (loss scaling) or use bfloat16/float32")
        elif stats.underflow_pct >= 100 * MEDIUM_RISK_UNDERFLOW:
            risk = max(risk, 1)
            notes.append(f"{stats.underflow_pct:.3g}% of non-zero values become 0 in {stats.format}")
        if stats.subnormal_pct >= 100 * MEDIUM_RISK_SUBNORMAL:
            risk = max(risk, 1)
            notes.append(f"{stats.subnormal_pct:.3g}% of values are subnormal in {stats.format}: they keep only a few bits")
    dims = report.dimensions
    low_precision = [f for f in fmts if f.mantissa_bits < 23]
    if dims is not None and dims.range_ratio > 1 and low_precision:
        # Judged in the most precise low-precision format asked for: if even it loses the narrow
        # dimension, every coarser one does too.
        coarsest = max(low_precision, key=lambda f: f.mantissa_bits)
        kept = coarsest.mantissa_bits + 1 - math.log2(dims.range_ratio)
        if kept < MEDIUM_RISK_BITS_KEPT:
            level = 2 if kept < HIGH_RISK_BITS_KEPT else 1
            risk = max(risk, level)
            dtype_name = {"fp16": "float16", "bf16": "bfloat16"}.get(coarsest.name, coarsest.name)
            effect = "loses it" if kept < 1 else f"keeps only about {kept:.0f} of its bits"
            notes.append(
                f"dimension {dims.narrowest} spans {dims.range_ratio:.0f}x less than dimension {dims.widest}: "
                f"a {dtype_name} reduction across dimensions {effect}; reduce in float32 "
                f"(x.sum(-1, dtype=torch.float32))"
            )
    return ("LOW", "MEDIUM", "HIGH")[risk], notes


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
