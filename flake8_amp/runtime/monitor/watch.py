"""What to watch: which parameters make which layer, which modules' outputs are sampled and in what order
they ran, the optimizer and the GradScaler driving the step, and what the host already knows of it."""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

#: modules whose output is worth its statistics though they have children: attention, where float16
#: overflows most (nn.MultiheadAttention computes its output without calling its out_proj's forward)
ATTENTION_MODULES = (nn.MultiheadAttention,)
#: modules that cannot change magnitudes: their statistics would repeat their input's
MAGNITUDE_KEEPING = (nn.Dropout, nn.Identity, nn.Flatten, nn.Unflatten)
#: modules whose output values are a selection of their input's values (and zeros): they can create
#: neither a larger value, nor a new small one, nor a non-finite one; what they pass on was seen upstream
SELECTING = (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def watched_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are sampled: leaves and attention modules, in registration order, less
    those whose outputs cannot hold anything their inputs did not (:data:`MAGNITUDE_KEEPING`,
    :data:`SELECTING`). A model's first module is kept whatever it is: it sees the input batch."""
    watched = []
    for name, module in model.named_modules():
        if not name:
            continue
        skip = isinstance(module, MAGNITUDE_KEEPING) or (watched and isinstance(module, SELECTING))
        if not skip and (isinstance(module, ATTENTION_MODULES) or not any(True for _ in module.children())):
            watched.append((name, module))
    return watched


class LayerIndex:
    """The watched parameters grouped by layer (the module that owns them), and the modules sampled."""

    def __init__(self, model: nn.Module) -> None:
        self.params: list[torch.Tensor] = []
        self.layer_of: list[int] = []
        self.layers: list[str] = []
        positions: dict[str, int] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = name.rsplit(".", 1)[0] if "." in name else name
            if layer not in positions:
                positions[layer] = len(self.layers)
                self.layers.append(layer)
            self.params.append(parameter)
            self.layer_of.append(positions[layer])
        self.key = [id(p) for p in self.params]
        self.ids = set(self.key)
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.modules = watched_modules(model)

    def changed(self, model: nn.Module) -> bool:
        return [id(p) for p in model.parameters() if p.requires_grad] != self.key

    def watches(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(id(p) in self.ids for group in optimizer.param_groups for p in group["params"])


class ActivationHooks:
    """Forward hooks on the watched modules, attached only for a sampled step. Each module's statistics
    are kept in the order the forward pass ran them (attribution names the first non-finite one); a module
    run twice in a step (shared, or recomputed by checkpointing) keeps the worst of its values."""

    def __init__(self, compute: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
                 on_error: Callable[[Exception], None]) -> None:
        self._compute, self._on_error = compute, on_error
        self._handles: list[Any] = []
        self.stats: dict[int, torch.Tensor] = {}  # module position -> device statistics, in forward order
        self.facts: dict[int, Any] = {}  # module position -> what the host knows of them

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, modules: list[tuple[str, nn.Module]]) -> None:
        if self._handles or not modules:
            return
        self.stats, self.facts = {}, {}
        self._handles = [module.register_forward_hook(self._hook(index)) for index, (_, module) in enumerate(modules)]

    def detach(self) -> tuple[dict[int, torch.Tensor], dict[int, Any]]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        stats, facts, self.stats, self.facts = self.stats, self.facts, {}, {}
        return stats, facts

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            try:
                tensor = output[0] if isinstance(output, (tuple, list)) and output else output
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
                    stats, self.facts[index] = self._compute(tensor.detach())
                    previous = self.stats.get(index)
                    self.stats[index] = stats if previous is None else torch.maximum(previous, stats)  # NaN stays
            except Exception as exc:  # noqa: BLE001 - the monitor must never break training
                self._on_error(exc)
            return None

        return hook


def driving_scaler() -> Any:
    """The GradScaler whose ``step()`` is driving the optimizer step in progress, if one is: found on the
    call stack, so that a scaler that is a global (the README's pattern) is watched too."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        # only a scaler's step methods are asked for their locals: reading a frame's locals builds a dict,
        # and this runs at every optimizer step of a run that has no scaler
        if frame.f_code.co_name in _SCALER_STEP_METHODS:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, torch.amp.GradScaler):
                return candidate
        frame = frame.f_back
    return None


#: the GradScaler methods (torch's, and subclasses' overrides of them) that call an optimizer's step()
_SCALER_STEP_METHODS = frozenset({"step", "_maybe_opt_step"})


class ScalerDecisions:
    """Whether the GradScaler skipped a step, as the host already knows it: its ``step()`` read found_inf
    (its one synchronisation) and either called the optimizer's step (our step hook saw it) or did not.
    Nothing is read from the device. Unknown (None) when the scaler did not step this optimizer this step
    (an accumulation step, a disabled scaler) or its private state is not what torch 2.x keeps."""

    def __init__(self) -> None:
        self._states: Any = None

    def watch(self, scaler: Any) -> None:
        """Hold the per-optimizer state the scaler's next step() will fill (update() replaces it)."""
        self._states = getattr(scaler, "_per_optimizer_states", None) if scaler is not None else None

    def skipped(self, optimizer: Any, optimizer_stepped: bool) -> bool | None:
        if self._states is None or optimizer is None or not isinstance(self._states, dict):
            return None
        state = self._states.get(id(optimizer))
        stage = getattr(state.get("stage") if isinstance(state, dict) else None, "name", None)
        if stage != "STEPPED":
            return None
        return not optimizer_stepped


def host_scale(scaler: Any) -> float | None:
    """The scaler's current scale where reading it costs no synchronisation (a CPU scaler), else None."""
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, torch.Tensor) and scale.device.type == "cpu" and scale.numel() == 1:
        return float(scale)
    return None


def find(args: tuple, kwargs: dict, kind: type) -> Any:
    """The first argument of type ``kind`` (the decorator's model, optimizer and scaler)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, kind):
            return value
    return None
