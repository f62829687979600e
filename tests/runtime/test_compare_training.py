"""compare_training (precisions side by side: loss, gradient norm, loss scale, skipped steps, weight divergence)
and gradient_overflow_risk (gradients against float16's range at a loss scale)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from flake8_amp.runtime import compare_training, gradient_overflow_risk  # noqa: E402

STEPS = 20


def make_model():
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def make_batches():
    """One fixed regression batch, every step: the runs differ only by precision."""
    x = torch.randn(64, 8)
    return [(x, torch.sin(x[:, :1]) + 0.5 * x[:, 1:2])] * STEPS


def tiny_loss(output, target):
    """A loss whose gradients (~1e-8) sit below float16's smallest subnormal (6e-8) without scaling."""
    return nn.functional.mse_loss(output.float(), target) * 1e-8


def adam(params):
    return torch.optim.Adam(params, lr=2e-2)


@pytest.fixture(scope="module")
def underflow_run():
    return compare_training(make_model, make_batches, STEPS, ("fp32", "bf16", "fp16", "fp16-noscale"),
                            loss_fn=tiny_loss, optimizer=adam)


def test_float16_without_loss_scaling_stalls_where_the_scaled_run_trains(underflow_run):
    result = underflow_run
    assert result.steps == STEPS and result.reference == "fp32" and result.emulated and result.device_type == "cuda"
    fp32, bf16, fp16, noscale = (result.summary(p) for p in result.precisions)
    assert fp32["final_loss"] < 0.6 * fp32["first_loss"]  # float32 learns
    # float16 without a scaler: every gradient flushes to zero, the weights never move, the loss stays put
    assert noscale["zero_gradient_steps"] == STEPS and all(r.grad_norm == 0 for r in result.history["fp16-noscale"])
    assert noscale["final_loss"] == pytest.approx(noscale["first_loss"], rel=1e-3)
    assert noscale["max_divergence"] > 0.3
    # with GradScaler (65536, never skipped here) and in bfloat16 the run tracks float32
    assert all(r.scale == 65536.0 and not r.skipped for r in result.history["fp16"])
    assert all(r.scale == 1.0 for r in result.history["fp16-noscale"] + result.history["bf16"])
    for summary in (fp16, bf16):
        assert summary["final_loss"] == pytest.approx(fp32["final_loss"], rel=0.02)
        assert summary["max_divergence"] < 0.01 and summary["zero_gradient_steps"] == 0
    assert noscale["max_divergence"] > 30 * fp16["max_divergence"]
    # divergence is sampled every tenth of the run and at the end, for every layer of every other precision
    assert result.sample_steps == list(range(2, STEPS + 1, 2))
    assert set(result.divergence) == {"bf16", "fp16", "fp16-noscale"}
    assert all(list(layers) == ["0", "2"] for layers in result.divergence.values())
    series = [values for layers in result.divergence.values() for values in layers.values()]
    assert all(len(values) == len(result.sample_steps) for values in series)
    assert [r.step for r in result.history["fp32"]] == list(range(1, STEPS + 1))


def test_the_table_the_dict_and_the_plot(underflow_run, tmp_path):
    text = str(underflow_run)
    assert text.startswith(f"compare_training: {STEPS} steps of Adam; autocast on cuda, CUDA's policy emulated")
    assert "fp16-noscale" in text and "zero-grad steps" in text and "weight divergence from fp32" in text
    summary_row = next(line for line in text.splitlines() if line.startswith("fp16-noscale "))
    assert summary_row.split()[6] == str(STEPS)  # the zero-gradient column
    data = json.loads(json.dumps(underflow_run.to_dict()))
    assert data["summary"]["fp16-noscale"]["zero_gradient_steps"] == STEPS
    assert len(data["history"]["fp16"]) == STEPS and data["final_divergence"]["fp16-noscale"]["2"] > 0.3
    pytest.importorskip("matplotlib")
    path = underflow_run.plot(tmp_path / "training.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_gradients_too_large_for_the_scale_skip_steps_and_back_the_scale_off():
    def big_loss(output, target):
        return nn.functional.mse_loss(output.float(), target) * 1e3

    result = compare_training(make_model, make_batches, 12, ("fp32", "fp16", "fp16-noscale"), loss_fn=big_loss,
                              optimizer=lambda params: torch.optim.SGD(params, lr=1e-4))
    fp16 = result.history["fp16"]
    skipped = [r for r in fp16 if r.skipped]
    assert len(skipped) >= 5 and fp16[0].skipped and not math.isfinite(fp16[0].grad_norm)
    scales = [r.scale for r in fp16]
    assert scales[0] == 65536.0 and all(b == a / 2 for a, b, r in zip(scales, scales[1:], fp16) if r.skipped)
    assert not fp16[-1].skipped and math.isfinite(fp16[-1].grad_norm)
    assert result.summary("fp16")["skipped"] == len(skipped)
    assert result.summary("fp16-noscale")["skipped"] == 0  # without a scaler nothing is skipped


def test_runs_are_deterministic_and_leave_the_callers_random_state_alone():
    def make_dropout_model():
        return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 3))

    def make_random_batches():
        def batch(step):
            return torch.randn(16, 8), torch.randint(0, 3, (16,))  # integer target: cross-entropy by default

        return batch

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = compare_training(make_dropout_model, make_random_batches, 5, ("fp32", "bf16"))
    assert torch.equal(torch.get_rng_state(), before)
    second = compare_training(make_dropout_model, make_random_batches, 5, ("fp32", "bf16"))
    assert first.history == second.history and first.divergence == second.divergence
    assert first.optimizer == "AdamW(lr=0.001)"
    # same weights, data and dropout masks: bfloat16 follows float32 closely from the same start
    assert first.history["bf16"][0].loss == pytest.approx(first.history["fp32"][0].loss, rel=0.02)
    other_seed = compare_training(make_dropout_model, make_random_batches, 5, ("fp32",), seed=1)
    assert other_seed.history["fp32"][0].loss != first.history["fp32"][0].loss


def test_compare_training_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; known: fp32, bf16, fp16, fp16-noscale"):
        compare_training(make_model, make_batches, 3, ("fp32", "fp8"))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        compare_training(make_model, make_batches, 0)
    with pytest.raises(TypeError, match="needs make_model, a function that returns a fresh model"):
        compare_training(make_model(), make_batches, 3)
    with pytest.raises(TypeError, match="make_model and make_batches are functions"):
        compare_training(make_model, make_batches(), 3)
    with pytest.raises(TypeError, match="make_model\\(\\) must return a torch.nn.Module"):
        compare_training(lambda: "model", make_batches, 3)
    with pytest.raises(TypeError, match="each batch must be \\(inputs, target\\)"):
        compare_training(make_model, lambda: [torch.randn(4, 8)], 3)
    with pytest.raises(ValueError, match="make_batches\\(\\) gave no batch"):
        compare_training(make_model, lambda: [], 3)
    short = compare_training(make_model, lambda: make_batches()[:2], 5, ("fp32",), loss_fn=nn.functional.mse_loss)
    assert short.steps == 2 and "ran out after 2 batches" in short.notes[0] and short.sample_steps == [1, 2]


def gradients(scales: dict[str, float]) -> nn.Module:
    """A model whose gradients are set by hand: each parameter's .grad = ones * scale (one element 10x less)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    for name, p in model.named_parameters():
        p.grad = torch.full_like(p, scales[name])
        p.grad.view(-1)[0] /= 10
    return model


def test_gradient_overflow_risk_names_the_layers_and_the_scales_that_fit():
    model = gradients({"0.weight": 1e-10, "0.bias": 1e-3, "1.weight": 2.0, "1.bias": 1e-2})
    report = gradient_overflow_risk(model)
    by_name = {p.name: p for p in report.parameters}
    assert report.scale == 65536.0 and report.format == "fp16"
    assert by_name["0.weight"].status == "underflow" and by_name["0.weight"].below_normal_pct == 100
    assert by_name["1.weight"].status == "overflow" and by_name["1.weight"].overflow_count == 15
    assert by_name["0.bias"].status == by_name["1.bias"].status == "ok"
    assert report.layers == {"0": "underflow", "1": "overflow"}
    assert report.overflowing == ["1"] and report.underflowing == ["0"]
    # 2.0 * 2**14 = 32768 fits under 65504, 2**15 does not; the smallest, 1e-11, reaches 2**-14 at 2**23
    assert by_name["1.weight"].max_scale == 2.0**14 and report.max_scale == 2.0**14
    assert by_name["0.weight"].needed_scale == 2.0**23 and report.needed_scale == 2.0**23 and not report.fits
    for p in report.parameters:  # the scales hold element by element
        grad = model.get_parameter(p.name).grad.double().abs()
        assert float(grad.max()) * p.max_scale <= 65504 < float(grad.max()) * p.max_scale * 2
        assert float(grad.min()) * p.needed_scale >= 2**-14 > float(grad.min()) * p.needed_scale / 2
    text = str(report)
    assert "no single scale fits" in text and "overflow at 65536: 1" in text and "underflow at 65536" in text
    assert json.loads(json.dumps(report.to_dict()))["fits"] is False


def test_gradient_overflow_risk_at_a_scale_that_fits():
    model = gradients({"0.weight": 1e-8, "0.bias": 1e-4, "1.weight": 1e-2, "1.bias": 1e-3})
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    report = gradient_overflow_risk(model, scaler, coverage=0.9)
    assert report.scale == 1024.0 and report.fits and report.layers == {"0": "underflow", "1": "ok"}
    # 90% coverage lets the one 1e-9 element of 0.weight go: 1e-8 reaches 2**-14 at 2**13; 1e-2 fits up to 2**22
    assert report.needed_scale == 2.0**13 and report.max_scale == 2.0**22
    assert "any power of two from" in str(report)
    flushed = gradient_overflow_risk(model, scale=1.0)
    assert flushed.parameters[0].underflow_pct == 100.0  # 1e-8 and 1e-9 round to zero in float16 unscaled
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        gradient_overflow_risk(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        gradient_overflow_risk(model, scale=0)
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        gradient_overflow_risk([torch.zeros(2)])
