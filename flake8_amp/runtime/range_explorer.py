"""The range explorer: what each format does to a sweep of magnitudes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .formats import FloatFormat, get_format, json_safe, round_to_format

DEFAULT_VALUES = tuple(10.0**k for k in range(-10, 11))
DEFAULT_FORMATS = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")


@dataclass(frozen=True)
class Cell:
    stored: float
    relative_error: float
    status: str  # "ok", "subnormal", "underflow" (became 0), "overflow" (inf or saturated)


@dataclass
class PrecisionTable:
    values: list[float]
    formats: list[str]
    rows: list[dict[str, Cell]]

    def to_dict(self) -> dict[str, Any]:
        rows = [{name: vars(cell) for name, cell in row.items()} for row in self.rows]
        return json_safe({"values": self.values, "formats": self.formats, "rows": rows})

    def __str__(self) -> str:
        headers = ["value"] + self.formats
        body = [
            [f"{value:.3g}"] + [_cell_text(row[name]) for name in self.formats] for value, row in zip(self.values, self.rows)
        ]
        widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
        lines.append("cells: stored value (relative error); overflow = inf or saturated, underflow = became 0")
        return "\n".join(lines)


def precision_table(
    values: Sequence[float] | None = None, formats: Sequence[str | FloatFormat] = DEFAULT_FORMATS
) -> PrecisionTable:
    """Each value as each format stores it, with the relative error and what happened."""
    chosen = [get_format(f) for f in formats]
    sweep = [float(v) for v in (values if values is not None else DEFAULT_VALUES)]
    rows = [{fmt.name: _cell(value, fmt) for fmt in chosen} for value in sweep]
    return PrecisionTable(values=sweep, formats=[f.name for f in chosen], rows=rows)


def plot_precision_table(
    path: str | Path, values: Sequence[float] | None = None, formats: Sequence[str | FloatFormat] = DEFAULT_FORMATS
) -> Path:
    """Write a PNG: relative error per format over the sweep, overflow and underflow marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_precision_table() needs matplotlib: pip install matplotlib") from exc
    sweep = list(values) if values is not None else [10.0 ** (k / 8) for k in range(-80, 81)]
    table = precision_table(sweep, formats)
    figure, axes = plt.subplots(figsize=(9, 5))
    for name in table.formats:
        errors = [row[name].relative_error if row[name].status in ("ok", "subnormal") else math.nan for row in table.rows]
        # exact values (error 0) are left out: a log axis cannot show them
        line = axes.loglog(table.values, [e if e > 0 else math.nan for e in errors], label=name)[0]
        failed = [(v, row[name].status) for v, row in zip(table.values, table.rows) if row[name].status in ("overflow", "underflow")]
        if failed:
            axes.scatter([v for v, _ in failed], [1.0] * len(failed), marker="x", color=line.get_color(), s=12)
    axes.set_xlabel("magnitude")
    axes.set_ylabel("relative rounding error (x at 1.0: overflow / underflow)")
    axes.set_title("What each float format does to a value")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _cell(value: float, fmt: FloatFormat) -> Cell:
    stored = round_to_format(value, fmt)
    if value == 0 or math.isnan(value):
        return Cell(stored, 0.0, "ok")
    if math.isinf(stored) or (not fmt.has_inf and abs(value) > fmt.max):
        return Cell(stored, math.inf if math.isinf(stored) else abs(stored - value) / abs(value), "overflow")
    if stored == 0:
        return Cell(stored, 1.0, "underflow")
    status = "subnormal" if abs(stored) < fmt.smallest_normal else "ok"
    return Cell(stored, abs(stored - value) / abs(value), status)


def _cell_text(cell: Cell) -> str:
    if cell.status in ("overflow", "underflow"):
        return f"{cell.stored:.4g} ({cell.status})"
    suffix = ", subnormal" if cell.status == "subnormal" else ""
    return f"{cell.stored:.4g} ({cell.relative_error:.1e}{suffix})"
