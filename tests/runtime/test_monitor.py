"""The training monitor: anomalies named at the right step and layer, silence on clean runs, safety."""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from flake8_amp.runtime import TrainingMonitor, watch_training  # noqa: E402
from flake8_amp.runtime import monitor as monitor_module  # noqa: E402

WARMUP, WINDOW, STEPS, ANOMALY = 40, 20, 100, 70


class Injectable(nn.Linear):
    """A linear layer whose output can be pushed out of range on one step."""

    mode: str | None = None

    def forward(self, x):
        out = super().forward(x)
        if self.mode == "overflow":
            return out * 1e6
        if self.mode == "underflow":
            return out * 1e-9
        if self.mode == "nan":
            return out + float("nan")
        return out


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            encoder=nn.Linear(16, 32), act=nn.ReLU(), hidden=Injectable(32, 32), act2=nn.Tanh(), head=nn.Linear(32, 4)
        )
    )


def batches(steps: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 4, generator=generator)
    for _ in range(steps):
        x = torch.randn(32, 16, generator=generator)
        yield x, x @ weight + 0.1 * torch.randn(32, 4, generator=generator)


def train(anomaly: str | None = None, steps: int = STEPS, **monitor_options):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    options = dict(warmup_steps=WARMUP, alert_window=WINDOW, sample_every=1, precision="fp16") | monitor_options

    @watch_training(optimizer=optimizer, **options)
    def train_step(model, x, y, step):
        model.hidden.mode = anomaly if step == ANOMALY and anomaly != "spike" else None
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step == ANOMALY and anomaly == "spike":
            model.hidden.weight.grad *= 1000
        if step == ANOMALY and anomaly in ("overflow", "underflow"):
            for p in model.parameters():
                p.grad.zero_()  # keep the weights sane after the injected step
        optimizer.step()
        return {"loss": loss}

    for step, (x, y) in enumerate(batches(steps)):
        train_step(model, x, y, step)
    return train_step.monitor


def test_a_clean_run_raises_no_alert():
    monitor = train(None)
    summary = monitor.summary()
    assert summary.steps == STEPS and summary.alerts == []


@pytest.mark.parametrize(
    "anomaly, metric_part, layer",
    [
        ("overflow", "overflow", "hidden"),
        ("underflow", "underflow_ratio", "hidden"),
        ("spike", "grad_norm", "hidden"),
        ("nan", "non-finite", "hidden"),
    ],
)
def test_each_injected_anomaly_is_named_at_its_step_and_layer(anomaly, metric_part, layer):
    monitor = train(anomaly)
    matching = [a for a in monitor.alerts if metric_part in a.metric and a.layer == layer]
    assert matching, [a.message() for a in monitor.alerts]
    assert matching[0].step == ANOMALY
    assert all(a.step >= ANOMALY for a in monitor.alerts), [a.message() for a in monitor.alerts]


def test_nan_alerts_during_warm_up_too():
    monitor = train("nan", warmup_steps=200)
    assert any("non-finite" in a.metric and a.step == ANOMALY for a in monitor.alerts)


def test_alert_lines_go_to_the_flake8_amp_runtime_logger(caplog):
    with caplog.at_level(logging.INFO, logger="flake8_amp.runtime"):
        train("spike")
    records = [r for r in caplog.records if r.name == "flake8_amp.runtime"]
    alerts = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"[ALERT] Step {ANOMALY} | Layer 'hidden' grad_norm: ") and "Deviation:" in m for m in alerts)
    status = [r.getMessage() for r in records if r.getMessage().startswith("[Monitor] Step")]
    assert status and "| Status:" in status[-1] and "baseline:" in status[-1]


def test_training_is_bit_identical_with_and_without_the_monitor():
    def run(monitored: bool):
        model = make_model(3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu")
        monitor = TrainingMonitor(model, optimizer, scaler, warmup_steps=10, alert_window=5, sample_every=2) if monitored else None
        losses = []
        for x, y in batches(50, seed=7):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            if monitor:
                monitor.step(loss)
        if monitor:
            monitor.summary()
            monitor.close()
        return losses, [p.detach().clone() for p in model.parameters()]

    plain_losses, plain_params = run(False)
    watched_losses, watched_params = run(True)
    assert plain_losses == watched_losses
    assert all(torch.equal(a, b) for a, b in zip(plain_params, watched_params))


def test_an_exception_inside_the_monitor_never_reaches_training(monkeypatch, caplog):
    def broken(self, tensor):
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor_module.TrainingMonitor, "_activation_stats", broken)
    with caplog.at_level(logging.ERROR, logger="flake8_amp.runtime"):
        monitor = train(None, steps=30)
    assert not monitor.enabled and "boom" in monitor.disabled_reason
    failures = [r for r in caplog.records if "turned itself off" in r.getMessage()]
    assert len(failures) == 1
    assert all(not m._forward_hooks for m in monitor.model.modules())


def test_memory_does_not_grow_with_steps(monkeypatch):
    from flake8_amp.runtime.monitor import judge

    monkeypatch.setattr(judge, "HISTORY_STEPS", 64)
    monitor = TrainingMonitor(make_model(), warmup_steps=10, alert_window=10, sample_every=5)
    assert monitor._buffer.on_host  # a CPU model: rows are Python lists, drained at every report
    model = monitor.model
    rows = []
    for x, y in batches(400):
        model.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        monitor.step(loss)
        rows.append(len(monitor._buffer._host_rows))
    assert max(rows) == monitor.report_every - 1
    assert len(monitor._buffer._samples) <= 2 and len(monitor._buffer) < monitor.report_every
    assert all(len(b.values) <= max(10, 10, 8) for b in monitor._judge.baselines.values())
    assert len(monitor.history) == 64


def test_step_return_values_and_a_clear_error_once(caplog):
    model = make_model()
    seen = []

    @watch_training(warmup_steps=5, alert_window=5, report_every=1)
    def step(model, kind):
        out = model(torch.randn(4, 16)).pow(2).mean()
        out.backward()
        return {"tensor": out, "float": float(out.detach()), "tuple": (out, "extra"), "bad": "not a loss"}[kind]

    for kind in ("tensor", "float", "tuple"):
        result = step(model, kind)
        seen.append(step.monitor.history[-1]["loss"])
        assert result is not None
    assert all(isinstance(v, float) and math.isfinite(v) for v in seen)
    with caplog.at_level(logging.ERROR, logger="flake8_amp.runtime"):
        assert step(model, "bad") == "not a loss"
        step(model, "bad")
    errors = [r for r in caplog.records if "not a loss" in r.getMessage()]
    assert len(errors) == 1 and step.monitor.enabled


def test_grad_scaler_skipped_steps_are_reported():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    monitor = TrainingMonitor(model, optimizer, scaler, warmup_steps=5, alert_window=5, report_every=5)
    for step, (x, y) in enumerate(batches(15)):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss * (float("inf") if step == 8 else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
        monitor.step(loss)
    summary = monitor.summary()
    assert summary.skipped_steps == [8]
    assert "skipped steps: 8" in str(summary)


def test_writer_jsonl_and_plot(tmp_path):
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

    writer = Writer()
    monitor = train("spike", writer=writer)
    assert ("amp/grad_norm", 10) in writer.scalars and ("amp/loss", 10) in writer.scalars
    lines = monitor.to_jsonl(tmp_path / "run.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["step"] == 0 and any("alert" in r for r in records)
    pytest.importorskip("matplotlib")
    png = monitor.plot(tmp_path / "run.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_decorator_refuses_nothing_and_needs_a_module(caplog):
    @watch_training
    def step(x):
        return x * 2

    with caplog.at_level(logging.ERROR, logger="flake8_amp.runtime"):
        assert step(3) == 6
    assert step.monitor is None and "no nn.Module" in caplog.text
    with pytest.raises(TypeError, match="nn.Module"):
        TrainingMonitor("not a model")
