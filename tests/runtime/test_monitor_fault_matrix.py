"""Every fault in every setup: a small CNN and a small transformer, in float32, bfloat16 autocast and float16
autocast with a GradScaler (float32 and bfloat16 runs are watched with precision="fp16": would they survive
float16?). Each fault is injected at a known step; the monitor must alert at that step, name the right
layer first, say it as soon as the host knows (on a CPU: at once), and stay quiet before it. A writer that
fails from step 20 on rides along in every run: it is dropped alone and detection goes on."""

from __future__ import annotations

import logging
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from flake8_amp.runtime import TrainingMonitor  # noqa: E402

FAULT_STEP = 150  # a sampled step (sample_every=10), past warm-up (50), not a report step (every 25)
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the layer whose output is pushed past float16's max, and the first layer an input reaches
OVERFLOWING = {"cnn": "0", "transformer": "1.layers.1.self_attn"}


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    return nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                         nn.Linear(32, 8))


def batches(kind: str, steps: int):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        if kind == "cnn":
            x = torch.randn(8, 1, 8, 8, generator=generator)
            yield x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
        else:
            x = torch.randn(4, 12, 16, generator=generator)
            yield x, (x[..., 0] > 0).long() + 2 * (x[..., 1] > 0).long()


class FailingWriter:
    def __init__(self):
        self.calls = 0

    def add_scalar(self, tag, value, step):
        self.calls += 1
        if step >= 20:
            raise OSError("No space left on device")


class LoggedAt(logging.Handler):
    """When each alert was logged: the monitor's step count at that moment (step N's monitor.step() counts
    N before it has recorded the step, N + 1 after)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.monitor = None
        self.at: dict[str, int] = {}

    def emit(self, record):
        self.at.setdefault(record.getMessage(), self.monitor.steps if self.monitor else -1)


def run(kind: str, dtype_name: str, fault: str | None, *, steps: int = FAULT_STEP + 30, wide: bool = False):
    """Train ``steps`` steps with ``fault`` at FAULT_STEP. The loop drops a batch whose loss is not finite,
    as careful loops do (float16 runs leave that to the GradScaler), so that one fault stays one event."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = (cnn() if kind == "cnn" else transformer()).to(torch.float64 if wide else torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02) if kind == "cnn" else torch.optim.AdamW(
        model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", growth_interval=2000 if fault in ("skips", "collapse") else 50,
                                  enabled=dtype == torch.float16)
    state = {"step": -1}

    def boost(module, inputs, output):  # the fault: one step's output pushed past float16's max
        if fault == "overflow" and state["step"] == FAULT_STEP:
            return (output[0] * 1e5, *output[1:]) if isinstance(output, tuple) else output * 1e5
        return None

    model.get_submodule(OVERFLOWING[kind]).register_forward_hook(boost)
    writer = FailingWriter()
    monitor = TrainingMonitor(model, warmup_steps=50, alert_window=25, writer=writer,
                              precision="fp16" if dtype != torch.float16 else None)
    handler = LoggedAt()
    handler.monitor = monitor
    logging.getLogger("flake8_amp.runtime").addHandler(handler)
    try:
        for step, (x, y) in enumerate(batches(kind, steps)):
            state["step"] = step
            x = x.to(torch.float64) if wide else x
            if fault == "nan_input" and step == FAULT_STEP:
                x = x.clone()
                x.view(-1)[3] = math.nan  # one corrupt value
            for group in optimizer.param_groups:
                group["lr"] = (0.02 if kind == "cnn" else 1e-3) * (1000 if fault == "lr_spike" and step == FAULT_STEP else 1)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = model(x)
                loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
            if fault == "nan_loss" and step == FAULT_STEP:
                loss = loss * math.nan
            if fault == "skips" and FAULT_STEP <= step < FAULT_STEP + 5:
                loss = loss * math.inf
            if fault == "collapse" and FAULT_STEP <= step < FAULT_STEP + 40 and step % 2 == 0:
                loss = loss * math.inf
            scaler.scale(loss).backward()
            dropped = dtype != torch.float16 and step == FAULT_STEP and fault in ("nan_input", "nan_loss", "overflow")
            if not dropped:
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            monitor.step(loss)
        monitor.summary()
    finally:
        logging.getLogger("flake8_amp.runtime").removeHandler(handler)
    assert monitor.disabled_reason is None and monitor.writer is None and writer.calls > 0
    return monitor, handler.at


SETUPS = [(kind, dtype) for kind in ("cnn", "transformer") for dtype in DTYPES]
IDS = [f"{kind}-{dtype}" for kind, dtype in SETUPS]


@pytest.mark.parametrize(("kind", "dtype"), SETUPS, ids=IDS)
def test_clean_runs_raise_nothing(kind, dtype):
    monitor, _ = run(kind, dtype, None, steps=500)
    assert list(monitor.alerts) == []


def first_alerts(monitor):
    alerts = list(monitor.alerts)
    assert alerts, "no alert"
    assert min(a.step for a in alerts) >= FAULT_STEP, f"alerts before the fault: {alerts}"
    return alerts


# autocast leaves a float64 model in float64: one float64 run per model
WITH_FLOAT64 = [(kind, dtype, False) for kind, dtype in SETUPS] + [(kind, "float32", True) for kind in OVERFLOWING]


@pytest.mark.parametrize(("kind", "dtype", "wide"), WITH_FLOAT64, ids=IDS + [f"{kind}-float64" for kind in OVERFLOWING])
def test_a_nan_input_batch_is_named_at_the_first_layer_it_reaches_at_once(kind, dtype, wide):
    monitor, logged_at = run(kind, dtype, "nan_input", wide=wide)
    alerts = first_alerts(monitor)
    assert [(a.step, a.metric, a.layer) for a in alerts] == [(FAULT_STEP, "non-finite activation (NaN/Inf)", "0")]
    assert logged_at[alerts[0].message()] == FAULT_STEP + 1  # said at the step, not at the report


@pytest.mark.parametrize(("kind", "dtype"), SETUPS, ids=IDS)
def test_an_activation_past_65504_is_named_at_its_layer(kind, dtype):
    monitor, logged_at = run(kind, dtype, "overflow")
    alerts = first_alerts(monitor)
    assert {a.step for a in alerts} == {FAULT_STEP}
    layer = OVERFLOWING[kind]
    # float16 holds it as inf: a non-finite activation; float32 and bfloat16 hold it, float16 would not
    expected = "non-finite activation (NaN/Inf)" if dtype == "float16" else "activation overflow (max |x| / format max)"
    assert (alerts[0].metric, alerts[0].layer) == (expected, layer)
    if dtype == "float16":
        assert logged_at[alerts[0].message()] == FAULT_STEP + 1


@pytest.mark.parametrize(("kind", "dtype"), SETUPS, ids=IDS)
def test_a_nan_loss_alerts_at_once(kind, dtype):
    monitor, logged_at = run(kind, dtype, "nan_loss")
    alerts = first_alerts(monitor)
    assert [(a.step, a.metric, a.layer) for a in alerts] == [(FAULT_STEP, "non-finite loss (NaN/Inf)", None)]
    assert logged_at[alerts[0].message()] == FAULT_STEP + 1


@pytest.mark.parametrize(("kind", "dtype"), SETUPS, ids=IDS)
def test_a_learning_rate_spike_alerts_on_the_step_its_update_hits(kind, dtype):
    monitor, _ = run(kind, dtype, "lr_spike", steps=FAULT_STEP + 10)
    alerts = first_alerts(monitor)
    first = min(alerts, key=lambda a: a.step)
    assert first.step == FAULT_STEP + 1 and first.metric.split(" ")[0] in ("loss", "grad_norm", "non-finite")


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_consecutive_skipped_steps_alert_at_once_with_the_scale_trajectory(kind):
    monitor, logged_at = run(kind, "float16", "skips")
    alerts = first_alerts(monitor)
    assert [(a.step, a.metric.split(" (")[0]) for a in alerts] == [
        (FAULT_STEP, "non-finite loss"), (FAULT_STEP + 2, "3 GradScaler steps skipped in a row")]
    skips = alerts[1]
    scales = [r["scale"] for r in monitor.history if FAULT_STEP - 1 <= r["step"] <= FAULT_STEP + 2]
    assert scales[1:] == [scales[0] / 2, scales[0] / 4, scales[0] / 8]
    assert skips.metric.endswith(f"(steps {FAULT_STEP}-{FAULT_STEP + 2}; scale {' -> '.join(f'{v:.3g}' for v in scales)})")
    # known on the host when the scaler skipped it: said while that step is recorded (its count not yet up)
    assert logged_at[skips.message()] == FAULT_STEP + 2
    assert set(range(FAULT_STEP, FAULT_STEP + 5)) <= set(monitor.skipped_steps)


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_a_loss_scale_collapsing_by_single_skips_alerts_with_its_trajectory(kind):
    monitor, _ = run(kind, "float16", "collapse", steps=FAULT_STEP + 45)
    alerts = first_alerts(monitor)
    collapsed = [a for a in alerts if a.metric.startswith("loss scale collapsed")]
    highest, expected = 0.0, None
    for record in list(monitor.history):
        highest = max(highest, record["scale"])
        if expected is None and record["scale"] * 1024 <= highest:
            expected = record["step"]
    assert collapsed and collapsed[0].step == expected and FAULT_STEP < expected < FAULT_STEP + 40
    assert " -> " in collapsed[0].metric
    assert not [a for a in alerts if "in a row" in a.metric]
