"""The monitor's judge is host-side and torch-free: rows with named values in, alerts out. These tests run
without torch (a subprocess proves the import) and pin the judgements the monitor's users read."""

from __future__ import annotations

import math
import subprocess
import sys

from flake8_amp.runtime.monitor.judge import ActivationRow, Judge, StepRow


def judge(**options) -> Judge:
    made = Judge(**{"warmup_steps": 10, "alert_window": 10, "sigma": 8.0, **options})
    made.layer_names = ["embed", "head"]
    return made


def row(step, loss=1.0, norms=(1.0, 1.0), scale=math.nan, **fields) -> StepRow:
    grad_norm = None if all(n is None for n in norms) else math.sqrt(sum((n or 0.0) ** 2 for n in norms))
    return StepRow(step=step, loss=loss, grad_norm=grad_norm, scale=scale, lr=0.1, layer_norms=list(norms), **fields)


def test_the_judge_and_the_options_import_without_torch():
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('no torch here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from flake8_amp.runtime.monitor.judge import Judge\n"
        "from flake8_amp.runtime.monitor.options import validate_options\n"
        "from flake8_amp.runtime import precision_table\n"
        "print(precision_table(values=[1e5], formats=('fp16',)).rows[0]['fp16'].status)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "overflow"


def test_a_missing_gradient_is_not_a_nan_and_a_nan_gradient_names_its_layer():
    made = judge()
    assert made.judge(row(0, norms=(None, None))) == []
    assert made.history[-1]["grad_norm"] != made.history[-1]["grad_norm"]  # recorded as NaN: not measured
    alerts = made.judge(row(1, norms=(1.0, math.nan)))
    assert [(a.step, a.metric, a.layer) for a in alerts] == [(1, "non-finite gradient (NaN/Inf)", "head")]


def test_the_first_non_finite_activation_in_forward_order_is_named_before_the_loss():
    acts = [ActivationRow("late_registered_but_first", math.nan, math.nan, 0.0, math.nan, True, 100.0),
            ActivationRow("embed", math.nan, math.nan, 0.0, math.nan, True, 100.0)]
    alerts = judge().judge(row(3, loss=math.nan, activations=acts))
    assert [(a.metric, a.layer) for a in alerts] == [("non-finite activation (NaN/Inf)", "late_registered_but_first")]


def test_skips_known_on_the_host_alert_on_the_third_in_a_row_once_and_are_not_counted_twice():
    made = judge()
    assert made.skip_known(4, False, 2048.0) == []
    assert made.skip_known(5, True, 1024.0) == [] and made.skip_known(6, True, 512.0) == []
    alerts = made.skip_known(7, True, 256.0)
    assert [a.metric for a in alerts] == [
        "3 GradScaler steps skipped in a row (steps 5-7; scale 2.05e+03 -> 1.02e+03 -> 512 -> 256)"]
    assert made.skip_known(8, True, 128.0) == []  # the same run of skips: said once
    for step, scale in zip(range(5, 9), (1024.0, 512.0, 256.0, 128.0)):
        assert made.judge(row(step, scale=scale, skipped=True)) == []  # the report adds no second alert
    assert list(made.skipped_steps) == [5, 6, 7, 8]


def test_skips_inferred_from_the_scale_alert_at_the_report_with_the_trajectory():
    made = judge()
    alerts = [a for step, scale in enumerate((2048.0, 1024.0, 512.0, 256.0)) for a in made.judge(row(step, scale=scale))]
    assert [(a.step, a.metric) for a in alerts] == [
        (3, "3 GradScaler steps skipped in a row (steps 1-3; scale 2.05e+03 -> 1.02e+03 -> 512 -> 256)")]


def test_an_isolated_skip_is_a_growth_probe_not_an_alert():
    made = judge()
    scales = [1024.0] * 5 + [2048.0, 1024.0] + [1024.0] * 5
    assert [a for step, scale in enumerate(scales) for a in made.judge(row(step, scale=scale))] == []
    assert list(made.skipped_steps) == [6]


def test_gradient_norms_alert_up_past_a_factor_of_four_and_down_only_when_they_vanish():
    made = judge()
    for step in range(20):
        assert made.judge(row(step, norms=(1.0 + 0.01 * (step % 3), 1.0))) == []
    assert made.judge(row(20, norms=(3.5, 1.0))) == []  # 3.5x: training's own swing
    alerts = made.judge(row(21, norms=(8.0, 1.0)))
    assert ("grad_norm", "embed") in [(a.metric, a.layer) for a in alerts]
    assert made.judge(row(30, norms=(1.0, 0.01))) == []  # 100x lower: a fitted batch, a model converging
    fell = made.judge(row(40, norms=(1.0, 0.0)))
    assert [(a.metric, a.layer) for a in fell] == [("grad_norm fell (gradients vanishing)", "head")]


def test_an_underflow_ratio_over_few_values_needs_more_than_counting_noise():
    made = judge()

    def act(step, ratio, sampled):
        return row(step, activations=[ActivationRow("head", 1.0, 1e-4, ratio, math.nan, False, sampled)])

    for step in range(20):
        assert made.judge(act(step, 0.0, 32.0)) == []
    assert made.judge(act(20, 1 / 32, 32.0)) == []  # one value in 32
    assert [a.metric for a in made.judge(act(21, 8 / 32, 32.0))] == ["underflow_ratio"]


def test_gradients_falling_with_the_loss_are_a_fitted_batch_not_gradients_vanishing():
    made = judge()
    for step in range(20):
        assert made.judge(row(step, loss=1.0 + 0.01 * (step % 3), norms=(1.0, 1.0))) == []
    assert made.judge(row(20, loss=0.01, norms=(0.0, 0.0))) == []  # the loss fell 100x with them
    fell = made.judge(row(21, loss=1.0, norms=(0.0, 0.0)))
    assert {(a.metric, a.layer) for a in fell} == {("grad_norm fell (gradients vanishing)", None),
                                                   ("grad_norm fell (gradients vanishing)", "embed"),
                                                   ("grad_norm fell (gradients vanishing)", "head")}


def test_skips_said_at_once_without_the_scale_name_the_steps_and_no_stale_trajectory():
    """On a GPU the host knows the skips, not the scale: the alert names the steps, and never a trajectory
    made of the last report's values (it read 6.55e+04 four times on an H200 before this was fixed)."""
    made = judge()
    for step in range(4):
        made.judge(row(step, scale=65536.0))
    alerts = [a for step in (4, 5, 6) for a in made.skip_known(step, True, None)]
    assert [a.metric for a in alerts] == ["3 GradScaler steps skipped in a row (steps 4-6)"]


def test_a_positive_loss_is_judged_by_factors_and_a_signed_one_as_it_is():
    """A clean transformer's batch loss reached 3x its median (0.36 against 0.12) after 484 steps: noise
    that grows relative to the loss as it falls. A positive loss is judged on a log scale, past a factor of
    four; a loss that has been negative (a log-likelihood) on its own scale."""
    made = judge()
    for step in range(30):
        assert made.judge(row(step, loss=0.12 + 0.01 * (step % 3))) == []
    assert made.judge(row(30, loss=0.36)) == []
    assert [a.metric for a in made.judge(row(31, loss=1.5))] == ["loss"]
    assert made.judge(row(60, loss=0.001)) == []  # falling is training, however far
    signed = judge()
    for step in range(30):
        assert signed.judge(row(step, loss=-1.0 + 0.01 * (step % 3))) == []
    assert [a.metric for a in signed.judge(row(30, loss=-0.5))] == ["loss"]


def test_a_baselines_ring_keeps_the_last_values_in_order_without_reallocating():
    from flake8_amp.runtime.monitor.judge import _Ring

    ring = _Ring(5)
    storage = ring._items
    assert len(ring) == 0 and ring.last(3) == [] and list(ring) == []
    for value in range(1, 4):
        ring.append(float(value))
    assert len(ring) == 3 and ring.last(2) == [2.0, 3.0] and list(ring) == [1.0, 2.0, 3.0]
    for value in range(4, 13):
        ring.append(float(value))
    assert len(ring) == 5 and list(ring) == [8.0, 9.0, 10.0, 11.0, 12.0]
    assert ring.last(3) == [10.0, 11.0, 12.0] and ring.last(99) == list(ring)
    ring.refill([0.5, 1.5])
    assert list(ring) == [0.5, 1.5] and ring._items is storage  # allocated once
