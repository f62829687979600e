"""``@watch_training``: a monitor made at the decorated step's first call, from its arguments."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from torch import nn

from .core import TrainingMonitor
from .options import validate_options
from .watch import find

logger = logging.getLogger("flake8_amp.runtime")


def watch_training(
    function: Callable | None = None,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    **options: Any,
) -> Callable:
    """Decorate a train step: ``@watch_training`` or ``@watch_training(warmup_steps=100, alert_window=50)``.

    The model is the ``nn.Module`` among the step's arguments unless ``model=`` is given; the optimizer and
    the GradScaler are found when they step (or among the arguments); the monitor is
    ``train_step.monitor``. The step's return value passes through untouched.
    """

    validate_options(**options)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")

    def decorate(step_function: Callable) -> Callable:
        @functools.wraps(step_function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = step_function(*args, **kwargs)
            monitor = wrapper.monitor
            if monitor is None and wrapper.enabled:
                try:
                    found = model or find(args, kwargs, nn.Module)
                    if found is None:
                        wrapper.enabled = False
                        logger.error("flake8-amp monitor: no nn.Module among the step's arguments; pass model=")
                        return result
                    # The first step ran before the monitor existed: it records what that step left behind.
                    monitor = wrapper.monitor = TrainingMonitor(
                        found,
                        optimizer or find(args, kwargs, torch.optim.Optimizer),
                        scaler or find(args, kwargs, torch.amp.GradScaler),
                        **options,
                    )
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
