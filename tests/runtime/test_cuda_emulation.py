"""CUDA emulated on the CPU: the device a CUDA script asks for, CUDA autocast's policy op by op, and
nothing left behind."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flake8_amp.runtime import cuda_policy  # noqa: E402
from flake8_amp.runtime.cuda_emulation import EMULATED_DEVICE_NAME, CudaEmulation, NotEmulated  # noqa: E402
from flake8_amp.runtime.cuda_policy import BANNED_MESSAGE, CUDA_POLICY  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="emulation is for machines without CUDA")


@pytest.fixture
def emulated(tmp_path):
    with CudaEmulation(tmp_path) as emulation:
        yield emulation


def _cuda_autocast_ops() -> set[str]:
    names = torch._C._dispatch_get_all_op_names()
    return {
        name.removeprefix("aten::")
        for name in names
        if name.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCUDA")
    }


# ------------------------------------------------------------------------------------- the table
def test_the_table_names_exactly_the_ops_torch_gives_a_cuda_autocast_kernel():
    """The CPU wheel registers the AutocastCUDA kernels too: the table is held to this torch's binary."""
    assert set(CUDA_POLICY) == _cuda_autocast_ops()


def test_the_banned_message_is_the_one_torch_carries():
    """CUDA autocast's error text is compiled into libtorch_cpu (autocast_mode.cpp): the emulated one is it."""
    library = Path(torch.__file__).parent / "lib" / ("libtorch_cpu.so" if sys.platform != "win32" else "torch_cpu.dll")
    if not library.is_file():
        pytest.skip(f"no {library.name} in this torch build")
    with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as binary:
        assert binary.find(BANNED_MESSAGE.encode()) != -1
    assert CUDA_POLICY["binary_cross_entropy"] == cuda_policy.BANNED


# ------------------------------------------------------------------------------------- the device
def test_a_cuda_script_finds_a_device_and_its_tensors_land_on_the_cpu(emulated):
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1 and torch.cuda.current_device() == 0
    assert torch.cuda.get_device_name(0) == EMULATED_DEVICE_NAME
    assert torch.cuda.get_device_properties(0).total_memory > 0 and torch.cuda.is_bf16_supported()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert device == "cuda"
    model = nn.Linear(3, 2).cuda()
    model.to(torch.device("cuda:0"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 3)), batch_size=2, pin_memory=True)
    assert [batch.cuda(non_blocking=True).shape for (batch,) in loader] == [(2, 3), (2, 3)]
    tensors = [
        torch.zeros(2, 3, device="cuda"),
        torch.randn(2, 3, device=torch.device("cuda", 0)),
        torch.ones(2, 3).cuda(),
        torch.ones(2, 3).to("cuda", non_blocking=True),
        torch.ones(2, 3).to(device="cuda:0", dtype=torch.float64),
        torch.empty(2, 3, pin_memory=True).pin_memory(),
        torch.zeros_like(torch.ones(1), device="cuda"),
        torch.ones(1).new_zeros(2, device="cuda"),
    ]
    assert all(t.device.type == "cpu" for t in tensors) and tensors[4].dtype == torch.float64
    assert model(tensors[0]).shape == (2, 2)
    torch.cuda.synchronize()
    torch.cuda.manual_seed_all(0)
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == 0 and torch.cuda.memory_allocated(0) == 0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        end.record()
        tensors[0].record_stream(stream)
    end.synchronize()
    assert start.elapsed_time(end) >= 0


def test_a_cuda_api_that_is_not_emulated_names_itself_and_the_line(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\n\ngraph = torch.cuda.CUDAGraph()\n")
    with CudaEmulation(tmp_path):
        with pytest.raises(NotEmulated, match=r"not emulated: torch\.cuda\.CUDAGraph \(at .*train\.py:3\)"):
            exec(compile(script.read_text(), str(script), "exec"), {})
        # torch's own code and other libraries see the real module
        assert torch.cuda.OutOfMemoryError is sys.modules["torch.cuda"].OutOfMemoryError


# ------------------------------------------------------------------------------------- autocast
def test_cuda_autocast_casts_as_cuda_does(emulated):
    x, w = torch.randn(4, 8).cuda(), torch.randn(8, 8).cuda()
    with torch.autocast("cuda"):
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16
        h = x @ w
        assert h.dtype == torch.float16  # lower-precision list
        assert F.linear(x, w).dtype == torch.float16
        # the float32 list, where CPU autocast would keep float16
        for value in (h.softmax(-1), F.log_softmax(h, -1), h.sum(), h.cumsum(0), h.exp(), h.log1p(),
                      F.layer_norm(h, (8,)), h.pow(2), h.norm(), torch.linalg.vector_norm(h)):
            assert value.dtype == torch.float32
        assert h.softmax(-1, dtype=torch.float16).dtype == torch.float16  # an explicit dtype is kept
        assert F.cross_entropy(h, torch.tensor([0, 1, 2, 3])).dtype == torch.float32
        # ops on no list run in their inputs' dtype
        assert h.mean().dtype == torch.float16 and torch.sigmoid(h).dtype == torch.float16
        # promote: the widest input
        assert torch.addcmul(h, h.float(), h).dtype == torch.float32
        assert torch.addcmul(h, h, h).dtype == torch.float16
        with pytest.raises(RuntimeError) as raised:
            F.binary_cross_entropy(torch.sigmoid(h), torch.rand(4, 8))
        assert str(raised.value) == BANNED_MESSAGE
        with torch.autocast("cuda", enabled=False):
            assert not torch.is_autocast_enabled("cuda") and (x @ w).dtype == torch.float32
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert (x @ w).dtype == torch.bfloat16 and (x @ w).softmax(-1).dtype == torch.float32
    with torch.cuda.amp.autocast():  # the deprecated spelling
        assert (x @ w).dtype == torch.float16
    assert not torch.is_autocast_enabled("cuda") and (x @ w).dtype == torch.float32


def test_an_autocast_cpu_region_keeps_cpus_policy(emulated):
    h = torch.randn(4, 8) @ torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.randn(4, 8) @ torch.randn(8, 8)
        assert low.dtype == torch.bfloat16
        assert low.softmax(-1).dtype == torch.bfloat16  # CPU autocast does not upcast softmax
        assert F.mse_loss(low, low).dtype == torch.float32  # but does mse_loss
        assert not torch.is_autocast_enabled("cuda") and torch.is_autocast_enabled("cpu")
        assert F.binary_cross_entropy(torch.sigmoid(h), torch.rand(4, 8)).dtype == torch.float32


def test_each_device_keeps_its_own_autocast_state_as_on_real_hardware(emulated):
    x, w = torch.randn(4, 8).cuda(), torch.randn(8, 8).cuda()
    use_cuda = torch.cuda.is_available()
    # the common "one of the two regions is on" idiom: the CPU region that is off leaves CUDA's on
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_cuda), torch.autocast(
        "cpu", dtype=torch.float16, enabled=not use_cuda
    ):
        assert torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
        assert (x @ w).dtype == torch.float16 and (x @ w).softmax(-1).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cuda", enabled=False):
            assert torch.is_autocast_enabled("cpu") and (x @ w).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
    assert (x @ w).dtype == torch.float32


def test_a_transformer_layer_trains_under_emulated_autocast(emulated):
    """Composite ops (scaled_dot_product_attention's math path) run with autocast excluded, as torch's
    autocast kernels run them: their parts are not cast a second time (which broke the backward)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0).cuda()
    x = torch.randn(2, 5, 32, device="cuda")
    with torch.autocast("cuda"):
        attention = F.scaled_dot_product_attention(x, x, x)
        out = layer(x)
    assert attention.dtype == torch.float16 and out.dtype == torch.float32  # the last op is a layer_norm
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


def test_a_float16_product_is_rounded_operands_accumulated_in_float32_rounded_back(emulated):
    a, b = torch.randn(16, 64), torch.randn(64, 16)
    with torch.autocast("cuda"):
        product = a @ b
    assert torch.equal(product, (a.half().float() @ b.half().float()).half())


def test_gradients_flow_through_the_casts_and_grad_scaler_cuda_scales(emulated):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    assert scaler.is_enabled()
    x, y = torch.randn(4, 8, device="cuda"), torch.rand(4, 1, device="cuda")
    with torch.autocast("cuda"):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
    scaler.scale(loss).backward()
    assert model[0].weight.grad.dtype == torch.float32
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 1024.0
    # an inf gradient: the step is skipped and the scale halves, as on the GPU
    before = model[0].weight.detach().clone()
    with torch.autocast("cuda"):
        loss = model(x).sum() * float("inf")
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 512.0 and torch.equal(model[0].weight, before)


def test_custom_fwd_casts_inputs_and_custom_bwd_restores_the_state(emulated):
    seen = {}

    class Scale(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
        def forward(ctx, a):
            seen["forward"] = (a.dtype, torch.is_autocast_enabled("cuda"))
            return a * 2

        @staticmethod
        @torch.amp.custom_bwd(device_type="cuda")
        def backward(ctx, grad):
            seen["backward"] = torch.is_autocast_enabled("cuda")
            return grad * 2

    w = torch.randn(4, 4, device="cuda", requires_grad=True)
    with torch.autocast("cuda"):
        out = Scale.apply(torch.randn(2, 4, device="cuda") @ w)
    out.sum().backward()
    assert seen == {"forward": (torch.float32, False), "backward": False}
    assert out.dtype == torch.float32


# ------------------------------------------------------------------------------------- nothing leaks
def _global_state():
    return {
        "cuda": torch.cuda,
        "is_available": torch.cuda.is_available,
        "autocast": (torch.autocast, torch.amp.autocast, torch.amp.autocast_mode.autocast, torch.cuda.amp.autocast),
        "queries": (torch.is_autocast_enabled, torch.get_autocast_dtype, torch.amp.autocast_mode._cast),
        "record_stream": torch.Tensor.record_stream,
        "modes": len(torch.overrides._get_current_function_mode_stack()),
    }


def _cpu_softmax_dtype():
    with torch.autocast("cpu", dtype=torch.float16):
        return (torch.randn(2, 2) @ torch.randn(2, 2)).softmax(-1).dtype


@pytest.mark.parametrize("raises", [False, True])
def test_everything_is_put_back(tmp_path, raises):
    before, softmax_before = _global_state(), _cpu_softmax_dtype()
    try:
        with CudaEmulation(tmp_path):
            assert torch.cuda.is_available()
            with torch.autocast("cuda"):
                if raises:
                    raise KeyError("the script failed")
    except KeyError:
        assert raises
    assert _global_state() == before and not torch.cuda.is_available()
    assert torch.cuda is sys.modules["torch.cuda"]
    assert _cpu_softmax_dtype() == softmax_before == torch.float16
    with CudaEmulation(tmp_path):  # and it can be entered again
        assert torch.cuda.is_available()
    with pytest.raises(RuntimeError, match="already active"):
        with CudaEmulation(tmp_path):
            with CudaEmulation(tmp_path):
                pass
    assert _global_state() == before


# ------------------------------------------------------------------------------------- through verify
CUDA_ONLY_SCRIPT = """
import torch
import torch.nn as nn

model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cuda")
criterion = nn.BCELoss()
torch.cuda.manual_seed_all(0)
for step in range(3):
    x = torch.randn(8, 16).cuda(non_blocking=True)
    y = torch.rand(8, 1, device="cuda").round()
    with torch.autocast("cuda"):
        loss = criterion(torch.sigmoid(model(x)), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    torch.cuda.synchronize()
"""


def test_a_script_written_only_for_cuda_verifies_here_and_amp002_is_confirmed(tmp_path):
    from flake8_amp.runtime import verify

    (tmp_path / "setup.cfg").write_text("")
    script = tmp_path / "train.py"
    script.write_text(CUDA_ONLY_SCRIPT)
    report = verify(script)
    assert report.emulated and report.device == "cpu"
    [finding] = report.findings
    assert (finding.code, finding.line, finding.verdict.value) == ("AMP002", 8, "confirmed")
    assert finding.evidence.startswith(
        'step 0: RuntimeError "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast."'
    )
    assert (report.script_error.type, report.script_error.line) == ("RuntimeError", 14)
    assert not torch.cuda.is_available()
    # without emulation the same script cannot even build its model here, and AMP002 is never reached
    plain = verify(script, device="cpu")
    assert not plain.emulated and plain.findings[0].verdict.value == "not_reached"
    assert "CUDA" in plain.script_error.message


# ------------------------------------------------------------------------------------- every op in the table
class _Recorded:
    """Stands in for an ATen overload: the real schema, a redispatch that records what it was handed."""

    def __init__(self, name):
        base, _, overload = name.partition(".")
        self.real = getattr(getattr(torch.ops.aten, base), overload or "default")
        self._schema = self.real._schema
        self.calls = []

    def redispatch(self, keyset, *args, **kwargs):
        self.calls.append((args, kwargs))
        return torch.full((2,), 1.0 + 2**-12)  # a float32 result that float16 cannot hold exactly


def _arguments(schema, make):
    """Arguments for a schema: a tensor from ``make`` for each Tensor, a list of two for Tensor[], else the
    default or a harmless value; keyword-only ones are left to their defaults."""
    args = []
    for argument in schema.arguments:
        if argument.kwarg_only:
            break
        kind = str(argument.type)
        if kind.startswith("Tensor[]") or kind.startswith("List[Tensor]"):
            args.append([make(), make()])
        elif "Tensor" in kind:
            args.append(make())
        elif argument.has_default_value():
            args.append(argument.default_value)
        else:
            args.append(0)
    return args


def _tensor_values(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensor_values(item)]
    return []


def _dtypes(value):
    if isinstance(value, torch.Tensor):
        return [value.dtype]
    if isinstance(value, (list, tuple)):
        return [d for item in value for d in _dtypes(item)]
    return []


@pytest.mark.parametrize("name", sorted(CUDA_POLICY))
def test_every_op_in_the_table_is_cast_as_the_table_says(name, emulated):
    from flake8_amp.runtime.cuda_emulation import _make_kernel

    policy = CUDA_POLICY[name]
    op = _Recorded(name)
    kernel = _make_kernel(op, name, None)
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    source = torch.float32 if policy in (cuda_policy.LOWER_PRECISION_FP, cuda_policy.PROMOTE) else torch.float16
    # 1 + 2**-12 is a float32 that float16 rounds to 1: whether an operand was rounded shows in its value
    args = _arguments(op._schema, lambda: torch.full((2,), 1.0 + 2**-12).to(source))
    if policy == cuda_policy.PROMOTE:  # one float16 input beside the float32 ones
        args[0] = torch.ones(2, dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        if policy == cuda_policy.BANNED:
            with pytest.raises(RuntimeError, match="unsafe to autocast"):
                kernel(keyset, *args)
            return
        out = kernel(keyset, *args)
    if policy == cuda_policy.FP32_APPEND_DTYPE:
        assert op.calls == []  # redispatched to the overload that takes a dtype, float32
        return
    [(called, kwargs)] = op.calls
    dtypes = set(_dtypes(called))
    if policy == cuda_policy.LOWER_PRECISION_FP:
        returns = op._schema.returns
        if len(returns) == 1 and str(returns[0].type) == "Tensor":
            # operands rounded to float16, multiplied in float32, the result rounded to float16
            assert dtypes == {torch.float32}
            assert all(torch.equal(t, torch.ones(2)) for t in _tensor_values(called))
            assert out.dtype == torch.float16 and torch.equal(out, torch.ones(2, dtype=torch.float16))
        else:
            assert dtypes == {torch.float16}
    elif policy in (cuda_policy.FP32, cuda_policy.PROMOTE):
        assert dtypes == {torch.float32}
    elif policy == cuda_policy.FP32_SET_OPT_DTYPE:
        index = next(i for i, argument in enumerate(op._schema.arguments) if argument.name == "dtype")
        assert (called[index] if len(called) > index else kwargs.get("dtype")) == torch.float32


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_buggy_example_s_hazards_are_confirmed_with_cuda_emulated_and_its_twin_is_clean(capsys):
    """The issue's bar: run as on a GPU, train_buggy.py's main block reaches its hazards and verify
    confirms them with evidence; train_fixed.py has nothing to confirm."""
    from flake8_amp.runtime import verify

    report = verify(EXAMPLES / "train_buggy.py", steps=4, device="emulated")
    assert report.emulated and report.script_error is None
    confirmed = {f.code: f.evidence for f in report.findings if f.verdict.value == "confirmed"}
    assert {"AMP001", "AMP002", "AMP007", "AMP010", "AMP019"} <= set(confirmed)
    assert confirmed["AMP002"].endswith('RuntimeError "torch.nn.functional.binary_cross_entropy and '
                                        'torch.nn.BCELoss are unsafe to autocast."')
    assert confirmed["AMP007"].endswith('RuntimeError "value cannot be converted to type c10::Half without overflow"')
    assert "clip saw a total norm of" in confirmed["AMP010"]
    assert "the optimizer stepped on gradients still scaled by" in confirmed["AMP019"]
    fixed = verify(EXAMPLES / "train_fixed.py", steps=4, device="emulated")
    assert fixed.findings == [] and fixed.script_error is None and fixed.nonfinite_origins == []
    capsys.readouterr()
