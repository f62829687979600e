"""The monitor on the README's own pattern: an optimizer and a GradScaler that are globals, zero_grad()
after step(), float16 with the scaler's growth probes. Clean runs raise nothing; injected faults alert at
their step; a missing gradient is not a NaN; skipped steps are their own event."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from flake8_amp.runtime import TrainingMonitor, watch_training  # noqa: E402

STEPS = 500


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def data(steps: int):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 1, 8, 8, generator=generator)
        yield x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()


def readme_run(dtype=None, *, faults=None, backward_faults=None, growth_interval=10, steps=STEPS):
    """The README's example: the step takes the model and a batch; optimizer and scaler are globals.
    ``faults`` multiply the loss at a step; ``backward_faults`` only the loss backpropagated."""
    faults, backward_faults = faults or {}, backward_faults or {}
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", growth_interval=growth_interval, enabled=dtype == torch.float16)

    @watch_training(warmup_steps=50, alert_window=25)
    def train_step(model, batch, step):
        x, y = batch
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        if step in faults:
            loss = loss * faults[step]
        scaler.scale(loss * backward_faults.get(step, 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for step, batch in enumerate(data(steps)):
        train_step(model, batch, step)
    return train_step.monitor, scaler


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
def test_the_readme_pattern_runs_500_clean_steps_without_an_alert(dtype):
    monitor, scaler = readme_run(dtype)
    summary = monitor.summary()
    assert summary.alerts == [] and summary.disabled_reason is None
    # the gradients were read at the optimizer's step, before zero_grad: every step has a norm (but the
    # first, which ran before the decorator made the monitor), NaN only where the scaler skipped the step
    records = list(monitor.history)[1:]
    assert all(math.isfinite(r["grad_norm"]) for r in records if not r.get("skipped"))
    if dtype == torch.float16:
        # the global scaler was found through the step it drove; its growth probes are counted, not alerted
        assert monitor.scaler is scaler
        assert len(summary.skipped_steps) >= 3 and all(math.isfinite(r["scale"]) for r in records)


def test_a_nan_loss_alerts_at_its_step():
    monitor, _ = readme_run(torch.float16, faults={300: float("nan")}, growth_interval=2000)
    alerts = monitor.summary().alerts
    assert [(a.step, a.metric) for a in alerts] == [(300, "non-finite loss (NaN/Inf)")]


def test_skipped_steps_in_a_row_alert_with_the_scale_trajectory_and_not_as_nan_gradients():
    monitor, _ = readme_run(torch.float16, faults={s: float("inf") for s in range(300, 305)}, growth_interval=2000)
    alerts = monitor.summary().alerts
    assert [a.step for a in alerts if "skipped in a row" in a.metric] == [302]
    skipped = next(a for a in alerts if "skipped in a row" in a.metric)
    scales = [r["scale"] for r in monitor.history if 299 <= r["step"] <= 302]
    assert skipped.metric.endswith(f"(steps 300-302; scale {' -> '.join(f'{v:.3g}' for v in scales)})")
    assert scales[1:] == [scales[0] / 2, scales[0] / 4, scales[0] / 8]
    assert not [a for a in alerts if "gradient" in a.metric]
    assert [a.step for a in alerts if "loss" in a.metric] == [300]  # the inf loss itself, once per window
    assert set(range(300, 305)) <= set(monitor.summary().skipped_steps)


def test_a_step_without_gradients_is_missing_not_nan():
    """An eval step decorated like a train step, under no_grad: nothing to read is not a NaN."""
    model = small_cnn()

    @watch_training(warmup_steps=5, alert_window=5)
    def evaluate(model, x):
        with torch.no_grad():
            return model(x).float().logsumexp(-1).mean()

    for x, _ in data(30):
        evaluate(model, x)
    summary = evaluate.monitor.summary()
    assert summary.alerts == [] and all(math.isnan(r["grad_norm"]) for r in evaluate.monitor.history)


def test_another_models_optimizer_is_not_watched():
    model, other = small_cnn(), nn.Linear(3, 1)
    monitor = TrainingMonitor(model, warmup_steps=5, alert_window=5)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    other(torch.ones(2, 3)).sum().backward()
    other_optimizer.step()
    assert monitor.optimizer is None
    monitor.close()


def test_options_are_checked_where_they_are_given():
    with pytest.raises(TypeError, match=r"unknown monitor option 'warmup_stpes'; the options are alert_window"):
        watch_training(warmup_stpes=10)
    for options, message in [
        ({"alert_window": 0}, "alert_window must be an integer of at least 1, got 0"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer of at least 0, got -1"),
        ({"sigma": math.nan}, "sigma must be a finite number above 0, got nan"),
        ({"sample_every": 2.5}, "sample_every must be an integer of at least 1, got 2.5"),
        ({"precision": "fp8"}, "precision must be 'fp16', 'bf16' or None, got 'fp8'"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            watch_training(**options)
        with pytest.raises(ValueError):
            TrainingMonitor(small_cnn(), **options)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got str"):
        watch_training(optimizer="adam")


def test_a_float64_model_is_watched_and_its_nan_alerts():
    model = small_cnn().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TrainingMonitor(model, warmup_steps=10, alert_window=10)
    for step, (x, y) in enumerate(data(40)):
        loss = nn.functional.cross_entropy(model(x.double() * (math.nan if step == 30 else 1.0)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)
    summary = monitor.summary()
    assert summary.disabled_reason is None
    assert [(a.step, a.metric) for a in summary.alerts] == [(30, "non-finite activation (NaN/Inf)")]
    assert all(math.isfinite(r["grad_norm"]) for r in list(monitor.history)[:30])


def test_a_first_step_under_inference_mode_does_not_stop_the_monitor():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    @watch_training(optimizer=optimizer, warmup_steps=10, alert_window=10)
    def step(model, x, y, train=True, poison=False):
        with torch.inference_mode(not train):
            loss = nn.functional.cross_entropy(model(x), y) * (math.inf if poison else 1.0)
        if train:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return loss

    batches = list(data(30))
    step(model, *batches[0], train=False)  # the monitor is made here, under inference_mode
    for index, (x, y) in enumerate(batches[1:], start=1):
        step(model, x, y, poison=index == 25)
    summary = step.monitor.summary()
    assert summary.disabled_reason is None
    assert [(a.step, a.metric) for a in summary.alerts] == [(25, "non-finite loss (NaN/Inf)")]


def test_a_writer_that_fails_is_dropped_alone_and_detection_goes_on(caplog):
    class FullDisk:
        calls = 0

        def add_scalar(self, tag, value, step):
            FullDisk.calls += 1
            if step >= 3:
                raise OSError("No space left on device")

    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    writer = FullDisk()
    monitor = TrainingMonitor(model, optimizer, warmup_steps=10, alert_window=10, report_every=1, writer=writer)
    with caplog.at_level("ERROR", logger="flake8_amp.runtime"):
        for step, (x, y) in enumerate(data(30)):
            loss = nn.functional.cross_entropy(model(x), y) * (math.inf if step == 20 else 1.0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.step(loss)
    summary = monitor.summary()
    assert summary.disabled_reason is None and monitor.writer is None
    assert caplog.text.count("the writer failed at step 3 (OSError: No space left on device)") == 1
    assert [(a.step, a.metric) for a in summary.alerts] == [(20, "non-finite loss (NaN/Inf)")]


# ------------------------------------------------------------------------------------- a small transformer
def small_transformer() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    return nn.Sequential(nn.Embedding(64, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                         nn.Linear(32, 64))


def transformer_run(dtype=None, *, steps=STEPS, attention_boost_at=None, **options):
    model = small_transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", growth_interval=50, enabled=dtype == torch.float16)
    state = {"step": -1}

    def boost(module, inputs, output):  # the fault: one step's attention output pushed past 65504
        if state["step"] == attention_boost_at:
            return (output[0] * 1e5, *output[1:])
        return None

    model[1].layers[1].self_attn.register_forward_hook(boost)
    monitor = TrainingMonitor(model, warmup_steps=50, alert_window=25, **options)
    generator = torch.Generator().manual_seed(2)
    for step in range(steps):
        state["step"] = step
        tokens = torch.randint(0, 64, (8, 16), generator=generator)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(1, 1).flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        monitor.step(loss)
    return monitor


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
def test_a_small_transformer_trains_500_clean_steps_without_an_alert(dtype):
    summary = transformer_run(dtype).summary()
    assert summary.alerts == [] and summary.disabled_reason is None


def test_attention_outputs_are_watched_and_an_overflow_there_is_named():
    """nn.MultiheadAttention computes its output without calling its out_proj's forward: it is watched
    itself. precision="fp16" asks of a float32 run whether the values would survive float16."""
    monitor = transformer_run(None, steps=120, attention_boost_at=100, sample_every=1, precision="fp16")
    watched = monitor.layers_with_activations()
    assert "1.layers.0.self_attn" in watched and not any(name.endswith("dropout") for name in watched)
    overflow = [a for a in monitor.summary().alerts if a.metric.startswith("activation overflow")]
    assert [(a.step, a.layer) for a in overflow] == [(100, "1.layers.1.self_attn")]


def test_gradients_that_vanish_to_zero_alert_at_the_step_they_do():
    """The loss backpropagated weighted 1e-20 (a mis-scaled loss term), the loss logged as before: under
    float16 its gradients underflow to zero. Gradient norms falling by orders of magnitude at once while
    the loss does not fall are gradients vanishing, not training."""
    faults = {step: 1e-20 for step in range(300, 360)}
    monitor, _ = readme_run(torch.float16, backward_faults=faults, growth_interval=2000, steps=360)
    fell = [a for a in monitor.summary().alerts if "fell" in a.metric]
    # at once, then once per alert window while it lasts (they are never learned as the new normal)
    assert fell and {a.step for a in fell} == {300, 325, 350}
    assert {a.metric for a in fell} == {"grad_norm fell (gradients vanishing)"}
    assert all(a.value == 0 for a in fell)


def test_parameters_replaced_mid_run_are_watched():
    """A head swapped in at step 60 (fine-tuning a new task): its gradients are read from the next report."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    model.add_module("head", nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(model, warmup_steps=10, alert_window=10)
    generator = torch.Generator().manual_seed(3)
    for step in range(100):
        if step == 60:
            model.head = nn.Linear(16, 4)
            optimizer.add_param_group({"params": model.head.parameters()})
        x = torch.randn(8, 16, generator=generator)
        loss = model(x).pow(2).mean()
        loss.backward()
        if step == 90:
            model.head.weight.grad[0, 0] = math.nan
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)
    alerts = monitor.summary().alerts
    assert [(a.step, a.metric, a.layer) for a in alerts if "non-finite" in a.metric] == [
        (90, "non-finite gradient (NaN/Inf)", "head")
    ]


VISIBLE_SCRIPT = """
import logging, sys
import torch
from torch import nn
from flake8_amp.runtime import TrainingMonitor
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING)
torch.manual_seed(0)
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
monitor = TrainingMonitor(model, warmup_steps=10, alert_window=10)
for step in range(30):
    loss = model(torch.randn(8, 4)).pow(2).mean() * (float("nan") if step == 25 else 1.0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    monitor.step(loss)
"""


def test_status_lines_and_alerts_show_without_configuring_logging_and_respect_it_when_configured(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(VISIBLE_SCRIPT)
    plain = subprocess.run([sys.executable, str(script), "plain"], capture_output=True, text=True, check=True)
    lines = plain.stderr.splitlines()
    assert lines[0].startswith("[Monitor] Baseline established after 10 steps | grad_norm: ")
    assert lines[1].startswith("[Monitor] Step 9 | grad_norm: ") and lines[1].endswith("| Status: warm-up")
    assert "[ALERT] Step 25 | non-finite loss (NaN/Inf): nan (baseline: finite)" in lines
    configured = subprocess.run([sys.executable, str(script), "configured"], capture_output=True, text=True, check=True)
    # the application chose WARNING: the alert shows through its handler, the status lines do not
    assert "[Monitor]" not in configured.stderr and "WARNING:flake8_amp.runtime:[ALERT] Step 25" in configured.stderr


def test_a_nan_input_batch_is_named_at_the_first_layer_it_reaches():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TrainingMonitor(model, warmup_steps=20, alert_window=20, sample_every=1)
    for step, (x, y) in enumerate(data(60)):
        if step == 45:
            x = x.clone()
            x[0, 0, 0, 0] = math.nan  # one corrupt pixel
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step() if step != 45 else None  # the run would stop here; keep the weights sane
        optimizer.zero_grad()
        monitor.step(loss)
    alerts = [a for a in monitor.summary().alerts if "non-finite" in a.metric]
    assert [(a.step, a.metric, a.layer) for a in alerts] == [(45, "non-finite activation (NaN/Inf)", "0")]


def test_a_learning_rate_spike_alerts_on_the_step_after_it():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TrainingMonitor(model, warmup_steps=50, alert_window=25)
    for step, (x, y) in enumerate(data(150)):
        for group in optimizer.param_groups:
            group["lr"] = 50.0 if step == 120 else 0.05  # a scheduler bug: one step at 1000x
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)
    first = min(a.step for a in monitor.summary().alerts)
    assert first == 121  # the step the spiked update hit: loss and gradients jump there


def test_a_loss_scale_that_collapses_by_single_skips_alerts():
    """Every other step overflows: never three skips in a row, but the scale halves and halves."""
    faults = {step: math.inf for step in range(200, 240, 2)}
    monitor, _ = readme_run(torch.float16, faults=faults, growth_interval=2000, steps=260)
    collapsed = [a for a in monitor.summary().alerts if a.metric.startswith("loss scale collapsed")]
    scales = [(r["step"], r["scale"]) for r in list(monitor.history)[1:]]
    highest, expected = 0.0, None
    for step, scale in scales:  # the first step whose scale is 1024x below the highest before it
        highest = max(highest, scale)
        if expected is None and scale * 1024 <= highest:
            expected = step
    assert 200 <= expected < 240 and collapsed[0].step == expected
    assert not [a for a in monitor.summary().alerts if "in a row" in a.metric]


def test_the_writer_gets_each_layer_and_the_alerts_and_distortion_is_kept(tmp_path):
    class Writer:
        def __init__(self):
            self.scalars, self.texts = {}, []

        def add_scalar(self, tag, value, step):
            self.scalars.setdefault(tag, []).append(step)

        def add_text(self, tag, text, step):
            self.texts.append((tag, step, text))

    writer = Writer()
    monitor = TrainingMonitor(small_cnn(), warmup_steps=10, alert_window=10, sample_every=5, precision="fp16",
                              writer=writer)
    optimizer = torch.optim.SGD(monitor.model.parameters(), lr=0.05)
    for step, (x, y) in enumerate(data(40)):
        loss = nn.functional.cross_entropy(monitor.model(x), y) * (math.nan if step == 30 else 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)
    monitor.summary()
    assert {"amp/grad_norm/0", "amp/grad_norm/3", "amp/headroom/0", "amp/underflow/3", "amp/distortion/0"} <= set(
        writer.scalars)
    assert [(tag, step) for tag, step, _ in writer.texts] == [("amp/alerts", 30)]
    sampled = [r for r in monitor.history if "distortion" in r]
    assert sampled and all(0 <= v < 1e-3 for r in sampled[:5] for v in r["distortion"].values())
    pytest.importorskip("matplotlib")
    assert monitor.plot(tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_a_layer_whose_gradient_turns_to_zeros_is_named_on_a_sampled_step():
    """Most of one layer's gradient flushed to zero (float16 underflow in part of it): its norm may hardly
    move, its fraction of exact zeros does."""
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TrainingMonitor(model, warmup_steps=20, alert_window=20, sample_every=5)
    for step, (x, y) in enumerate(data(80)):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step == 60:  # a sampled step
            grad = model[3].weight.grad
            grad[grad.abs() < grad.abs().quantile(0.9)] = 0.0
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)
    zeros = [a for a in monitor.summary().alerts if a.metric == "gradient_zero_fraction"]
    assert [(a.step, a.layer) for a in zeros] == [(60, "3")] and zeros[0].value >= 0.89
    assert all("grad_zeros" in r for r in monitor.history if r["step"] % 5 == 0 and r["step"] > 0)


def test_histograms_are_opt_in_written_at_report_steps_and_count_every_gradient_element():
    class Writer:
        def __init__(self):
            self.histograms, self.zeros = [], {}

        def add_scalar(self, tag, value, step):
            if tag.startswith("amp/grad_zero_count/"):
                self.zeros[(tag.rsplit("/", 1)[1], step)] = value

        def add_histogram_raw(self, tag, min, max, num, sum, sum_squares, bucket_limits, bucket_counts, global_step):
            self.histograms.append((tag, global_step, num, min, max, list(bucket_counts), list(bucket_limits)))

    def train(**options):
        model = small_cnn()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        writer = Writer()
        monitor = TrainingMonitor(model, warmup_steps=5, alert_window=10, writer=writer, **options)
        for step, (x, y) in enumerate(data(30)):
            nn.functional.cross_entropy(model(x), y).backward()
            model[3].weight.grad.mul_(2.0**-30)  # a layer whose gradients sit near 2**-33
            optimizer.step()
            optimizer.zero_grad()
            monitor.step()
        return writer, model

    assert train()[0].histograms == []
    writer, model = train(histograms=True)
    assert sorted({(tag, step) for tag, step, *_ in writer.histograms}) == [
        (f"amp/grad_log2/{layer}", step) for layer in ("0", "3") for step in (9, 19, 29)]
    for tag, step, num, low, high, counts, limits in writer.histograms:
        layer = tag.rsplit("/", 1)[1]
        assert num == sum(counts) and len(counts) == len(limits) == 96
        assert num + writer.zeros[(layer, step)] == sum(p.numel() for p in model[int(layer)].parameters())
        if layer == "3":  # 4 x 256 weights near 2**-33 (those a ReLU left at zero apart), 4 biases near 2**-3
            assert low < -30 and -10 < high <= 0
            assert sum(c for c, limit in zip(counts, limits) if limit <= -20) == num - 4


def test_precision_fp16_asks_of_a_float32_run_which_gradients_float16_would_flush_to_zero():
    """Gradients below float16's smallest subnormal over the loss scale (2**-24 / 2**16) would have been
    zeros in a float16 backward: with precision="fp16" they count as zeros; without, only exact zeros do."""

    def train(**options):
        model = small_cnn()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        monitor = TrainingMonitor(model, warmup_steps=20, alert_window=20, sample_every=5, **options)
        for step, (x, y) in enumerate(data(80)):
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 60:  # a sampled step: one layer's gradients shrink to ~1e-14, still non-zero in float32
                model[3].weight.grad.mul_(1e-14)
            optimizer.step()
            optimizer.zero_grad()
            monitor.step()
        return [(a.step, a.layer) for a in monitor.summary().alerts if a.metric == "gradient_zero_fraction"]

    assert train(precision="fp16") == [(60, "3")]
    assert train() == []


def test_attribution_follows_the_forward_order_not_the_registration_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 4)  # registered first, runs last
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    torch.manual_seed(0)
    model = Reversed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(model, warmup_steps=5, alert_window=5, sample_every=1)
    for step in range(20):
        x = torch.randn(8, 4) * (math.nan if step == 12 else 1.0)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step() if step != 12 else None
        optimizer.zero_grad()
        monitor.step(loss)
    alerts = [a for a in monitor.summary().alerts if "non-finite" in a.metric]
    assert [(a.step, a.metric, a.layer) for a in alerts] == [(12, "non-finite activation (NaN/Inf)", "body")]


def test_selecting_modules_are_not_sampled_but_the_first_module_always_is():
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.MaxPool1d(2), nn.Dropout(), nn.Linear(2, 1))
    monitor = TrainingMonitor(model)
    assert monitor.layers_with_activations() == ["0", "1", "5"]
    monitor.close()


def test_no_host_read_between_report_steps_off_the_cpu(monkeypatch):
    """What set_sync_debug_mode checks on a GPU, proxied here: between report steps the monitor reads no
    tensor to the host (``_local_scalar_dense``: item(), bool(), float()), lists none (tolist()) and makes
    no tensor from host data (``lift_fresh``: torch.tensor(list), ``row[i] = 0.5``, a copy to the device
    that waits), once it does not take its buffer for host memory. Report steps read once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = []

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    real_tolist = torch.Tensor.tolist

    def tolist(self):
        reads.append("tolist")
        return real_tolist(self)

    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    # as on a GPU: the buffer and the gradient reader keep device tensors, read at report steps only
    monkeypatch.setattr(TrainingMonitor, "_host_memory", lambda self: False)
    monitor = TrainingMonitor(model, warmup_steps=5, alert_window=10, sample_every=3)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    per_step = []
    for step, (x, y) in enumerate(data(30)):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # its own read of found_inf is the training loop's, not the monitor's
        scaler.update()
        optimizer.zero_grad()
        reads.clear()
        with CountReads():
            monitor.step(loss)
        per_step.append(len(reads))
    assert [step for step, count in enumerate(per_step) if count] == [9, 19, 29]
    assert all(per_step[step] == 1 for step in (9, 19, 29))  # one transfer per report


def test_steps_run_paused_are_neither_watched_nor_counted_and_watching_resumes():
    from torch.optim.optimizer import _global_optimizer_pre_hooks

    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = TrainingMonitor(model, warmup_steps=10, alert_window=10, sample_every=5)
    hooks_before = len(_global_optimizer_pre_hooks)

    def train(x, y, fault=1.0):
        loss = nn.functional.cross_entropy(model(x), y) * fault
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(loss)

    batches = list(data(60))
    for x, y in batches[:20]:
        train(x, y)
    assert monitor._hooks.attached  # step 20 is to be sampled
    with monitor.paused():
        assert not model[0]._forward_hooks and len(_global_optimizer_pre_hooks) == hooks_before - 1
        for x, y in batches[20:30]:
            train(x, y)
            monitor.step(torch.tensor(math.nan))  # not watched: no alert
    assert monitor.steps == 20 and not monitor.alerts
    for x, y in batches[30:40]:
        train(x, y)
    train(*batches[40], fault=math.nan)
    summary = monitor.summary()
    assert [(a.step, a.metric) for a in summary.alerts] == [(30, "non-finite loss (NaN/Inf)")]
    assert monitor.history[20]["step"] == 20 and "headroom" in monitor.history[20]  # the sample resumed
    monitor.close()
    assert len(_global_optimizer_pre_hooks) == hooks_before - 1


def test_a_cpu_run_records_what_a_device_buffer_records(monkeypatch):
    """In host memory the buffer keeps Python rows and the gradient norms come over as lists; on a device
    they stay tensors until the report. The same run must read the same either way."""

    def run():
        class Writer:
            scalars: dict = {}

            def add_scalar(self, tag, value, step):
                self.scalars[tag, step] = value

        model = small_cnn()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        monitor = TrainingMonitor(model, warmup_steps=10, alert_window=10, sample_every=4, writer=Writer())
        for step, (x, y) in enumerate(data(40)):
            loss = nn.functional.cross_entropy(model(x), y) * (1e4 if step == 33 else 1.0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.step(loss)
        monitor.summary()
        return monitor

    on_host = run()
    monkeypatch.setattr(TrainingMonitor, "_host_memory", lambda self: False)
    on_device = run()
    assert on_host._buffer.on_host and not on_device._buffer.on_host
    assert [(a.step, a.metric, a.layer) for a in on_host.alerts] == [
        (a.step, a.metric, a.layer) for a in on_device.alerts] != []

    def flat(history):
        return [{(key, inner): v for key, value in row.items()
                 for inner, v in (value.items() if isinstance(value, dict) else [(None, value)])} for row in history]

    assert [row.keys() for row in flat(on_host.history)] == [row.keys() for row in flat(on_device.history)]
    for host_row, device_row in zip(flat(on_host.history), flat(on_device.history)):
        assert host_row == pytest.approx(device_row, rel=1e-5, nan_ok=True)
    assert len(on_host.history) == 40
    host_scalars, device_scalars = on_host.writer.scalars, on_device.writer.scalars
    assert any("grad_norm/0" in tag for tag, _ in host_scalars)  # per-layer norms were written
    assert host_scalars == pytest.approx(device_scalars, rel=1e-5, nan_ok=True)


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device"])
def test_gradient_zero_fractions_are_estimated_across_every_column(on_host):
    """Zero fractions are estimated on an evenly strided sample of each gradient. A step that divided a
    power-of-two row width would see the same columns in every row: a weight whose every other input
    column has a zero gradient would read as all zeros or none."""
    from flake8_amp.runtime.monitor.compute import RATIO_SAMPLE, GradientReader

    weight = torch.randn(512, 1024)
    weight[:, ::2] = 0.0
    bias = torch.randn(512)
    bias[:128] = 0.0
    sparse_rows = torch.sparse_coo_tensor(torch.tensor([[0, 5]]), torch.ones(2, 3), (100, 3), check_invariants=True)
    reader = GradientReader([0, 0, 1], 2, torch.device("cpu"), on_host)
    fractions = reader.zero_fractions([weight, bias, sparse_rows], None).tolist()
    assert weight.numel() > 4 * RATIO_SAMPLE
    assert fractions[0] == pytest.approx((weight.numel() / 2 + 128) / (weight.numel() + 512), abs=0.01)
    assert fractions[1] == pytest.approx(98 / 100)  # unstored rows of a sparse gradient are zeros
    threshold = torch.tensor(0.5)
    small = reader.zero_fractions([weight, bias, sparse_rows], threshold).tolist()
    expected = ((weight.abs() < 0.5).sum() + (bias.abs() < 0.5).sum()).item() / (weight.numel() + 512)
    assert small[0] == pytest.approx(expected, abs=0.01)
