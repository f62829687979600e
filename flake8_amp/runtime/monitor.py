"""The training monitor: ``@watch_training`` and ``TrainingMonitor``.

Every step, on the device and without a host synchronisation, it records the loss, the global and
per-layer gradient norms (non-finite layers show as non-finite norms), the GradScaler's scale (a skipped
step is a step after which the scale went down) and the learning rate, into a fixed-size ring buffer.
Every ``sample_every`` steps, forward hooks add per-layer activation statistics. Every ``report_every``
steps the buffer comes to the host in one transfer, the values are judged against baselines learned
during warm-up, and alerts go to the ``flake8_amp.runtime`` logger. The price of no per-step
synchronisation: an anomaly is *reported* at the next report step, but always *named* with the exact
step and layer where it happened (``sync_every_step=True`` reports at once, at the cost of one host read
per step).

The monitor never changes training: it reads detached tensors, draws no random numbers, its hooks return
None, and any exception inside it is logged once and turns it off.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .analyzer import _flat, json_safe

logger = logging.getLogger("flake8_amp.runtime")

# Host-side series kept for summary(), to_jsonl() and plot(): a fixed number of steps.
HISTORY_STEPS = 4096
MAX_ALERTS_KEPT = 200
_FORMAT_LIMITS = {  # dtype name -> (max, smallest normal)
    "float16": (65504.0, 2.0**-14),
    "bfloat16": (3.3895313892515355e38, 2.0**-126),
    "float32": (3.4028234663852886e38, 2.0**-126),
}
_PRECISION_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}

# The ring buffer's columns: one row per step.
_LOSS, _LOSS_SEEN, _GRAD_NORM, _SCALE, _LAYERS = 0, 1, 2, 3, 4
#: a gradient norm that could not be read (no gradient: after zero_grad, in an eval step): not a NaN
MISSING = -1.0
#: skipped GradScaler steps in a row that alert (one is a growth probe: the scale doubled, overflowed once)
CONSECUTIVE_SKIPS = 3
#: elements of an activation that its underflow ratio and distortion are estimated on (evenly strided)
_RATIO_SAMPLE = 1 << 16
#: a loss scale this many times below the highest it reached has collapsed
SCALE_COLLAPSE = 2.0**10


@dataclass
class Alert:
    step: int
    metric: str
    value: float
    baseline: str
    layer: str | None = None
    rank: int | None = None
    deviation: float | None = None

    def message(self) -> str:
        where = f"Layer '{self.layer}' " if self.layer else ""
        rank = f" | rank {self.rank}" if self.rank is not None else ""
        deviation = f" | Deviation: {self.deviation:.0f}σ" if self.deviation is not None and math.isfinite(self.deviation) else ""
        value = _fmt(self.value) if math.isfinite(self.value) else str(self.value)  # a NaN here was measured
        return f"[ALERT] Step {self.step}{rank} | {where}{self.metric}: {value} (baseline: {self.baseline}){deviation}"


@dataclass
class MonitorSummary:
    steps: int
    alerts: list[Alert]
    skipped_steps: list[int]
    worst_layers: list[tuple[str, str, float]]  # (layer, metric, worst value)
    disabled_reason: str | None = None

    def __str__(self) -> str:
        lines = [f"flake8-amp training monitor: {self.steps} steps, {len(self.alerts)} alerts, {len(self.skipped_steps)} skipped steps"]
        if self.disabled_reason:
            lines.append(f"  monitor turned itself off: {self.disabled_reason}")
        if self.skipped_steps:
            shown = ", ".join(map(str, self.skipped_steps[:20])) + (" ..." if len(self.skipped_steps) > 20 else "")
            lines.append(f"  GradScaler skipped steps: {shown}")
        for alert in self.alerts[:20]:
            lines.append("  " + alert.message())
        if len(self.alerts) > 20:
            lines.append(f"  ... {len(self.alerts) - 20} more alerts")
        for layer, metric, value in self.worst_layers:
            lines.append(f"  worst layer for {metric}: '{layer}' ({_fmt(value)})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alerts": [vars(a) for a in self.alerts],
            "skipped_steps": self.skipped_steps,
            "worst_layers": [list(w) for w in self.worst_layers],
            "disabled_reason": self.disabled_reason,
        }


# The smallest rise worth an alert, per metric, whatever the baseline's spread: an activation whose
# underflow ratio goes from 0 to 1 element in 1024, or whose headroom goes from 1e-5 to 2e-5 of the
# format's max, is noise, not trouble.
_ABSOLUTE_FLOOR = {"underflow_ratio": 0.01, "activation_headroom": 0.05, "distortion": 0.01,
                   "gradient_zero_fraction": 0.25}
_RELATIVE_FLOOR = 0.05
# Gradient norms swing multiplicatively in healthy training: a noisy layer's norm can reach 5-7x its
# median within a few hundred clean steps, a quiet layer's hardly 2x. They are judged on a log scale, so
# that each layer's threshold follows its own variability (8 robust sigmas of log norm: about 6x the
# median for a quiet layer, far more for a noisy one), and a new value must also be more than
# _LOG_RANGE_FACTOR times the highest seen to pass the range test. A learning-rate spike or an exploding
# layer moves them by orders of magnitude.
_LOG_SCALE_METRICS = frozenset({"grad_norm"})
_LOG_RANGE_FACTOR = 4.0


class _Baseline:
    """A metric's normal range: warm-up values, then a rolling window of the values judged normal."""

    def __init__(self, metric: str, warmup_steps: int, window: int) -> None:
        self.values: deque[float] = deque(maxlen=max(warmup_steps, window, 8))
        self.window = window
        self.high = -math.inf
        self.floor = _ABSOLUTE_FLOOR.get(metric, 0.0)
        self.log = metric in _LOG_SCALE_METRICS
        self.range_factor = _LOG_RANGE_FACTOR if self.log else 2.0

    def _scaled(self, value: float) -> float:
        return math.log(max(value, 1e-30)) if self.log else value

    def describe(self) -> str:
        median, scale = self.center()
        if self.log:
            return f"{_fmt(math.exp(median))} x/÷ {math.exp(scale):.2g}"
        return f"{_fmt(median)}±{_fmt(scale)}"

    def center(self) -> tuple[float, float]:
        """Median and robust spread (1.4826 MAD), on the metric's scale (log for gradient norms)."""
        values = [self._scaled(v) for v in list(self.values)[-max(self.window, 8) :]]
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        floor = _RELATIVE_FLOOR if self.log else _RELATIVE_FLOOR * abs(median)
        return median, max(1.4826 * mad, floor, 1e-12)

    def judge(self, value: float, sigma: float) -> float | None:
        """The deviation in robust sigmas if ``value`` is anomalous, else None (and learn it).

        Anomalous means high: more than ``sigma`` robust deviations above the median, or more than twice (a
        gradient norm: four times) the highest value seen so far; either way by more than the metric's
        absolute floor. A loss is judged one-sided: falling is training. A gradient norm is judged on both
        sides: ``sigma`` deviations below the median on its log scale is gradients vanishing (underflow to
        zero after a collapsed loss scale), not learning, which lowers them by degrees.
        """
        if len(self.values) >= 8:
            median, scale = self.center()
            deviation = (self._scaled(value) - median) / scale
            if self.log and deviation < -sigma:
                return deviation
            linear_median = math.exp(median) if self.log else median
            beyond_sigma = deviation > sigma and value - linear_median > self.floor
            beyond_range = self.high > 0 and value > self.range_factor * self.high and value - self.high > self.floor
            if beyond_sigma or beyond_range:
                return deviation
        self.values.append(value)
        self.high = max(self.high, value)
        return None


class TrainingMonitor:
    """Watches a model's training steps; call :meth:`step` once per optimizer step.

    Args:
        model: the module being trained.
        optimizer / scaler: optional; with them the monitor reads gradients right before the optimizer
            steps and the GradScaler's scale and skipped steps.
        warmup_steps: steps used to learn each metric's baseline (NaN/Inf alert during warm-up too).
        alert_window: steps of history a judgement looks at; one alert per metric and layer per window.
        sigma: robust deviations (median/MAD) above the baseline that raise an alert.
        sample_every: steps between activation samples (forward hooks are attached only then).
        report_every: steps between host reads (default: ``alert_window``).
        precision: "fp16" or "bf16": judge float32 activations against that format's range.
        writer: anything with ``add_scalar(tag, value, step)`` (a TensorBoard SummaryWriter).
        sync_every_step: read to the host every step (alerts at once; costs a synchronisation per step).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        *,
        warmup_steps: int = 100,
        alert_window: int = 50,
        sigma: float = 8.0,
        sample_every: int = 10,
        report_every: int | None = None,
        precision: str | None = None,
        writer: Any = None,
        sync_every_step: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"TrainingMonitor needs an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        validate_options(warmup_steps=warmup_steps, alert_window=alert_window, sigma=sigma,
                         sample_every=sample_every, report_every=report_every, precision=precision)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.warmup_steps, self.alert_window, self.sigma = warmup_steps, alert_window, sigma
        self.sample_every = max(1, sample_every)
        self.report_every = 1 if sync_every_step else max(1, report_every or alert_window)
        self.precision, self.writer = precision, writer
        self.steps = 0
        self.enabled = True
        self.disabled_reason: str | None = None
        self._loss_ok = True

        self._buffer_steps: list[int] = []
        self._lr: list[float] = []
        self._pending_grads: torch.Tensor | None = None
        # step -> (modules, 5): amax, headroom, underflow, distortion, finite
        self._act_stats: dict[int, torch.Tensor] = {}
        self._pending_zeros: torch.Tensor | None = None
        self._grad_zeros: dict[int, torch.Tensor] = {}  # sampled step -> per layer, the fraction of gradient zeros
        self._hooks: list[Any] = []
        self._current_act: list[torch.Tensor | None] = []
        self._index_parameters()

        # keyed by (metric, layer, rank): ranks keep their own baselines under torch.distributed
        self._baselines: dict[tuple[str, str | None, int | None], _Baseline] = {}
        self._last_alert: dict[tuple[str, str | None, int | None], int] = {}
        self.alerts: deque[Alert] = deque(maxlen=MAX_ALERTS_KEPT)
        self._alert_count = 0
        self.skipped_steps: deque[int] = deque(maxlen=MAX_ALERTS_KEPT)
        self._previous_scale: float | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_STEPS)
        self._worst: dict[tuple[str, str], float] = {}
        self._consecutive_skips = 0
        self._highest_scale = 0.0
        self._scale_trajectory: deque[float] = deque(maxlen=CONSECUTIVE_SKIPS + 1)
        # Gradients are read when an optimizer over the model's parameters steps, whether it was handed
        # over or not (torch's global step hook): by the time the step returns, zero_grad may have run.
        self._optimizer_hook = register_optimizer_step_pre_hook(
            self._guarded(self._capture_gradients)
        )
        self._baseline_announced = False
        _make_visible()
        self._attach_hooks()  # step 0 is sampled when the monitor exists before its forward pass

    def _index_parameters(self) -> None:
        """Which parameters are watched, in which layer; the ring buffer sized for them; the modules whose
        outputs are sampled. Run again when the model's parameters change (see :meth:`_flush`)."""
        self._params: list[torch.Tensor] = []
        layer_of_param: list[int] = []
        self.layers: list[str] = []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = name.rsplit(".", 1)[0] if "." in name else name
            if layer not in self.layers:
                self.layers.append(layer)
            self._params.append(parameter)
            layer_of_param.append(self.layers.index(layer))
        self._parameter_key = [id(p) for p in self._params]
        self._parameter_ids = set(self._parameter_key)
        device = self._params[0].device if self._params else torch.device("cpu")
        self.device = device
        self._columns = _LAYERS + len(self.layers)
        # the monitor's own tensors are never inference tensors, even when made under inference_mode
        with torch.inference_mode(False), torch.no_grad():
            self._layer_index = torch.tensor(layer_of_param, dtype=torch.long, device=device)
            # Ring buffer, one row per step: loss, whether a loss was given, grad_norm, scale, then one
            # gradient norm per layer (MISSING where there was no gradient to read).
            self._buffer = torch.full((self.report_every, self._columns), math.nan, dtype=torch.float32,
                                      device=device)
        # Activation sampling: hooks on leaf and attention modules, attached only for sampled steps.
        self._act_modules = _watched_modules(self.model)

    def _parameters_changed(self) -> bool:
        return [id(p) for p in self.model.parameters() if p.requires_grad] != self._parameter_key

    # ------------------------------------------------------------------ public API
    def step(self, loss: Any = None) -> None:
        """Record one training step (call after the optimizer step). Never raises."""
        if not self.enabled:
            return
        # the monitor's own tensors are never inference tensors, whatever mode the step ran in
        with torch.inference_mode(False), torch.no_grad():
            self._guarded(self._step)(loss)

    def summary(self) -> MonitorSummary:
        """The run's story so far; also logged at INFO."""
        self._guarded(self._flush)()
        worst = sorted(self._worst.items(), key=lambda item: -item[1])
        by_metric: dict[str, tuple[str, float]] = {}
        for (layer, metric), value in worst:
            by_metric.setdefault(metric, (layer, value))
        result = MonitorSummary(
            steps=self.steps,
            alerts=list(self.alerts),
            skipped_steps=list(self.skipped_steps),
            worst_layers=[(layer, metric, value) for metric, (layer, value) in by_metric.items()],
            disabled_reason=self.disabled_reason,
        )
        logger.info("%s", result)
        return result

    def to_jsonl(self, path: str | Path) -> Path:
        """One JSON object per recorded step (the last HISTORY_STEPS steps), then one per alert."""
        self._guarded(self._flush)()
        path = Path(path)
        with path.open("w") as handle:
            for record in self.history:
                handle.write(json.dumps(json_safe(record)) + "\n")
            for alert in self.alerts:
                handle.write(json.dumps(json_safe({"alert": vars(alert)})) + "\n")
        return path

    def plot(self, path: str | Path) -> Path:
        """A PNG of loss, gradient norm, loss scale (skipped steps marked), and per-layer activation headroom
        and underflow over the recorded steps; alerts as red lines; log axes where values span decades."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("TrainingMonitor.plot() needs matplotlib: pip install matplotlib") from exc
        self._guarded(self._flush)()
        records = list(self.history)
        steps = [r["step"] for r in records]
        figure, axes = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
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
        skipped = [r["step"] for r in records if r.get("skipped")]
        if skipped:
            axes[2].scatter(skipped, [r["scale"] for r in records if r.get("skipped")], color="orange", marker="v",
                            label="skipped step", zorder=3)
            axes[2].legend(fontsize="small")
        for alert in self.alerts:
            for axis in axes:
                axis.axvline(alert.step, color="red", alpha=0.3)
        sampled = [r for r in records if "underflow" in r]
        for axis, key, title in ((axes[3], "headroom", "activation headroom per layer (max |x| / format max)"),
                                 (axes[4], "underflow", "activation underflow ratio per layer (sampled steps)")):
            for layer in self.layers_with_activations():
                axis.plot([r["step"] for r in sampled], [r.get(key, {}).get(layer, math.nan) for r in sampled],
                          label=layer)
            axis.set_title(title)
            axis.grid(alpha=0.3)
        axes[3].axhline(1.0, color="red", linestyle="--", alpha=0.5)
        if any(r.get("headroom") for r in sampled):
            axes[3].set_yscale("log")
        axes[4].set_xlabel("step")
        if sampled and len(self._act_modules) <= 12:
            axes[4].legend(fontsize="small")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

    def layers_with_activations(self) -> list[str]:
        return [name for name, _ in self._act_modules]

    def close(self) -> None:
        """Remove every hook the monitor attached."""
        self._detach_hooks()
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None

    # ------------------------------------------------------------------ safety
    def _guarded(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return None
            try:
                return function(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the monitor must never break training
                self._disable(f"{type(exc).__name__}: {exc}")
                logger.exception("flake8-amp monitor failed and turned itself off; training continues")
                return None

        return guarded

    def _disable(self, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None

    # ------------------------------------------------------------------ per step (device side)
    def _capture_gradients(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.optimizer is not None and optimizer is not self.optimizer:
            return
        if self.optimizer is None:
            if not any(id(p) in self._parameter_ids for group in optimizer.param_groups for p in group["params"]):
                return  # another model's optimizer
            self.optimizer = optimizer
        if self.scaler is None:
            self.scaler = _driving_scaler()
        self._pending_grads = self._gradient_norms()
        if self._hooks:  # a sampled step: also the fraction of each layer's gradient that is exactly zero
            self._pending_zeros = self._gradient_zeros()

    def _present_gradients(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The gradients the watched parameters have, and the layer of each."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if len(grads) == len(self._params) or not grads:
            return grads, self._layer_index
        index = torch.tensor([i for i, p in enumerate(self._params) if p.grad is not None], dtype=torch.long,
                             device=self.device)
        return grads, self._layer_index[index]

    def _gradient_zeros(self) -> torch.Tensor:
        """Per layer, the fraction of its gradient elements that are exactly 0 (NaN where it has none): a
        gradient underflowing in float16 becomes zeros before its norm says so."""
        zeros = torch.zeros(len(self.layers), dtype=torch.float32, device=self.device)
        sizes = torch.zeros(len(self.layers), dtype=torch.float32, device=self.device)
        grads, layer_index = self._present_gradients()
        if grads:
            counts = torch.stack([torch.count_nonzero(g) for g in grads]).float()
            numels = torch.tensor([float(g.numel()) for g in grads], device=self.device)
            zeros.index_add_(0, layer_index, numels - counts)
            sizes.index_add_(0, layer_index, numels)
        return torch.where(sizes > 0, zeros / sizes.clamp_min(1), math.nan)

    def _gradient_norms(self) -> torch.Tensor | None:
        """Per layer, the norm of its gradients; MISSING for a layer none of whose parameters has one."""
        grads, layer_index = self._present_gradients()
        if not grads:
            return None
        complete = len(grads) == len(self._params)
        norms = _norms(grads)
        squares = torch.zeros(len(self.layers), dtype=torch.float32, device=self.device)
        squares.index_add_(0, layer_index, norms * norms)
        layer_norms = squares.sqrt()
        if not complete:
            present = torch.zeros(len(self.layers), dtype=torch.bool, device=self.device)
            present[layer_index] = True
            layer_norms = torch.where(present, layer_norms, MISSING)
        return layer_norms

    def _step(self, loss: Any) -> None:
        layer_norms = self._pending_grads if self._pending_grads is not None else self._gradient_norms()
        self._pending_grads = None
        row = torch.full((self._columns,), math.nan, dtype=torch.float32, device=self.device)
        row[_LOSS_SEEN] = 0.0
        row[_GRAD_NORM] = MISSING
        row[_LAYERS:] = MISSING
        loss_value = self._loss_tensor(loss)
        if loss_value is not None:
            row[_LOSS] = loss_value
            row[_LOSS_SEEN] = 1.0
        if layer_norms is not None:
            row[_GRAD_NORM] = layer_norms.clamp_min(0).square().sum().sqrt()
            row[_LAYERS:] = layer_norms
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if isinstance(scale, torch.Tensor):
            row[_SCALE] = scale.detach().to(device=self.device, dtype=torch.float32).reshape(())
        slot = len(self._buffer_steps)
        self._buffer[slot].copy_(row)
        self._buffer_steps.append(self.steps)
        groups = getattr(self.optimizer, "param_groups", None)
        self._lr.append(float(groups[0].get("lr", math.nan)) if groups else math.nan)
        if self._hooks:
            self._finish_sample()
        self.steps += 1
        if len(self._buffer_steps) == self.report_every:
            self._flush()
        if self.steps % self.sample_every == 0:
            self._attach_hooks()

    def _loss_tensor(self, loss: Any) -> torch.Tensor | float | None:
        if loss is None or not self._loss_ok:
            return None
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                return loss.detach().float().mean()
            return loss.detach().reshape(()).to(dtype=torch.float32)
        if isinstance(loss, (int, float)):
            return float(loss)
        self._loss_ok = False
        logger.error(
            "flake8-amp monitor: the step returned %s, not a loss (a tensor, a float, a dict with 'loss' or a "
            "tuple whose first item is the loss); the loss is not monitored, everything else is",
            type(loss).__name__,
        )
        return None

    # ------------------------------------------------------------------ activations
    def _attach_hooks(self) -> None:
        if self._hooks or not self._act_modules:
            return
        self._current_act = [None] * len(self._act_modules)
        for index, (_, module) in enumerate(self._act_modules):
            self._hooks.append(module.register_forward_hook(self._make_hook(index)))

    def _detach_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _make_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.enabled:
                return None
            try:
                tensor = output[0] if isinstance(output, (tuple, list)) and output else output
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                    self._current_act[index] = self._activation_stats(tensor.detach())
            except Exception as exc:  # noqa: BLE001
                self._disable(f"{type(exc).__name__} in an activation hook: {exc}")
                logger.exception("flake8-amp monitor failed in a forward hook and turned itself off")
            return None

        return hook

    def _activation_stats(self, x: torch.Tensor) -> torch.Tensor:
        """[max |x|, headroom (max |x| / format max), underflow ratio, distortion, all finite]."""
        dtype = str(x.dtype).removeprefix("torch.")
        # precision="fp16" asks of a float32 or bfloat16 run: would these values survive float16?
        judged_as = _PRECISION_DTYPES.get(self.precision or "", dtype) if dtype in ("float32", "bfloat16") else dtype
        fmt_max, fmt_normal = _FORMAT_LIMITS.get(judged_as, _FORMAT_LIMITS["float32"])
        # max |x| is exact, in one pass without temporaries (vector_norm's inf-norm), and propagates a NaN
        # and an Inf, so it also says whether every value is finite. The ratios (underflow, distortion)
        # are fractions: they are estimated on an evenly strided view of at most _RATIO_SAMPLE elements,
        # which costs the same whatever the activation's size (a standard error under 0.2%).
        flat = _flat(x)
        device = x.device
        wide_input = x.dtype == torch.float64  # torch refuses to narrow inside the norm
        amax = torch.linalg.vector_norm(flat, ord=math.inf, dtype=None if wide_input else torch.float32).float()
        sample = flat[:: max(1, flat.numel() // _RATIO_SAMPLE)]
        nonzero = torch.count_nonzero(sample)
        magnitude = sample.abs()
        small = torch.count_nonzero(magnitude < fmt_normal)  # zeros and subnormals (a NaN is neither)
        target = None
        if dtype in ("float32", "bfloat16") and judged_as != dtype:
            target = torch.float16 if judged_as == "float16" else torch.bfloat16
        distortion_sum = torch.zeros((), dtype=torch.float64, device=device)
        if target is not None:
            wide = magnitude.float()
            error = (wide.to(target).float() - wide).abs() / wide.clamp_min(1e-30)
            distortion_sum = error.sum(dtype=torch.float64)
        finite = torch.isfinite(amax)
        zeros = sample.numel() - nonzero
        underflow = (small - zeros).clamp_min(0) / nonzero.clamp_min(1)
        if target is not None:
            distortion = (distortion_sum / max(1, sample.numel())).float()
        else:
            distortion = torch.tensor(math.nan, device=device)
        return torch.stack([amax, amax / fmt_max, underflow.float(), distortion.float(), finite.float()])

    def _finish_sample(self) -> None:
        self._detach_hooks()
        if all(stats is None for stats in self._current_act):
            return  # attached after this step's forward pass (the decorator's first step)
        device = self.device
        rows = [s if s is not None else torch.full((5,), math.nan, device=device) for s in self._current_act]
        self._act_stats[self.steps] = torch.stack([r.to(device) for r in rows])
        zeros = self._pending_zeros
        self._pending_zeros = None
        if zeros is None:
            zeros = torch.full((len(self.layers),), math.nan, device=device)
        self._grad_zeros[self.steps] = zeros
        self._current_act = []

    # ------------------------------------------------------------------ report steps (host side)
    def _flush(self) -> None:
        if not self._buffer_steps:
            return
        count = len(self._buffer_steps)
        steps, lrs = list(self._buffer_steps), list(self._lr)
        sampled = sorted(self._act_stats)
        payload = self._buffer[:count].reshape(-1)
        if sampled:
            per_step = [torch.cat([self._act_stats[s].reshape(-1), self._grad_zeros[s]]) for s in sampled]
            payload = torch.cat([payload, torch.stack(per_step).reshape(-1).to(payload.device)])
        gathered = _gather(payload)  # one transfer (per rank under torch.distributed)
        self._buffer_steps.clear()
        self._lr.clear()
        self._act_stats.clear()
        self._grad_zeros.clear()
        self._buffer.fill_(math.nan)
        rank_zero = not _distributed() or torch.distributed.get_rank() == 0
        for rank, values in enumerate(gathered):
            grid = values[: count * self._columns]
            acts = values[count * self._columns :]
            act_rows, zero_rows = {}, {}
            modules = len(self._act_modules) * 5
            width = modules + len(self.layers)
            for i, s in enumerate(sampled):
                chunk = acts[i * width : (i + 1) * width]
                act_rows[s] = [chunk[j * 5 : (j + 1) * 5] for j in range(len(self._act_modules))]
                zero_rows[s] = chunk[modules:]
            for i, step in enumerate(steps):
                row = grid[i * self._columns : (i + 1) * self._columns]
                self._judge_step(step, row, lrs[i], act_rows.get(step), rank if len(gathered) > 1 else None,
                                 zero_rows.get(step))
        if rank_zero:
            self._log_status(steps[-1])
        # parameters added or replaced since (a new head, a re-initialised layer): watched from now on
        if self._parameters_changed() and not self._hooks:
            self._index_parameters()

    def _judge_step(self, step: int, row: list[float], lr: float, acts: list[list[float]] | None, rank: int | None,
                    zero_fractions: list[float] | None = None) -> None:
        loss, loss_seen, scale = row[_LOSS], row[_LOSS_SEEN] == 1.0, row[_SCALE]
        grad_norm = math.nan if row[_GRAD_NORM] == MISSING else row[_GRAD_NORM]
        # a layer without a gradient this step (zeroed, frozen, an eval step) is missing, not non-finite
        layer_norms = [math.nan if v == MISSING else v for v in row[_LAYERS:]]
        missing = {i for i, v in enumerate(row[_LAYERS:]) if v == MISSING}
        record: dict[str, Any] = {"step": step, "loss": loss if loss_seen else math.nan, "grad_norm": grad_norm,
                                  "scale": scale, "lr": lr}
        if rank is not None:
            record["rank"] = rank
        alerts: list[Alert] = []
        # Skipped steps: the scale went down after this step's update(). An isolated one is the GradScaler
        # probing a higher scale (it doubles, overflows once, halves): counted, not alerted. Several in a
        # row, or a scale fallen far below the highest it reached, are trouble.
        skipped = False
        if not math.isnan(scale) and rank in (None, 0):
            if self._previous_scale is not None and scale < self._previous_scale:
                skipped = True
                self.skipped_steps.append(step)
                record["skipped"] = True
                logger.debug("flake8-amp monitor: GradScaler skipped step %d (scale %s -> %s)", step,
                             _fmt(self._previous_scale), _fmt(scale))
            self._consecutive_skips = self._consecutive_skips + 1 if skipped else 0
            self._scale_trajectory.append(scale)
            self._highest_scale = max(self._highest_scale, scale)
            self._previous_scale = scale
            trajectory = " -> ".join(_fmt(v) for v in self._scale_trajectory)
            if self._consecutive_skips >= CONSECUTIVE_SKIPS and self._may_alert(("skips", None, rank), step):
                alerts.append(Alert(step, f"{self._consecutive_skips} GradScaler steps skipped in a row (scale "
                                    f"{trajectory})", scale, "isolated skips", None, rank))
            elif scale * SCALE_COLLAPSE <= self._highest_scale and self._may_alert(("collapse", None, rank), step):
                alerts.append(Alert(step, f"loss scale collapsed (highest {_fmt(self._highest_scale)}; {trajectory})",
                                    scale, f"> {_fmt(self._highest_scale / SCALE_COLLAPSE)}", None, rank))
        # NaN / Inf: at once, warm-up or not, naming the first layer where they appeared.
        first_bad_activation = None
        if acts is not None:
            record["underflow"], record["headroom"], record["distortion"] = {}, {}, {}
            for (name, _), stats in zip(self._act_modules, acts):
                amax, headroom, underflow, distortion, finite = stats
                for key, value in (("underflow", underflow), ("headroom", headroom), ("distortion", distortion)):
                    if not math.isnan(value):
                        record[key][name] = value
                if finite == 0 and first_bad_activation is None:
                    first_bad_activation = name
        # Non-finite gradients on a step the GradScaler skipped are what the scaler is for: the skip is the
        # event (above), not a NaN in a layer.
        bad_layers = [] if skipped else [
            self.layers[i] for i, v in enumerate(layer_norms) if i not in missing and not math.isfinite(v)
        ]
        if first_bad_activation or bad_layers or (loss_seen and not math.isfinite(loss)):
            # where it appeared first: a forward activation, then the loss, then the backward's gradients
            loss_bad = loss_seen and not math.isfinite(loss)
            layer = first_bad_activation or (None if loss_bad else bad_layers[0])
            metric = "activation" if first_bad_activation else ("loss" if loss_bad else "gradient")
            value = loss if metric == "loss" else math.nan
            if self._may_alert(("nonfinite", None, rank), step):
                alerts.append(Alert(step, f"non-finite {metric} (NaN/Inf)", value, "finite", layer, rank))
        # An activation past the format's max overflows there (inf in float16): at once, like NaN.
        if acts is not None:
            for (name, _), (amax, headroom, underflow, distortion, finite) in zip(self._act_modules, acts):
                if finite and headroom >= 1 and self._may_alert(("overflow", name, rank), step):
                    alerts.append(Alert(step, "activation overflow (max |x| / format max)", headroom, "< 1", name, rank))
        # Statistical alerts after warm-up.
        judged = [("loss", None, loss if loss_seen else math.nan), ("grad_norm", None, grad_norm)]
        judged += [("grad_norm", layer, v) for layer, v in zip(self.layers, layer_norms)]
        if zero_fractions is not None and not skipped:
            record["grad_zeros"] = {layer: v for layer, v in zip(self.layers, zero_fractions) if not math.isnan(v)}
            judged += [("gradient_zero_fraction", layer, v) for layer, v in record["grad_zeros"].items()]
        if acts is not None:
            for (name, _), (amax, headroom, underflow, distortion, finite) in zip(self._act_modules, acts):
                judged += [("activation_headroom", name, headroom), ("underflow_ratio", name, underflow),
                           ("distortion", name, distortion)]
                self._track_worst(name, "activation_headroom", headroom)
                self._track_worst(name, "underflow_ratio", underflow)
                self._track_worst(name, "distortion", distortion)
        for metric, layer, value in judged:
            if math.isnan(value) or not math.isfinite(value):
                continue
            baseline = self._baselines.get((metric, layer, rank))
            if baseline is None:
                baseline = self._baselines[(metric, layer, rank)] = _Baseline(metric, self.warmup_steps, self.alert_window)
            if step < self.warmup_steps:
                baseline.judge(value, math.inf)
                continue
            deviation = baseline.judge(value, self.sigma)
            if deviation is None:
                continue
            named = metric if deviation > 0 else f"{metric} fell (gradients vanishing)"
            if self._may_alert((named, layer, rank), step):
                alerts.append(Alert(step, named, value, baseline.describe(), layer, rank, deviation))
        self.history.append(record)
        if self.writer is not None and rank in (None, 0):
            self._write(record, step, layer_norms, alerts)
        for alert in alerts:
            self.alerts.append(alert)
            self._alert_count += 1
            if not _distributed() or torch.distributed.get_rank() == 0:
                logger.warning("%s", alert.message())

    def _write(self, record: dict[str, Any], step: int, layer_norms: list[float], alerts: list[Alert]) -> None:
        """The writer is a side channel: if it fails (a full disk, a closed writer), it alone is dropped,
        said once, and detection goes on."""
        try:
            for key in ("loss", "grad_norm", "scale", "lr"):
                if not math.isnan(record[key]):
                    self.writer.add_scalar(f"amp/{key}", record[key], step)
            if record.get("skipped"):
                self.writer.add_scalar("amp/skipped_step", 1.0, step)
            for layer, value in zip(self.layers, layer_norms):
                if not math.isnan(value):
                    self.writer.add_scalar(f"amp/grad_norm/{layer}", value, step)
            for key in ("underflow", "headroom", "distortion"):
                for layer, value in record.get(key, {}).items():
                    self.writer.add_scalar(f"amp/{key}/{layer}", value, step)
            if alerts and hasattr(self.writer, "add_text"):
                self.writer.add_text("amp/alerts", "\n\n".join(alert.message() for alert in alerts), step)
        except Exception as exc:  # noqa: BLE001 - the writer's failure is not the monitor's
            self.writer = None
            logger.error("flake8-amp monitor: the writer failed at step %d (%s: %s); it is no longer written to, "
                         "monitoring goes on", step, type(exc).__name__, exc)

    def _may_alert(self, key: tuple[str, str | None, int | None], step: int) -> bool:
        """One alert per metric and layer per alert window: no storms."""
        last = self._last_alert.get(key)
        if last is not None and step - last < self.alert_window:
            return False
        self._last_alert[key] = step
        return True

    def _track_worst(self, layer: str, metric: str, value: float) -> None:
        if not math.isnan(value) and value > self._worst.get((layer, metric), -math.inf):
            self._worst[(layer, metric)] = value

    def _log_status(self, step: int) -> None:
        baseline = self._baselines.get(("grad_norm", None, None)) or self._baselines.get(("grad_norm", None, 0))
        last = self.history[-1] if self.history else {}
        recent_alerts = any(a.step > step - self.report_every for a in self.alerts)
        status = "ALERT" if recent_alerts else ("warm-up" if step < self.warmup_steps else "OK")
        grad = last.get("grad_norm", math.nan)
        described = baseline.describe() if baseline and len(baseline.values) >= 8 else "learning"
        if not self._baseline_announced and step >= self.warmup_steps - 1 and baseline and len(baseline.values) >= 8:
            self._baseline_announced = True
            loss_baseline = self._baselines.get(("loss", None, None)) or self._baselines.get(("loss", None, 0))
            loss = loss_baseline.describe() if loss_baseline and len(loss_baseline.values) >= 8 else "n/a"
            logger.info("[Monitor] Baseline established after %d steps | grad_norm: %s | loss: %s",
                        self.warmup_steps, described, loss)
        logger.info("[Monitor] Step %d | grad_norm: %s (baseline: %s) | Status: %s", step, _fmt(grad), described, status)


# ---------------------------------------------------------------------- the decorator
def watch_training(
    function: Callable | None = None,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    **options: Any,
) -> Callable:
    """Decorate a train step: ``@watch_training`` or ``@watch_training(warmup_steps=100, alert_window=50)``.

    The model is the ``nn.Module`` among the step's arguments unless ``model=`` is given; the monitor is
    ``train_step.monitor``. The step's return value passes through untouched.
    """

    validate_options(**options)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")

    def decorate(step_function: Callable) -> Callable:
        @functools.wraps(step_function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = step_function(*args, **kwargs)
            monitor = wrapper.monitor
            if monitor is None and wrapper.enabled:
                try:
                    found = model or _find_module(args, kwargs)
                    if found is None:
                        wrapper.enabled = False
                        logger.error("flake8-amp monitor: no nn.Module among the step's arguments; pass model=")
                        return result
                    monitor = wrapper.monitor = TrainingMonitor(
                        found,
                        optimizer or _find(args, kwargs, torch.optim.Optimizer),
                        scaler or _find(args, kwargs, torch.amp.GradScaler),
                        **options,
                    )
                    # The first step ran before the monitor existed: record what it left behind.
                except Exception:  # noqa: BLE001
                    wrapper.enabled = False
                    logger.exception("flake8-amp monitor could not start; training continues unmonitored")
                    return result
            if monitor is not None:
                monitor.step(_extract_loss(result))
            return result

        wrapper.monitor = None  # type: ignore[attr-defined]
        wrapper.enabled = True  # type: ignore[attr-defined]
        return wrapper

    return decorate(function) if function is not None else decorate


def _extract_loss(result: Any) -> Any:
    if isinstance(result, dict):
        return result.get("loss", result)
    if isinstance(result, (tuple, list)) and result:
        return result[0]
    return result


def _find_module(args: tuple, kwargs: dict) -> nn.Module | None:
    return _find(args, kwargs, nn.Module)


def _find(args: tuple, kwargs: dict, kind: type) -> Any:
    for value in (*args, *kwargs.values()):
        if isinstance(value, kind):
            return value
    return None


# ---------------------------------------------------------------------- helpers
def validate_options(**options: Any) -> None:
    """The monitor's options, checked where they are given: a typo or a value out of range is an error
    at once, not a monitor that turns itself off at the first step."""
    known = {"warmup_steps", "alert_window", "sigma", "sample_every", "report_every", "precision", "writer",
             "sync_every_step"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown monitor option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                        f"the options are {', '.join(sorted(known))}")
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


#: modules whose output is worth its statistics though they have children: attention, where float16
#: overflows most (nn.MultiheadAttention computes its output without calling its out_proj's forward)
_ATTENTION_MODULES = (nn.MultiheadAttention,)
#: modules that cannot change magnitudes: their statistics would repeat their input's
_MAGNITUDE_KEEPING = (nn.Dropout, nn.Identity, nn.Flatten, nn.Unflatten)


def _watched_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are sampled: leaves and attention modules, in registration order."""
    watched = []
    for name, module in model.named_modules():
        if not name or isinstance(module, _MAGNITUDE_KEEPING):
            continue
        if isinstance(module, _ATTENTION_MODULES) or not any(True for _ in module.children()):
            watched.append((name, module))
    return watched


class _UntilConfigured(logging.StreamHandler):
    """Prints the monitor's lines to stderr while the application has not configured logging (as progress
    bars print without any set-up); once it has (a handler on the root logger), its handlers have them."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def _make_visible() -> None:
    """Status lines and alerts show without configuring logging: when a monitor is made and nothing has
    configured logging yet, the package logger gets a handler of its own and shows INFO."""
    if logging.getLogger().handlers or any(isinstance(h, _UntilConfigured) for h in logger.handlers):
        return
    handler = _UntilConfigured()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Each gradient's 2-norm as float32, in one fused call per kind: float16/bfloat16/float32 gradients
    accumulate in float32; float64 ones in float64 (torch refuses to narrow them inside the norm)."""
    wide = [i for i, g in enumerate(grads) if g.dtype == torch.float64]
    if not wide:
        return torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
    narrow = [i for i in range(len(grads)) if i not in set(wide)]
    norms = torch.empty(len(grads), dtype=torch.float32, device=grads[0].device)
    for indices, dtype in ((wide, None), (narrow, torch.float32)):
        if indices:
            values = torch._foreach_norm([grads[i] for i in indices], 2, dtype=dtype)
            norms[torch.tensor(indices, device=norms.device)] = torch.stack(values).float()
    return norms


def _driving_scaler() -> Any:
    """The GradScaler whose ``step()`` is driving the optimizer step in progress, if one is: found on the
    call stack, so that a scaler that is a global (the README's pattern) is watched too."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, torch.amp.GradScaler):
            return candidate
        frame = frame.f_back
    return None


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather(payload: torch.Tensor) -> list[list[float]]:
    """Every rank's payload on every rank (the ranks' payloads have the same shape), as host lists."""
    if not _distributed():
        return [payload.tolist()]
    parts = [torch.empty_like(payload) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, payload)
    return [part.tolist() for part in parts]


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}"
