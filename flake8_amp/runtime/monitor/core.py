"""``TrainingMonitor``: what to watch, computed on the device, buffered, judged on the host."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from . import outputs
from .buffer import StepBuffer, distributed
from .compute import FORMAT_LIMITS, GradientReader, activation_stats, exponent_histograms, judged_format
from .judge import Alert, Judge, MonitorSummary
from .options import validate_options
from .watch import ActivationHooks, LayerIndex, ScalerDecisions, driving_scaler, host_scale

logger = logging.getLogger("flake8_amp.runtime")

#: the scale a GradScaler starts at: what precision="fp16" assumes a run without one would train at
_DEFAULT_LOSS_SCALE = 2.0**16


class TrainingMonitor:
    """Watches a model's training steps; call :meth:`step` once per optimizer step.

    Args:
        model: the module being trained.
        optimizer / scaler: optional; found when they step (any torch optimizer over the model's parameters;
            the GradScaler driving it), or among a decorated step's arguments.
        warmup_steps: steps used to learn each metric's baseline (NaN/Inf alert during warm-up too).
        alert_window: steps of history a judgement looks at; one alert per metric and layer per window.
        sigma: robust deviations (median/MAD) above the baseline that raise an alert.
        sample_every: steps between activation samples (forward hooks are attached only then).
        report_every: steps between host reads (default: ``alert_window``).
        precision: "fp16" or "bf16": judge float32 (and, for "fp16", bfloat16) activations and gradients
            against that format's range: would this run survive it?
        writer: anything with ``add_scalar(tag, value, step)`` (a TensorBoard SummaryWriter).
        histograms: also write each layer's gradient exponent histogram at report steps (needs the writer's
            ``add_histogram_raw``).
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
        histograms: bool = False,
        sync_every_step: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"TrainingMonitor needs an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        validate_options(warmup_steps=warmup_steps, alert_window=alert_window, sigma=sigma, sample_every=sample_every,
                         report_every=report_every, precision=precision, histograms=histograms,
                         sync_every_step=sync_every_step)
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.warmup_steps, self.alert_window, self.sigma = warmup_steps, alert_window, sigma
        self.sample_every = sample_every
        self.report_every = 1 if sync_every_step else (report_every or alert_window)
        self.precision, self.histograms = precision, histograms
        self._writer = outputs.Writer(writer)
        self.steps = 0
        self.enabled = True
        self.disabled_reason: str | None = None
        self._loss_ok = True
        self._judge = Judge(warmup_steps=warmup_steps, alert_window=alert_window, sigma=sigma)
        self._hooks = ActivationHooks(self._activation_stats, self._hook_failed)
        self._decisions = ScalerDecisions()
        self._decisions.watch(scaler)
        self._stepped = False  # whether the optimizer stepped since the last step()
        self._paused = False
        self._pending: dict[str, Any] = {}  # what the optimizer's step hook read for this step
        self._index_parameters()
        self._watch_optimizers()
        outputs.make_visible()
        self._hooks.attach(self._index.modules)  # step 0 is sampled when the monitor exists before its forward

    # ------------------------------------------------------------------ what users read
    @property
    def alerts(self):
        return self._judge.alerts

    @property
    def history(self):
        return self._judge.history

    @property
    def skipped_steps(self):
        return self._judge.skipped_steps

    @property
    def layers(self) -> list[str]:
        return self._index.layers

    @property
    def writer(self) -> Any:
        return self._writer.writer

    def layers_with_activations(self) -> list[str]:
        return [name for name, _ in self._index.modules]

    def step(self, loss: Any = None) -> None:
        """Record one training step (call after the optimizer step). Never raises."""
        if not self.enabled or self._paused:
            return
        # the monitor's own tensors are never inference tensors, whatever mode the step ran in
        with torch.inference_mode(False), torch.no_grad():
            self._guarded(self._step)(loss)

    def summary(self) -> MonitorSummary:
        """The run's story so far; also logged at INFO."""
        self._guarded(self._flush)(False)
        result = self._judge.summary(self.steps, self.disabled_reason)
        logger.info("%s", result)
        return result

    def to_jsonl(self, path: str | Path) -> Path:
        """One JSON object per recorded step (the last HISTORY_STEPS steps), then one per alert."""
        self._guarded(self._flush)(False)
        return outputs.write_jsonl(path, self.history, self.alerts)

    def plot(self, path: str | Path) -> Path:
        """A PNG of loss, gradient norm, loss scale (skipped steps marked), per-layer activation headroom,
        underflow and distortion; alerts as red lines; log axes where values span decades."""
        self._guarded(self._flush)(False)
        return outputs.plot(path, list(self.history), self.alerts, self.layers_with_activations())

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Steps run inside are not watched and cost nothing: no hook runs, :meth:`step` returns at once,
        and they are neither judged nor counted (a phase apart from training: an evaluation that calls
        the decorated step, a learning-rate range test). Watching resumes where it stopped."""
        if self._paused or not self.enabled:
            yield
            return
        sampling = self._hooks.attached
        self._paused = True
        self.close()
        try:
            yield
        finally:
            self._paused = False
            if self.enabled:
                self._watch_optimizers()
                if sampling:
                    self._hooks.attach(self._index.modules)

    def close(self) -> None:
        """Remove every hook the monitor attached."""
        self._hooks.detach()
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

    def _hook_failed(self, exc: Exception) -> None:
        self._disable(f"{type(exc).__name__} in an activation hook: {exc}")
        logger.error("flake8-amp monitor failed in a forward hook and turned itself off; training continues",
                     exc_info=exc)

    def _disable(self, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason
        self.close()

    # ------------------------------------------------------------------ what to watch
    def _watch_optimizers(self) -> None:
        # Gradients are read when an optimizer over the model's parameters steps, whether it was handed
        # over or not (torch's global step hook): by the time the step returns, zero_grad may have run.
        self._optimizer_hook = register_optimizer_step_pre_hook(self._guarded(self._capture_gradients))

    def _index_parameters(self) -> None:
        """Which parameters are watched, in which layer; the buffer sized for them. Run again at a report
        step when the model's parameters changed (a new head, a re-initialised layer)."""
        self._index = LayerIndex(self.model)
        self.device = self._index.device
        on_host = self._host_memory()
        self._gradients = GradientReader(self._index.layer_of, len(self._index.layers), self.device, on_host)
        self._gradients.prepare(self._index.params)
        self._buffer = StepBuffer(self.report_every, self._index.layers, self.layers_with_activations(), self.device,
                                  on_host)
        self._judge.layer_names = self._index.layers

    # ------------------------------------------------------------------ per step (device side, no host read)
    def _capture_gradients(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.optimizer is not None and optimizer is not self.optimizer:
            return
        if self.optimizer is None:
            if not self._index.watches(optimizer):
                return  # another model's optimizer
            self.optimizer = optimizer
        if self.scaler is None:
            self.scaler = driving_scaler()
            self._decisions.watch(self.scaler)
        self._stepped = True
        self._pending = self._read_gradients(report=len(self._buffer) == self.report_every - 1)

    def _read_gradients(self, report: bool) -> dict[str, Any]:
        """Per layer, the squared norm of its gradients and whether it had any; on sampled steps the
        fraction of its gradient elements that are zero (or would be in the judged format); at report steps
        with ``histograms``, their exponent histograms."""
        index = self._index
        grads = [p.grad for p in index.params]
        squares = self._gradients.squares(grads)
        if squares is None:
            return {}
        read: dict[str, Any] = {"squares": squares[0], "present": squares[1]}
        if self._hooks.attached:
            read["zeros"] = self._gradients.zero_fractions(grads, self._flush_threshold(grads))
        if report and self.histograms and self._writer.writer is not None:
            read["histograms"] = exponent_histograms(grads, index.layer_of, len(index.layers), self.device)
        return read

    def _flush_threshold(self, grads: list[torch.Tensor | None]) -> torch.Tensor | None:
        """With ``precision="fp16"``, gradients wider than float16 are judged by what a float16 backward
        would keep: an element below float16's smallest subnormal divided by the loss scale (the scaler's,
        or the scale GradScaler starts at) would have been flushed to zero. None: count exact zeros."""
        if self.precision != "fp16":
            return None
        dtype = next(g.dtype for g in grads if g is not None)
        if judged_format(dtype, self.precision) != "float16" or dtype == torch.float16:
            return None
        smallest = FORMAT_LIMITS["float16"][2]
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        if isinstance(scale, torch.Tensor) and getattr(self.scaler, "_enabled", True):
            return smallest / scale.detach().to(device=self.device, dtype=torch.float32).reshape(())
        return torch.full((), smallest / _DEFAULT_LOSS_SCALE, device=self.device)

    def _activation_stats(self, tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[float, int]]:
        return activation_stats(tensor, self.precision)

    def _step(self, loss: Any) -> None:
        read = self._pending if self._stepped else self._read_gradients(report=False)
        skipped = self._decisions.skipped(self.optimizer, self._stepped)
        self._pending, self._stepped = {}, False
        if skipped is not None:
            scale = host_scale(self.scaler) if skipped and self._host_memory() else None
            self._log(self._judge.skip_known(self.steps, skipped, scale))
        loss_value = self._loss_tensor(loss)
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        scale = scale if isinstance(scale, torch.Tensor) and scale.numel() == 1 else None
        groups = getattr(self.optimizer, "param_groups", None)
        self._buffer.record(self.steps, loss_value, read.get("squares"), read.get("present"), scale,
                            groups[0].get("lr") if groups else None, skipped)
        if self._hooks.attached:
            activations, facts = self._hooks.detach()
            if activations:  # else attached after this step's forward pass (the decorator's first step)
                zeros = read.get("zeros")
                if zeros is None:
                    zeros = torch.full((len(self._index.layers),), math.nan, device=self.device)
                self._buffer.sample(self.steps, activations, facts, zeros)
        if "histograms" in read:
            self._buffer.histogram(self.steps, read["histograms"])
        self.steps += 1
        self._decisions.watch(self.scaler)
        if len(self._buffer) == self.report_every:
            self._flush(True)
        elif self._nonfinite_known(loss_value, skipped):
            self._flush(False)  # known on the host already: alert now, not at the report step
        if self.steps % self.sample_every == 0:
            self._hooks.attach(self._index.modules)

    def _nonfinite_known(self, loss: Any, skipped: bool | None) -> bool:
        """Whether this step was non-finite, where the host can tell without a synchronisation: a loss given
        as a Python float, or the step's values in host memory (a CPU model). Non-finite gradients on a
        step the GradScaler skipped are its own event, judged at the report."""
        if isinstance(loss, float):
            return not math.isfinite(loss)
        return self._host_memory() and not self._buffer.finite(with_gradients=not skipped)

    def _host_memory(self) -> bool:
        """Whether the monitor's tensors live in host memory, where reading them synchronises nothing."""
        return self.device.type == "cpu"

    def _loss_tensor(self, loss: Any) -> torch.Tensor | float | None:
        if loss is None or not self._loss_ok:
            return None
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                return loss.detach().float().mean()
            return loss.detach()
        if isinstance(loss, (int, float)):
            return float(loss)
        self._loss_ok = False
        logger.error(
            "flake8-amp monitor: the step returned %s, not a loss (a tensor, a float, a dict with 'loss' or a "
            "tuple whose first item is the loss); the loss is not monitored, everything else is",
            type(loss).__name__,
        )
        return None

    # ------------------------------------------------------------------ report steps (host side)
    def _flush(self, status: bool) -> None:
        ranks = self._buffer.drain()  # the one transfer (one all_gather under torch.distributed)
        if not ranks:
            return
        rank_zero = not distributed() or torch.distributed.get_rank() == 0
        for rows in ranks:
            for row in rows:
                alerts = self._judge.judge(row)
                if row.rank in (None, 0):
                    self._writer.write(self.history[-1], zip(self.layers, row.layer_norms), alerts)
                if rank_zero:
                    self._log(alerts)
        if status and rank_zero:
            for line in self._judge.status_lines(ranks[0][-1].step, self.report_every):
                logger.info("%s", line)
        if self._index.changed(self.model) and not self._hooks.attached:
            self._index_parameters()

    def _log(self, alerts: list[Alert]) -> None:
        if not distributed() or torch.distributed.get_rank() == 0:
            for alert in alerts:
                logger.warning("%s", alert.message())
