"""How to buffer and reduce: a device-side ring buffer, one row per step, brought to the host in one
transfer per report (one all_gather under torch.distributed), and turned into named :class:`StepRow`s."""

from __future__ import annotations

import math
from typing import Any

import torch

from .compute import ACTIVATION_COLUMNS, HISTOGRAM_EXPONENTS, MISSING
from .judge import ActivationRow, StepRow

#: the ring buffer's columns, then one gradient norm per layer
STEP_COLUMNS = ("loss", "grad_norm", "scale", "lr")
_LOSS, _GRAD_NORM, _SCALE, _LR = range(len(STEP_COLUMNS))


class StepBuffer:
    """``rows`` steps of (loss, grad_norm, scale, lr, one norm per layer) on the device, plus the sampled
    steps' activation rows, gradient zero fractions and (opt-in) exponent histograms. Host-side facts
    (step numbers, whether a loss was given, skips the host knew of, forward order) are kept beside it.

    In host memory (``on_host``, a CPU model) a row is a Python list: reading a CPU tensor costs no
    synchronisation, and a few Python conversions cost less than the device writes they replace.
    """

    def __init__(self, rows: int, layers: list[str], modules: list[str], device: torch.device, on_host: bool) -> None:
        self.layers, self.modules, self.device, self.on_host = layers, modules, device, on_host
        self.columns = len(STEP_COLUMNS) + len(layers)
        self._host_rows: list[list[float]] = []
        with torch.inference_mode(False), torch.no_grad():
            self._rows = None if self.on_host else torch.empty((rows, self.columns), dtype=torch.float32, device=device)
            if self._rows is not None:
                self._reset(self._rows)
        self.steps: list[int] = []
        self._loss_given: list[bool] = []
        self._skipped: list[bool | None] = []
        # sampled step -> (modules x ACTIVATION_COLUMNS, each module's place in the forward order, gradient
        # zero fractions); every module has a row (NaN where it did not run) so that the ranks' payloads
        # have one shape
        self._samples: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._histograms: dict[int, torch.Tensor] = {}
        self._facts: dict[int, dict[int, tuple[float, int]]] = {}
        with torch.inference_mode(False), torch.no_grad():
            self._nan_row = torch.full((len(ACTIVATION_COLUMNS),), math.nan, device=device)
            self._places = list(torch.arange(len(modules), dtype=torch.float32, device=device).unbind()) + [
                torch.full((), math.nan, device=device)]

    @staticmethod
    def _reset(rows: torch.Tensor) -> None:
        rows[:, _LOSS].fill_(0.0)  # not a value: whether a loss was given is kept on the host
        rows[:, _GRAD_NORM].fill_(MISSING)
        rows[:, _SCALE].fill_(math.nan)
        rows[:, _LR].fill_(math.nan)
        rows[:, len(STEP_COLUMNS):].fill_(MISSING)

    def __len__(self) -> int:
        return len(self.steps)

    def record(self, step: int, loss: torch.Tensor | float | None, layer_squares: Any, present: Any,
               scale: torch.Tensor | None, lr: Any, skipped: bool | None) -> None:
        """One step: a few device writes into its row, no host read. ``layer_squares`` are the layers'
        squared gradient norms; ``present`` (None: all present) marks the layers that had a gradient: device
        tensors, or Python lists in host memory. ``loss`` and ``scale`` are 0-d or one-element tensors."""
        if self.on_host:
            self._record_on_host(loss, layer_squares, present, scale, lr)
        else:
            self._record_on_device(loss, layer_squares, present, scale, lr)
        self.steps.append(step)
        self._loss_given.append(loss is not None)
        self._skipped.append(skipped)

    def _record_on_device(self, loss: torch.Tensor | float | None, layer_squares: torch.Tensor | None,
                          present: torch.Tensor | None, scale: torch.Tensor | None, lr: Any) -> None:
        # Python numbers go in with fill_ (a kernel argument): `row[i] = 0.5` would copy a host tensor to the
        # device, which waits for it (set_sync_debug_mode flags it)
        row = self._rows[len(self.steps)]
        if isinstance(loss, torch.Tensor):
            row[_LOSS].copy_(loss.reshape(()), non_blocking=True)
        elif loss is not None:
            row[_LOSS].fill_(loss)
        if layer_squares is not None:
            row[_GRAD_NORM].copy_(layer_squares.sum().sqrt())
            norms = layer_squares.sqrt()
            row[len(STEP_COLUMNS):].copy_(norms if present is None else torch.where(present, norms, MISSING))
        if scale is not None:
            row[_SCALE].copy_(scale.reshape(()), non_blocking=True)
        if isinstance(lr, torch.Tensor):
            row[_LR].copy_(lr.detach().reshape(()), non_blocking=True)
        elif isinstance(lr, (int, float)):
            row[_LR].fill_(float(lr))

    def _record_on_host(self, loss: torch.Tensor | float | None, layer_squares: list[float] | None,
                        present: list[bool] | None, scale: torch.Tensor | None, lr: Any) -> None:
        row = [0.0, MISSING, math.nan, math.nan]
        if loss is not None:
            row[_LOSS] = float(loss)
        if layer_squares is not None:
            row[_GRAD_NORM] = math.sqrt(sum(layer_squares))
            row += [math.sqrt(value) if present is None or present[i] else MISSING
                    for i, value in enumerate(layer_squares)]
        else:
            row += [MISSING] * len(self.layers)
        if scale is not None:
            row[_SCALE] = float(scale)
        if isinstance(lr, (int, float, torch.Tensor)):
            row[_LR] = float(lr)
        self._host_rows.append(row)

    def finite(self, with_gradients: bool) -> bool:
        """Whether the last step's loss (and gradient norm) are finite. Reads the device: only for a buffer
        in host memory, where that costs no synchronisation."""
        if self.on_host:
            row = self._host_rows[-1]
            return math.isfinite(row[_LOSS]) and (not with_gradients or math.isfinite(row[_GRAD_NORM]))
        row = self._rows[len(self.steps) - 1]
        return bool(torch.isfinite(row[: _GRAD_NORM + 1 if with_gradients else _LOSS + 1]).all())

    def sample(self, step: int, activations: dict[int, torch.Tensor], facts: dict[int, tuple[float, int]],
               zero_fractions: torch.Tensor) -> None:
        """A sampled step's activation statistics (module position -> row, in the order the modules ran) and
        what the host knows of each (the judged format's max, the values counted)."""
        place = {index: k for k, index in enumerate(activations)}
        rows = torch.stack([activations.get(i, self._nan_row).to(self.device) for i in range(len(self.modules))])
        places = torch.stack([self._places[place.get(i, -1)] for i in range(len(self.modules))])
        self._samples[step] = (rows, places, zero_fractions)
        self._facts[step] = facts

    def histogram(self, step: int, histograms: torch.Tensor) -> None:
        self._histograms[step] = histograms

    def drain(self) -> list[list[StepRow]]:
        """Every buffered step as named rows, one list per rank (one list without torch.distributed), read
        in one transfer; the buffer is empty afterwards."""
        count = len(self.steps)
        if not count:
            return []
        if self.on_host:
            rows = torch.tensor(self._host_rows, dtype=torch.float32, device=self.device)
        else:
            rows = self._rows[:count]
        parts = [rows.reshape(-1)]
        sampled = sorted(self._samples)
        for step in sampled:
            rows, places, zeros = self._samples[step]
            parts += [rows.reshape(-1), places, zeros.reshape(-1).to(self.device)]
        histogram_steps = sorted(self._histograms)
        parts += [self._histograms[step].reshape(-1).to(self.device) for step in histogram_steps]
        gathered = _gather(torch.cat(parts))
        steps, loss_given, skipped, facts = self.steps, self._loss_given, self._skipped, self._facts
        self.steps, self._loss_given, self._skipped, self._samples, self._histograms = [], [], [], {}, {}
        self._facts = {}
        if self.on_host:
            self._host_rows = []
        else:
            self._reset(self._rows)
        ranks = []
        for rank, values in enumerate(gathered):
            position = count * self.columns
            activations: dict[int, list[ActivationRow]] = {}
            zero_rows: dict[int, list[float | None]] = {}
            width = len(ACTIVATION_COLUMNS)
            for step in sampled:
                flat = values[position : position + width * len(self.modules)]
                position += width * len(self.modules)
                places = values[position : position + len(self.modules)]
                position += len(self.modules)
                ran = sorted((place, i) for i, place in enumerate(places) if not math.isnan(place))
                activations[step] = [_activation_row(self.modules[i], flat[i * width : (i + 1) * width],
                                                     facts[step].get(i)) for _, i in ran]
                zero_rows[step] = [None if math.isnan(v) else v for v in values[position : position + len(self.layers)]]
                position += len(self.layers)
            histograms: dict[int, dict[str, Any]] = {}
            bins = HISTOGRAM_EXPONENTS[1] - HISTOGRAM_EXPONENTS[0] + 1
            for step in histogram_steps:
                flat = values[position : position + bins * len(self.layers)]
                position += bins * len(self.layers)
                histograms[step] = {layer: flat[i * bins : (i + 1) * bins] for i, layer in enumerate(self.layers)}
            rows = []
            for i, step in enumerate(steps):
                row = values[i * self.columns : (i + 1) * self.columns]
                rows.append(StepRow(
                    step=step,
                    loss=row[_LOSS] if loss_given[i] else None,
                    grad_norm=None if row[_GRAD_NORM] == MISSING else row[_GRAD_NORM],
                    scale=row[_SCALE],
                    lr=row[_LR],
                    layer_norms=[None if v == MISSING else v for v in row[len(STEP_COLUMNS):]],
                    rank=rank if len(gathered) > 1 else None,
                    skipped=skipped[i],
                    activations=activations.get(step),
                    zero_fractions=zero_rows.get(step),
                    histograms=histograms.get(step, {}),
                ))
            ranks.append(rows)
        return ranks


def _activation_row(name: str, values: list[float], facts: tuple[float, int] | None) -> ActivationRow:
    """A module's row from its device counts and the host's facts (another rank's modules are the same
    model's: the facts of this rank's module hold for them)."""
    amax, small, nonzero, distortion = values
    fmt_max, sampled = facts or (math.nan, 0)
    underflow = max(0.0, small - (sampled - nonzero)) / max(nonzero, 1.0)  # non-zero values below normal
    return ActivationRow(name, amax, amax / fmt_max, underflow, distortion, not math.isfinite(amax), nonzero)


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather(payload: torch.Tensor) -> list[list[float]]:
    """Every rank's payload on every rank, as host lists. The ranks' payloads have the same shape: they
    run the same steps, sample the same ones and watch the same model."""
    if not distributed():
        return [payload.tolist()]
    parts = [torch.empty_like(payload) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, payload)
    return [part.tolist() for part in parts]
