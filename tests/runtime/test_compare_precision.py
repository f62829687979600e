"""compare_precision and keep_fp32: layers ranked worst first, the float32 plan, the model left untouched, memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from flake8_amp.runtime import compare_precision, keep_fp32  # noqa: E402
from flake8_amp.runtime.compare.common import default_layers  # noqa: E402
from flake8_amp.runtime.compare.layers import _ErrorSums  # noqa: E402
from flake8_amp.runtime.cuda_emulation import CudaEmulation  # noqa: E402
from flake8_amp.runtime.formats import get_format  # noqa: E402

ORDER = ["inp", "fragile", "norm", "mid", "out"]


class Fragile(nn.Module):
    """fp32 is fine: ``norm`` brings ``fragile``'s outputs (up to ~1e5) back to unit scale; in float16
    ``fragile``'s output overflows 65504 and everything after it is inf or NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.fragile = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.mid = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)
        with torch.no_grad():
            self.fragile.weight.mul_(3e5)

    def forward(self, x):
        x = self.norm(self.fragile(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.mid(x)))


class Exponential(nn.Module):
    """exp of a scaled input: CUDA autocast runs exp in float32, a float16 cast overflows past e**11.1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(6.0))

    def forward(self, x):
        return torch.exp(x * self.scale)


class ExpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.exp = Exponential()
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.norm(self.exp(torch.tanh(self.inp(x)) * 2)))


def fragile_case():
    torch.manual_seed(0)
    return Fragile(), torch.randn(64, 16)


def end_to_end_sqnr(model, x, fmt="fp16", dtype=torch.float16):
    """The model's output under emulated CUDA autocast against float32, measured independently of the report."""
    with torch.no_grad():
        reference = model(x)
        with CudaEmulation(), torch.autocast("cuda", dtype=dtype):
            output = model(x)
    sums = _ErrorSums(get_format(fmt))
    sums.add(reference, output)
    return sums.sqnr


def test_the_fragile_layer_ranks_first_and_is_exactly_what_to_keep_in_float32():
    model, x = fragile_case()
    report = compare_precision(model, x)
    worst = report.layers[0]
    assert (worst.name, worst.format, worst.kind) == ("fragile", "fp16", "Linear")
    assert worst.sqnr == worst.local_sqnr == -math.inf and worst.max_rel_error == math.inf
    assert 10 < worst.overflow_pct < 90
    assert report.keep_fp32 == ["fragile"]
    plan = report.plans["fp16"]
    assert plan.met and plan.sqnr_before == -math.inf and plan.sqnr_after >= 40
    assert report.end_to_end_sqnr["fp16"] == -math.inf and report.end_to_end["fp16"].nonfinite > 0
    # every layer in both formats, forward order kept in .order; healthy layers in plausible ranges
    assert len(report.layers) == 10
    for fmt in ("fp16", "bf16"):
        entries = sorted((e for e in report.layers if e.format == fmt), key=lambda e: e.order)
        assert [e.name for e in entries] == ORDER
    for entry in report.layers:
        if entry.name in ("inp", "mid", "out"):
            low, high = (60, 80) if entry.format == "fp16" else (45, 60)
            assert low < entry.local_sqnr < high, entry
        if entry.format == "bf16":
            assert 40 < entry.sqnr < 60 and entry.overflow_pct == 0, entry
    assert report.emulated and report.device_type == "cuda" and report.mode == "autocast"
    assert report.plans["bf16"].names == [] and report.plans["bf16"].met
    # the plan, applied by hand, meets the target end to end; removing it puts the model back
    assert end_to_end_sqnr(model, x) == -math.inf
    handle = keep_fp32(model, report.keep_fp32)
    assert end_to_end_sqnr(model, x) >= 40
    handle.remove()
    assert "forward" not in model.fragile.__dict__
    assert end_to_end_sqnr(model, x) == -math.inf


def test_without_the_accumulated_error_the_own_errors_and_the_plan_are_the_same():
    model, x = fragile_case()
    full = compare_precision(model, x)
    own = compare_precision(model, x, accumulated=False)
    assert all(entry.sqnr is None and entry.max_rel_error is None for entry in own.layers)
    key = lambda entry: (entry.name, entry.format)  # noqa: E731
    assert [(key(e), e.local_sqnr, e.local_max_rel_error, e.overflow_pct, e.underflow_pct, e.calls)
            for e in sorted(own.layers, key=key)] == [
        (key(e), e.local_sqnr, e.local_max_rel_error, e.overflow_pct, e.underflow_pct, e.calls)
        for e in sorted(full.layers, key=key)]
    assert own.layers[0].name == "fragile" and own.keep_fp32 == full.keep_fp32 == ["fragile"]
    assert own.end_to_end == full.end_to_end and own.plans == full.plans
    assert "n/a" in str(own).splitlines()[4]  # the accumulated columns say they were not measured


def test_the_report_prints_a_table_and_code_that_applies_the_plan():
    model, x = fragile_case()
    report = compare_precision(model, x, formats="fp16")
    text = str(report)
    assert "fragile (Linear)  fp16" in text and "keep in float32 for fp16: fragile" in text
    assert "keep_fp32(model, ['fragile'])" in text
    namespace = {"model": model}
    exec(report.code(), namespace)  # noqa: S102 - the code the report prints, run as a user would
    assert end_to_end_sqnr(model, x) >= report.target_sqnr
    namespace["keep_fp32"](model, ["fragile"]).remove()  # a second application only counts
    assert isinstance(model.fragile.__dict__.get("forward"), object) and "forward" in model.fragile.__dict__
    data = json.loads(json.dumps(report.to_dict()))
    assert data["keep_fp32"] == ["fragile"] and data["end_to_end_sqnr"]["fp16"] == "-inf"
    assert data["layers"][0]["sqnr"] == "-inf"


def test_keep_fp32_is_idempotent_and_removable():
    model, x = fragile_case()
    first = keep_fp32(model, ["fragile", "fragile"])
    second = keep_fp32(model, "fragile")
    assert model.fragile.__dict__["forward"].count == 2
    first.remove()
    first.remove()  # a second remove does nothing
    assert end_to_end_sqnr(model, x) >= 40
    second.remove()
    assert "forward" not in model.fragile.__dict__
    with keep_fp32(model, ["fragile"]):
        with CudaEmulation(), torch.autocast("cuda", dtype=torch.float16):
            assert model.fragile(torch.randn(2, 32)).dtype == torch.float32  # autocast is off inside it
            assert model.mid(torch.randn(2, 32)).dtype == torch.float16
    assert "forward" not in model.fragile.__dict__


def test_the_model_is_left_exactly_as_it_was():
    model, x = fragile_case()
    model.train()
    model.norm.eval()
    model.inp.weight.requires_grad_(False)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    target = torch.randint(0, 4, (64,))
    report = compare_precision(model, x, target=target, loss_fn=nn.functional.cross_entropy, mode="autocast")
    compare_precision(model, x, mode="cast", formats=("bf16",))
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
    assert all(value.dtype == state[name].dtype for name, value in model.state_dict().items())
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert not model.inp.weight.requires_grad and model.fragile.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and "forward" not in module.__dict__
    # gradients: every trainable parameter in both formats, at the scale they were computed at
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {(g.name, g.format) for g in report.gradients} == {(n, f) for n in trainable for f in ("fp16", "bf16")}
    assert all(g.loss_scale == 1.0 for g in report.gradients if g.format == "bf16")
    assert all(g.sqnr == -math.inf for g in report.gradients if g.format == "fp16")  # its forward overflows


def test_gradients_of_a_healthy_model_are_compared_with_float32():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x, target = torch.randn(64, 16), torch.randint(0, 4, (64,))
    report = compare_precision(model, x, target=target, loss_fn=nn.functional.cross_entropy)
    assert len(report.gradients) == 8
    for g in report.gradients:
        assert (25 if g.format == "bf16" else 45) < g.sqnr < 90, g
        assert g.loss_scale == (65536.0 if g.format == "fp16" else 1.0)
    assert report.keep_fp32 == [] and "gradients (loss_fn), worst first" in str(report)


def test_mode_cast_casts_the_whole_layer_and_autocast_follows_the_device_policy():
    torch.manual_seed(0)
    model, x = ExpNet(), torch.randn(32, 8)
    under_autocast = compare_precision(model, x, formats="fp16")  # CUDA autocast runs exp in float32
    assert under_autocast.end_to_end_sqnr["fp16"] > 40 and under_autocast.keep_fp32 == []
    exp = next(e for e in under_autocast.layers if e.name == "exp")
    assert exp.overflow_pct > 0  # its float32 output exceeds 65504, though autocast keeps it in float32
    cast = compare_precision(model, x, formats="fp16", mode="cast")
    assert not cast.emulated and cast.device_type is None
    assert cast.layers[0].name == "exp" and cast.layers[0].local_sqnr == -math.inf
    # cast whole, norm gets exp's float32 output, beyond float16's range: both stay in float32
    assert cast.keep_fp32 == ["exp", "norm"] and cast.plans["fp16"].sqnr_after >= 40
    # the printed cast-mode code, run on a float32 copy, casts it and keeps the two layers in float32
    copy = ExpNet()
    copy.load_state_dict(model.state_dict())
    exec(cast.code(), {"model": copy})  # noqa: S102
    assert copy.inp.weight.dtype == torch.float16 and copy.exp.scale.dtype == copy.norm.weight.dtype == torch.float32
    with torch.no_grad():
        output, reference = copy(x), model(x)
    assert output.dtype == torch.float16
    sums = _ErrorSums(get_format("fp16"))
    sums.add(reference, output)
    assert sums.sqnr >= 40
    on_cpu = compare_precision(model, x, formats="bf16", device_type="cpu")
    assert on_cpu.device_type == "cpu" and not on_cpu.emulated


def test_layers_default_to_parameterised_leaves_and_attention_whole():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.ff = nn.Linear(16, 16)
            self.shared = nn.Linear(16, 16)

        def forward(self, x):
            x = x + self.attn(x, x, x)[0] * torch.ones(1, device="cuda")  # written for a GPU: emulated here
            return self.shared(self.shared(self.ff(x)))  # called twice: both calls count

    torch.manual_seed(0)
    model = Block()
    assert default_layers(model) == ["attn", "ff", "shared"]
    report = compare_precision(model, torch.randn(4, 6, 16), formats="bf16")
    by_name = {e.name: e for e in report.layers}
    assert by_name["shared"].calls == 2 and by_name["attn"].calls == 1 and by_name["attn"].kind == "MultiheadAttention"
    assert all(35 < e.sqnr < 70 for e in report.layers), report.layers
    partial = compare_precision(model, torch.randn(4, 6, 16), formats="bf16", layers=["ff"])
    assert [e.name for e in partial.layers] == ["ff"]


def test_outputs_changed_in_place_after_their_layer_are_compared_as_they_were():
    """A residual block as torchvision writes it: ReLU(inplace=True) right after a batch norm, ``out += x``
    after the second. The float32 output handed over is a copy, so a later in-place op cannot change it."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += x
            return self.relu(out)

    torch.manual_seed(0)
    model = Residual()
    report = compare_precision(model, torch.randn(4, 8, 12, 12), formats="fp16")
    assert [e.name for e in sorted(report.layers, key=lambda e: e.order)] == ["conv1", "bn1", "conv2", "bn2"]
    assert all(55 < e.sqnr < 80 and 55 < e.local_sqnr for e in report.layers), report.layers
    assert not report.notes and all(not e.note for e in report.layers)


def test_a_transformer_encoder_runs_the_same_layers_in_both_precisions():
    """Without grad in eval mode a float32 encoder layer may take its fused path, which calls none of its
    children; torch skips that path while a child has a hook, so both runs call the same layers."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    report = compare_precision(model, torch.randn(2, 10, 32), formats="fp16")
    names = [f"layers.{i}.{part}" for i in range(2) for part in ("self_attn", "linear1", "linear2", "norm1", "norm2")]
    assert sorted(e.name for e in report.layers) == sorted(names)
    assert not report.notes and not report.uncalled and all(e.calls == 1 and e.sqnr > 50 for e in report.layers)


def test_an_unreachable_target_is_reported_not_hidden():
    class Mixer(nn.Module):
        """A matmul outside any layer: autocast lowers it whatever the layers do."""

        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)
            self.register_buffer("mix", torch.randn(16, 16) / 4)

        def forward(self, x):
            return self.b(torch.mm(self.a(x), self.mix))

    torch.manual_seed(0)
    model = Mixer()
    report = compare_precision(model, torch.randn(8, 16), formats="bf16", target_sqnr=70)
    plan = report.plans["bf16"]
    assert not plan.met and sorted(plan.names) == ["a", "b"] and plan.sqnr_after < 70
    assert "does NOT meet" in str(report) and "even with every compared layer in float32" in plan.note
    single = compare_precision(nn.Linear(16, 4), torch.randn(8, 16), formats="bf16")
    assert [e.name for e in single.layers] == [""] and "(model) (Linear)" in str(single)


def test_bad_input_gets_a_clear_error():
    model, x = fragile_case()
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        compare_precision(lambda t: t, x)
    with pytest.raises(ValueError, match="needs inputs"):
        compare_precision(model, ())
    with pytest.raises(ValueError, match="needs inputs"):
        compare_precision(model, None)
    with pytest.raises(ValueError, match="unknown float format 'fp12'"):
        compare_precision(model, x, formats=("fp12",))
    with pytest.raises(ValueError, match="'fp8_e4m3fn' cannot run a layer"):
        compare_precision(model, x, formats="fp8")
    with pytest.raises(ValueError, match="unknown mode 'amp'"):
        compare_precision(model, x, mode="amp")
    with pytest.raises(ValueError, match="no layer 'fragil'; did you mean 'fragile'"):
        compare_precision(model, x, layers=["fragil"])
    with pytest.raises(ValueError, match="layers is empty"):
        compare_precision(model, x, layers=[])
    with pytest.raises(ValueError, match="does not fit a model on cpu"):
        compare_precision(model, x, device_type="mps")
    with pytest.raises(ValueError, match="no layer 'nrom'; did you mean 'norm'"):
        keep_fp32(model, ["nrom"])
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        compare_precision(model, torch.randn(4, 3))
    for module in model.modules():  # a failure leaves no hook behind either
        assert not module._forward_hooks and not module._forward_pre_hooks


MEMORY_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from torch import nn
    from flake8_amp.runtime import compare_precision
    torch.set_num_threads(1)
    depth, width, batch = 32, 256, 4096
    activation = batch * width * 4
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, std=width ** -0.5)
        layers += [linear, nn.Tanh()]
    model = nn.Sequential(*layers)
    x = torch.randn(batch, width)
    compare_precision(nn.Linear(4, 4), torch.randn(2, 4), formats="fp16")  # warm up: emulation, thread stacks

    def data_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    budget = int(sys.argv[1]) * activation
    accumulated = sys.argv[2] == "accumulated"
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + budget, resource.RLIM_INFINITY))
    result = {"budget": budget, "stored": 2 * depth * activation}
    with torch.no_grad():
        model(x)
    result["forward"] = "ok"
    try:
        report = compare_precision(model, x, formats="fp16", accumulated=accumulated)
    except RuntimeError as exc:
        result["compare"] = "failed: " + str(exc).splitlines()[0][:80]
        print(json.dumps(result))
        sys.exit(0)
    result["compare"] = "ok"
    result["sqnr"] = report.end_to_end_sqnr["fp16"]
    result["layers"] = len(report.layers)
    stored = []
    hooks = [m.register_forward_hook(lambda m, i, o: stored.append((i[0].clone(), o.clone()))) for m in model[::2]]
    try:
        with torch.no_grad():
            model(x)
        result["store_all"] = "ok"
    except RuntimeError as exc:
        result["store_all"] = "failed: " + str(exc).splitlines()[0][:80]
    result["stored_layers"] = len(stored)
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc/self/status are Linux's")
@pytest.mark.parametrize(("accumulated", "activations"), [(True, 16), (False, 8)], ids=["lockstep", "accumulated-off"])
def test_memory_stays_near_a_forward_where_storing_the_activations_would_not_fit(accumulated, activations):
    """32 layers of 4 MiB activations, in a process whose data segment may grow by a few activations
    (RLIMIT_DATA): a float32 forward and compare_precision run in that; recording every layer's input and
    output (256 MiB) runs out. With the accumulated error (float32 and low precision in lockstep) the
    budget is 16 activations; without it, one forward plus one layer: 8 (it has run in 5, the forward
    alone in 4, the lockstep needs 12). glibc is told to map every allocation of 1 MiB or more on its own, so freed
    activations go back at once and heap fragmentation cannot decide the outcome."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_ARENA_MAX="2")
    mode = "accumulated" if accumulated else "own"
    result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(activations), mode], capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["stored"] >= 4 * data["budget"]
    assert data["forward"] == data["compare"] == "ok"
    assert data["layers"] == 32 and 40 < data["sqnr"] < 80
    assert data["store_all"].startswith("failed") and data["stored_layers"] < 16
