"""``compare_training``: the same model trained side by side in float32, bfloat16 and float16, and
``gradient_overflow_risk``: which gradients a float16 loss scale would overflow or flush to zero.

``compare_training`` builds the model once (``make_model()``, seeded) and trains one deep copy per
precision, in lockstep: every step, each copy gets the same batch, the same random numbers (dropout) and
its own optimizer; float16 runs with a GradScaler ("fp16") or without one ("fp16-noscale", to show what
loss scaling prevents). It records per step the loss, the gradient norm (unscaled), the loss scale and
whether the step was skipped, and at sampled steps each layer's weight divergence from the float32 run:
``||w - w_fp32|| / ||w_fp32||`` over the layer's parameters (inf once the weights are no longer finite).

Autocast is the target device's, as in :func:`~.compare.compare_precision`: a model on the CPU trains under
CUDA's autocast policy emulated (``device_type="cpu"`` for CPU autocast's); the GradScaler works on the
parameters' device.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..cuda_emulation import CudaEmulation
from ..formats import json_safe
from .common import _emulation, _g, _model_device, _resolve_device_type, _split_inputs, _table

__all__ = ["compare_training", "TrainingComparison", "StepRecord", "PRECISIONS"]

#: precision name -> (autocast dtype or None for float32, whether a GradScaler scales the loss)
PRECISIONS: dict[str, tuple[torch.dtype | None, bool]] = {
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, True),
    "fp16-noscale": (torch.float16, False),
}
#: the default optimizer: ``torch.optim.AdamW(params, lr=DEFAULT_LR)``
DEFAULT_LR = 1e-3


# ------------------------------------------------------------------------------------------ compare_training
@dataclass
class StepRecord:
    """One optimizer step of one precision (``step`` counts from 1). ``grad_norm``: the L2 norm of all
    gradients, unscaled (inf or NaN when they are not finite); ``scale``: the loss scale the backward ran
    at (1 without a scaler); ``skipped``: the scaler skipped the optimizer step (inf/NaN gradients)."""

    step: int
    loss: float
    grad_norm: float
    scale: float
    skipped: bool


@dataclass
class TrainingComparison:
    """What :func:`compare_training` recorded. ``divergence[precision][layer]`` holds one value per step in
    ``sample_steps``: the layer's relative L2 distance from the ``reference`` run's weights."""

    precisions: list[str]
    reference: str
    steps: int
    device_type: str
    emulated: bool
    optimizer: str
    history: dict[str, list[StepRecord]]
    sample_steps: list[int]
    divergence: dict[str, dict[str, list[float]]]
    notes: list[str] = field(default_factory=list)

    @property
    def final_divergence(self) -> dict[str, dict[str, float]]:
        return {p: {layer: values[-1] for layer, values in layers.items()} for p, layers in self.divergence.items()}

    def summary(self, precision: str) -> dict[str, Any]:
        """First, final and lowest loss; skipped steps; the first step whose loss is not finite; steps whose
        gradients were all zero; the largest final weight divergence over layers."""
        records = self.history[precision]
        losses = [r.loss for r in records]
        finite = [loss for loss in losses if math.isfinite(loss)]
        first_nonfinite = next((r.step for r in records if not math.isfinite(r.loss)), None)
        final = self.final_divergence.get(precision, {})
        return {
            "first_loss": losses[0] if losses else math.nan,
            "final_loss": losses[-1] if losses else math.nan,
            "min_loss": min(finite) if finite else math.nan,
            "skipped": sum(r.skipped for r in records),
            "first_nonfinite_step": first_nonfinite,
            "zero_gradient_steps": sum(r.grad_norm == 0 for r in records),
            "max_divergence": max(final.values()) if final else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {p: self.summary(p) for p in self.precisions}
        data["final_divergence"] = self.final_divergence
        return json_safe(data)

    def __str__(self) -> str:
        where = f"autocast on {self.device_type}" + (", CUDA's policy emulated on this CPU" if self.emulated else "")
        lines = [f"compare_training: {self.steps} steps of {self.optimizer}; {where}; reference {self.reference}"]
        rows = []
        for p in self.precisions:
            s = self.summary(p)
            rows.append([p, _g(s["first_loss"]), _g(s["final_loss"]), _g(s["min_loss"]), str(s["skipped"]),
                         "-" if s["first_nonfinite_step"] is None else str(s["first_nonfinite_step"]),
                         str(s["zero_gradient_steps"]), "-" if p == self.reference else _g(s["max_divergence"])])
        lines.append(_table(["precision", "first loss", "final loss", "min loss", "skipped", "non-finite from",
                             "zero-grad steps", "max divergence"], rows, right=range(1, 8)))
        lines.append("")
        headers = ["step"]
        for p in self.precisions:
            headers += [f"{p} loss", "grad norm"] + (["scale", "skip"] if PRECISIONS[p][1] else [])
        rows = []
        for step in self.sample_steps:
            row = [str(step)]
            for p in self.precisions:
                record = self.history[p][step - 1]
                row += [_g(record.loss), _g(record.grad_norm)]
                if PRECISIONS[p][1]:
                    row += [f"{record.scale:g}", "yes" if record.skipped else ""]
            rows.append(row)
        lines.append(_table(headers, rows, right=range(0, len(headers))))
        others = [p for p in self.precisions if p != self.reference]
        if others and self.sample_steps:
            lines.append("")
            lines.append(f"weight divergence from {self.reference} at step {self.sample_steps[-1]} "
                         "(||w - w_ref|| / ||w_ref|| per layer):")
            final = self.final_divergence
            layers = list(final[others[0]])
            rows = [[layer, *(_g(final[p][layer]) for p in others)] for layer in layers]
            lines.append(_table(["layer", *others], rows, right=range(1, len(others) + 1)))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Loss, gradient norm, loss scale (skipped steps marked) and the largest layer divergence over the
        sampled steps, one line per precision, side by side in one figure written to ``path``."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("TrainingComparison.plot() needs matplotlib: pip install matplotlib") from exc
        figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        (loss_ax, norm_ax), (scale_ax, div_ax) = axes
        zero_gradients: list[tuple[str, str, list[int]]] = []
        norm_ax.set_yscale("log")
        for p in self.precisions:
            records = self.history[p]
            steps = [r.step for r in records]
            line = loss_ax.plot(steps, [_plottable(r.loss) for r in records], label=p)[0]
            color = line.get_color()
            bad = [r.step for r in records if not math.isfinite(r.loss)]
            if bad:
                loss_ax.scatter(bad[:1], [_top(loss_ax)], marker="x", color=color, zorder=3)
            norm_ax.plot(steps, [_plottable(r.grad_norm, positive=True) for r in records], color=color, label=p)
            zero = [r.step for r in records if r.grad_norm == 0]
            if zero:
                zero_gradients.append((p, color, zero))
            scale_ax.plot(steps, [r.scale for r in records], color=color, label=p)
            skipped = [r for r in records if r.skipped]
            if skipped:
                scale_ax.scatter([r.step for r in skipped], [r.scale for r in skipped], marker="v", color=color,
                                 zorder=3, label=f"{p}: skipped step")
            if p != self.reference and self.sample_steps:
                worst = [max((values[i] for values in self.divergence[p].values()), default=0.0)
                         for i in range(len(self.sample_steps))]
                div_ax.plot(self.sample_steps, [_plottable(v, positive=True) for v in worst], marker="o", color=color,
                            label=p)
        bottom = norm_ax.get_ylim()[0]
        for p, color, zero in zero_gradients:  # a log axis has no 0: marked along its bottom
            norm_ax.scatter(zero, [bottom] * len(zero), marker="_", color=color, zorder=3, label=f"{p}: all zero")
        loss_ax.set_title("loss")
        norm_ax.set_title("gradient norm (unscaled; _ on the bottom: all zero)")
        scale_ax.set_title("loss scale (v: skipped step)")
        scale_ax.set_yscale("log", base=2)
        div_ax.set_title(f"weight divergence from {self.reference} (largest layer)")
        div_ax.set_yscale("log")
        for ax in (loss_ax, norm_ax, scale_ax, div_ax):
            ax.set_xlabel("step")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        figure.suptitle(f"Training side by side ({self.steps} steps, {self.optimizer})")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


class _Run:
    """One precision's copy of the model, its optimizer, scaler and random-number state."""

    def __init__(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                 rng: tuple[Any, Any]) -> None:
        self.name = name
        self.dtype = PRECISIONS[name][0]
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.rng = rng
        self.history: list[StepRecord] = []


def compare_training(
    make_model: Callable[[], nn.Module],
    make_batches: Callable[[], Iterable[Any] | Callable[[int], Any]],
    steps: int,
    precisions: Sequence[str] = ("fp32", "bf16", "fp16"),
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    device_type: str | None = None,
    seed: int = 0,
    sample_every: int | None = None,
) -> TrainingComparison:
    """Train one copy of ``make_model()`` per precision for ``steps`` steps, side by side, on the same data.

    ``make_batches()`` returns an iterable of ``(inputs, target)`` or a function ``step -> (inputs,
    target)``; inputs are a tensor, a tuple of positional arguments or a dict of keyword arguments. Each
    batch is drawn once and given to every copy. ``loss_fn(output, target)``; by default cross-entropy for
    an integer target, mean squared error for a floating one, and the output itself (a scalar loss the
    model computed) when the target is None. ``optimizer``: a factory ``params -> optimizer`` (default
    ``AdamW(lr=1e-3)``). Precisions: "fp32", "bf16", "fp16" (with a GradScaler), "fp16-noscale". The
    reference for weight divergence is "fp32" when listed, else the first. ``seed`` seeds ``make_model``,
    the data and dropout (the data draws from a random stream of its own, each copy from one that starts
    where the others' do); the caller's random-number state is put back afterwards (CUDA's only when CUDA
    was initialised before the call). Divergence is sampled every ``sample_every`` steps (default: a tenth
    of the run) and at the last one. The model and the batches are used where they are: a model on the CPU
    trains under CUDA's autocast policy emulated, unless ``device_type="cpu"``.
    """
    if isinstance(make_model, nn.Module):
        raise TypeError("compare_training() needs make_model, a function that returns a fresh model (lambda: Net()), "
                        "not a model: every precision starts from one copy of what it returns")
    if not callable(make_model) or not callable(make_batches):
        raise TypeError("compare_training(make_model, make_batches, steps): make_model and make_batches are "
                        "functions (make_model() returns a fresh model; make_batches() the batches)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(precisions, str):
        precisions = [precisions]
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"unknown precision {unknown[0] if unknown else None!r}; known: {', '.join(PRECISIONS)}")
    sample_every = sample_every or max(1, steps // 10)
    make_optimizer = optimizer or (lambda params: torch.optim.AdamW(params, lr=DEFAULT_LR))

    saved_rng = _rng_state(all_cuda=True)
    try:
        torch.manual_seed(seed)
        base = make_model()
        if not isinstance(base, nn.Module):
            raise TypeError(f"make_model() must return a torch.nn.Module, got {type(base).__name__}")
        device = _model_device(base, ())
        resolved, emulate = _resolve_device_type("autocast", device_type, device)
        emulated = emulate or (resolved == "cuda" and device.type == "cpu" and CudaEmulation._active)
        cuda_rng = device.type == "cuda"
        start_rng = _rng_state(cuda_rng)
        runs = []
        for name in precisions:
            model = copy.deepcopy(base)
            model.train()
            scaler = torch.amp.GradScaler(device.type) if PRECISIONS[name][1] else None
            runs.append(_Run(name, model, make_optimizer(model.parameters()), scaler, start_rng))
        del base
        reference = "fp32" if "fp32" in precisions else precisions[0]
        reference_run = next(run for run in runs if run.name == reference)
        torch.manual_seed(seed + 1)
        batches = make_batches()
        data_rng = _rng_state(cuda_rng)
        iterator = None if callable(batches) else iter(batches)
        sample_steps: list[int] = []
        divergence: dict[str, dict[str, list[float]]] = {run.name: {} for run in runs if run is not reference_run}
        notes: list[str] = []
        for step in range(1, steps + 1):
            _set_rng_state(data_rng)
            try:
                batch = batches(step - 1) if iterator is None else next(iterator)
            except StopIteration:
                notes.append(f"make_batches() ran out after {step - 1} batches; {steps} steps were asked for")
                break
            data_rng = _rng_state(cuda_rng)
            inputs, target = _unpack_batch(batch)
            for run in runs:
                _set_rng_state(run.rng)
                run.history.append(_train_step(run, inputs, target, loss_fn, resolved, emulate, step))
                run.rng = _rng_state(cuda_rng)
            if step % sample_every == 0 or step == steps:
                _sample_divergence(reference_run, runs, divergence, step, sample_steps)
        done = len(reference_run.history)
        if done and (not sample_steps or sample_steps[-1] != done):
            _sample_divergence(reference_run, runs, divergence, done, sample_steps)
    finally:
        _set_rng_state(saved_rng)
    if done == 0:
        raise ValueError("make_batches() gave no batch")
    optimizer_name = type(runs[0].optimizer).__name__
    if optimizer is None:
        optimizer_name += f"(lr={DEFAULT_LR:g})"
    return TrainingComparison(
        precisions=precisions,
        reference=reference,
        steps=done,
        device_type=resolved,
        emulated=emulated,
        optimizer=optimizer_name,
        history={run.name: run.history for run in runs},
        sample_steps=sample_steps,
        divergence=divergence,
        notes=notes,
    )


def _train_step(run: _Run, inputs: Any, target: Any, loss_fn: Callable | None, device_type: str, emulate: bool,
                step: int) -> StepRecord:
    args, kwargs = _split_inputs(inputs, "compare_training")
    run.optimizer.zero_grad(set_to_none=True)
    with _forward_region(run.dtype, device_type, emulate):
        output = run.model(*args, **kwargs)
        loss = _loss(output, target, loss_fn)
    scale = 1.0
    if run.scaler is not None:
        scale = float(run.scaler.get_scale())
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        norm = _grad_norm(run.model)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        skipped = float(run.scaler.get_scale()) < scale
    else:
        loss.backward()
        norm = _grad_norm(run.model)
        run.optimizer.step()
        skipped = False
    return StepRecord(step=step, loss=float(loss.detach().float()), grad_norm=norm, scale=scale, skipped=skipped)


@contextmanager
def _forward_region(dtype: torch.dtype | None, device_type: str, emulate: bool) -> Iterator[None]:
    """The forward and loss of one step: under CUDA emulation (every precision's, so that a model written for a
    GPU runs the same in each), and under autocast in ``dtype`` (None: float32)."""
    with _emulation(emulate), torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext():
        yield


def _loss(output: Any, target: Any, loss_fn: Callable | None) -> torch.Tensor:
    if loss_fn is not None:
        loss = loss_fn(output) if target is None else loss_fn(output, target)
    elif target is None:
        loss = output
    elif isinstance(target, torch.Tensor) and not target.is_floating_point():
        loss = nn.functional.cross_entropy(output, target)
    else:
        loss = nn.functional.mse_loss(output.float(), target.float())
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("the loss must be a scalar tensor: pass loss_fn(output, target), or a target None with a "
                        "model whose output is its loss")
    return loss


def _unpack_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"each batch must be (inputs, target) (target may be None), got {type(batch).__name__}"
                    + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


def _grad_norm(model: nn.Module) -> float:
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _layers(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names grouped by the module that owns them ("(model)" for the root's own)."""
    layers: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0] or "(model)"
        layers.setdefault(owner, []).append(name)
    return layers


def _sample_divergence(reference: _Run, runs: list[_Run], divergence: dict[str, dict[str, list[float]]], step: int,
                       sample_steps: list[int]) -> None:
    sample_steps.append(step)
    ref_params = dict(reference.model.named_parameters())
    layers = _layers(reference.model)
    for run in runs:
        if run is reference:
            continue
        params = dict(run.model.named_parameters())
        for layer, names in layers.items():
            with torch.no_grad():
                diff = sum(float(torch.sum((params[n].double() - ref_params[n].double()) ** 2)) for n in names)
                size = sum(float(torch.sum(ref_params[n].double() ** 2)) for n in names)
            if not math.isfinite(diff):
                value = math.inf
            elif size == 0:
                value = 0.0 if diff == 0 else math.inf
            else:
                value = math.sqrt(diff / size)
            divergence[run.name].setdefault(layer, []).append(value)


def _rng_state(cuda: bool = False, all_cuda: bool = False) -> tuple[Any, Any]:
    cuda_state = None
    if (cuda or all_cuda) and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_state = torch.cuda.get_rng_state_all()
    return torch.get_rng_state(), cuda_state


def _set_rng_state(state: tuple[Any, Any]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])




def _plottable(value: float, positive: bool = False) -> float:
    """A value matplotlib draws (non-finite and, on a log axis, non-positive ones are left as gaps)."""
    if not math.isfinite(value) or (positive and value <= 0):
        return math.nan
    return value


def _top(ax: Any) -> float:
    return ax.get_ylim()[1]


