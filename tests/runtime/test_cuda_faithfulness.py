"""Is CUDA emulated on a CPU what CUDA does? The same small workloads run natively on a GPU and emulated,
op by op: the dtype of every op's output must agree, and so must verify's verdicts on the bundled
example. The native side needs a GPU (these tests skip without one); on a CPU, the emulated side is
held to what CUDA's autocast documents, written out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from flake8_amp.runtime.cuda_emulation import CudaEmulation  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to compare with")


class _DtypeTrace(TorchFunctionMode):
    """(op name, dtypes of its floating outputs) for every torch call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[tuple[str, tuple[str, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        dtypes = tuple(str(t.dtype) for t in outputs if isinstance(t, torch.Tensor) and t.is_floating_point())
        if dtypes:
            self.trace.append((getattr(func, "__name__", str(func)), dtypes))
        return out


def attention_block(device: str) -> dict[str, torch.dtype]:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, device=device)
    w = torch.randn(16, 16, device=device)
    norm = nn.LayerNorm(16).to(device)
    with torch.autocast("cuda"):
        scores = (x @ w) @ x.transpose(1, 2)
        return {
            "matmul": scores.dtype,
            "softmax": scores.softmax(-1).dtype,
            "explicit dtype": scores.softmax(-1, dtype=torch.float16).dtype,
            "layer_norm": norm(x @ w).dtype,
            "sum": scores.sum().dtype,
            "mean": scores.mean().dtype,
            "exp": scores.exp().dtype,
            "sigmoid": scores.sigmoid().dtype,
            "cross_entropy": F.cross_entropy(scores[:, 0], torch.tensor([0, 1], device=device)).dtype,
            "addcmul": torch.addcmul(scores, scores.float(), scores).dtype,
            "sdpa": F.scaled_dot_product_attention(x, x, x).dtype,
            "linear": F.linear(x, w).dtype,
            "bf16 matmul": _in_bf16(x, w),
        }


def _in_bf16(x, w):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return (x @ w).dtype


#: what CUDA autocast's op reference says these ops produce
CUDA_DOCUMENTED = {
    "matmul": torch.float16, "softmax": torch.float32, "explicit dtype": torch.float16,
    "layer_norm": torch.float32, "sum": torch.float32, "mean": torch.float16, "exp": torch.float32,
    "sigmoid": torch.float16, "cross_entropy": torch.float32, "addcmul": torch.float32, "sdpa": torch.float16,
    "linear": torch.float16, "bf16 matmul": torch.bfloat16,
}


def training_step(device: str) -> list[tuple[str, tuple[str, ...]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    x, y = torch.randn(8, 16, device=device), torch.randint(0, 4, (8,), device=device)
    tracer = _DtypeTrace()
    with tracer, torch.autocast("cuda"):  # the forward, op by op (the optimizer's internals differ by device)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + logits.float().pow(2).mean() * 1e-3
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return tracer.trace + [("grad", tuple(str(p.grad.dtype) for p in model.parameters())),
                           ("scale", (str(scaler.get_scale()),))]


def test_emulated_cuda_autocast_gives_the_dtypes_cuda_documents(tmp_path):
    with CudaEmulation(tmp_path):
        assert attention_block("cuda") == CUDA_DOCUMENTED


@needs_cuda
def test_native_and_emulated_give_every_op_the_same_dtype(tmp_path):
    native_block, native_step = attention_block("cuda"), training_step("cuda")
    with CudaEmulation(tmp_path):
        emulated_block, emulated_step = attention_block("cuda"), training_step("cuda")
    assert emulated_block == native_block == CUDA_DOCUMENTED
    assert emulated_step == native_step


@needs_cuda
def test_native_and_emulated_verify_give_the_bundled_example_the_same_verdicts(capsys):
    from flake8_amp.runtime import verify

    native = verify(EXAMPLES / "train_buggy.py", steps=4, device="cuda")
    emulated = verify(EXAMPLES / "train_buggy.py", steps=4, device="emulated")
    capsys.readouterr()
    assert not native.emulated and emulated.emulated
    verdicts = {(f.line, f.code): f.verdict for f in native.findings}
    assert {(f.line, f.code): f.verdict for f in emulated.findings} == verdicts
