"""Where the monitor's findings go besides its own records: the log (visible by default), a TensorBoard
writer, JSON lines and a plot. Each is a side channel: a writer that fails is dropped alone, said once,
and detection goes on."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from ..formats import json_safe
from .compute import HISTOGRAM_EXPONENTS
from .judge import Alert

logger = logging.getLogger("flake8_amp.runtime")


class _UntilConfigured(logging.StreamHandler):
    """Prints the monitor's lines to stderr while the application has not configured logging (as progress
    bars print without any set-up); once it has (a handler on the root logger), its handlers have them."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def make_visible() -> None:
    """Status lines and alerts show without configuring logging: when a monitor is made and nothing has
    configured logging yet, the package logger gets a handler of its own and shows INFO."""
    if logging.getLogger().handlers or any(isinstance(h, _UntilConfigured) for h in logger.handlers):
        return
    handler = _UntilConfigured()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


class Writer:
    """A TensorBoard-like writer (``add_scalar``; ``add_text`` and ``add_histogram_raw`` when it has
    them): the run's scalars, each layer's gradient norm, activation headroom, underflow and distortion,
    the alerts as text, and at report steps (opt-in) each layer's gradient exponent histogram."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._said_no_histograms = False

    def write(self, record: dict[str, Any], layer_norms: Iterable[tuple[str, float | None]], alerts: list[Alert]) -> None:
        if self.writer is None:
            return
        step = record["step"]
        try:
            add = self.writer.add_scalar
            for key in ("loss", "grad_norm", "scale", "lr"):
                if not math.isnan(record[key]):
                    add(f"amp/{key}", record[key], step)
            if record.get("skipped"):
                add("amp/skipped_step", 1.0, step)
            for layer, value in layer_norms:
                if value is not None:
                    add(f"amp/grad_norm/{layer}", value, step)
            for key in ("underflow", "headroom", "distortion", "grad_zeros"):
                for layer, value in record.get(key, {}).items():
                    add(f"amp/{key}/{layer}", value, step)
            if alerts and hasattr(self.writer, "add_text"):
                self.writer.add_text("amp/alerts", "\n\n".join(alert.message() for alert in alerts), step)
            if record.get("histograms"):
                self._histograms(record["histograms"], step)
        except Exception as exc:  # noqa: BLE001 - the writer's failure is not the monitor's
            self.writer = None
            logger.error("flake8-amp monitor: the writer failed at step %d (%s: %s); it is no longer written to, "
                         "monitoring goes on", step, type(exc).__name__, exc)

    def _histograms(self, histograms: dict[str, list[float]], step: int) -> None:
        if not hasattr(self.writer, "add_histogram_raw"):
            if not self._said_no_histograms:
                self._said_no_histograms = True
                logger.warning("flake8-amp monitor: histograms=True, but the writer has no add_histogram_raw; "
                               "no histograms are written")
            return
        low, high = HISTOGRAM_EXPONENTS
        limits = [float(e) for e in range(low + 1, high + 1)]
        for layer, counts in histograms.items():
            binned, zeros = counts[:-1], counts[-1]
            total = sum(binned)
            if not total:
                continue
            nonempty = [i for i, c in enumerate(binned) if c]
            centres = [low + i + 0.5 for i in range(len(binned))]
            value_sum = sum(c * x for c, x in zip(binned, centres))
            squares = sum(c * x * x for c, x in zip(binned, centres))
            self.writer.add_histogram_raw(
                f"amp/grad_log2/{layer}", min=float(low + nonempty[0]), max=float(low + nonempty[-1] + 1), num=total,
                sum=value_sum, sum_squares=squares, bucket_limits=limits, bucket_counts=binned, global_step=step)
            self.writer.add_scalar(f"amp/grad_zero_count/{layer}", zeros, step)


def write_jsonl(path: str | Path, history: Iterable[dict[str, Any]], alerts: Iterable[Alert]) -> Path:
    """One JSON object per recorded step, then one per alert."""
    path = Path(path)
    with path.open("w") as handle:
        for record in history:
            handle.write(json.dumps(json_safe(record)) + "\n")
        for alert in alerts:
            handle.write(json.dumps(json_safe({"alert": vars(alert)})) + "\n")
    return path


def plot(path: str | Path, records: list[dict[str, Any]], alerts: Iterable[Alert], modules: list[str]) -> Path:
    """A PNG of loss, gradient norm, loss scale (skipped steps marked), and per-layer activation headroom
    and underflow over the recorded steps; alerts as red lines; log axes where values span decades."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("TrainingMonitor.plot() needs matplotlib: pip install matplotlib") from exc
    steps = [r["step"] for r in records]
    sampled = [r for r in records if "underflow" in r]
    panels = [("headroom", "activation headroom per layer (max |x| / format max)"),
              ("underflow", "activation underflow ratio per layer (sampled steps)")]
    if any(r.get("distortion") for r in sampled):
        panels.append(("distortion", "activation distortion per layer (mean relative rounding error, judged format)"))
    figure, axes = plt.subplots(3 + len(panels), 1, figsize=(9, 12 + 2.4 * (len(panels) - 2)), sharex=True)
    try:
        for axis, key, title in zip(axes[:3], ("loss", "grad_norm", "scale"), ("loss", "gradient norm", "loss scale")):
            values = [r.get(key, math.nan) for r in records]
            axis.plot(steps, values)
            axis.set_title(title)
            axis.grid(alpha=0.3)
            finite = [v for v in values if math.isfinite(v)]
            positive = [v for v in finite if v > 0]
            spans_decades = bool(positive) and len(positive) == len(finite) and max(positive) / min(positive) > 100
            if positive and (key != "loss" or spans_decades):
                axis.set_yscale("log")  # one spike must not flatten the rest
        skipped = [r for r in records if r.get("skipped")]
        if skipped:
            axes[2].scatter([r["step"] for r in skipped], [r["scale"] for r in skipped], color="orange", marker="v",
                            label="skipped step", zorder=3)
            axes[2].legend(fontsize="small")
        for alert in alerts:
            for axis in axes:
                axis.axvline(alert.step, color="red", alpha=0.3)
        for axis, (key, title) in zip(axes[3:], panels):
            for layer in modules:
                axis.plot([r["step"] for r in sampled], [r.get(key, {}).get(layer, math.nan) for r in sampled],
                          label=layer)
            axis.set_title(title)
            axis.grid(alpha=0.3)
        axes[3].axhline(1.0, color="red", linestyle="--", alpha=0.5)
        if any(r.get("headroom") for r in sampled):
            axes[3].set_yscale("log")
        axes[-1].set_xlabel("step")
        if sampled and len(modules) <= 12:
            axes[-1].legend(fontsize="small")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path
