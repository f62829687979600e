"""Which layers break in low precision, and what training in each precision does: a runnable demo (CPU, seconds).

    python examples/compare_precision_demo.py [PLOT_PATH]

1. ``compare_precision`` on a small sensor model whose first layer reads raw pressures in pascals (~1e5,
   beyond float16's 65504): the layers worst first, and the one layer to keep in float32.
2. ``keep_fp32`` applies that plan; the end-to-end SQNR is measured again.
3. ``compare_training`` trains the fixed model in float32, bfloat16, float16 with a GradScaler, and float16
   without one, on the same data; the float16 run without loss scaling stalls (its gradients flush to
   zero). A plot of the runs is written to PLOT_PATH (default ``compare_training.png``).

On a machine without a GPU, autocast is CUDA's policy emulated on the CPU (the reports say so).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from flake8_amp.runtime import compare_precision, compare_training, keep_fp32

FEATURES, CLASSES = 6, 4


class SensorNet(nn.Module):
    """Raw sensor readings in, a class out. ``pressure`` reads column 0 in pascals, unnormalised."""

    def __init__(self) -> None:
        super().__init__()
        self.pressure = nn.Linear(1, 16)
        self.pressure_norm = nn.LayerNorm(16)
        self.sensors = nn.Linear(FEATURES - 1, 48)
        self.hidden = nn.Linear(64, 64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, readings: torch.Tensor) -> torch.Tensor:
        pressure = self.pressure_norm(self.pressure(readings[..., :1]))
        x = torch.cat([pressure, self.sensors(readings[..., 1:])], dim=-1)
        x = torch.relu(self.hidden(x))
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x.mean(dim=1))


def readings(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 8 time steps, FEATURES): pressure ~101 kPa in column 0, the other sensors near unit scale."""
    x = torch.randn(batch, 8, FEATURES, generator=generator)
    x[..., 0] = 101_325 + 2_000 * x[..., 0]
    return x


def main() -> int:
    plot_path = sys.argv[1] if len(sys.argv) > 1 else "compare_training.png"
    torch.set_num_threads(1)  # tensors this small run fastest on one thread
    torch.manual_seed(0)
    model = SensorNet()
    generator = torch.Generator().manual_seed(1)
    inputs = readings(32, generator)

    report = compare_precision(model, inputs, formats=("fp16", "bf16"))
    print(report)

    print()
    handle = keep_fp32(model, report.keep_fp32)
    fixed = compare_precision(model, inputs, formats=("fp16",))
    handle.remove()
    print(f"with keep_fp32(model, {report.keep_fp32}): end to end fp16 {fixed.end_to_end_sqnr['fp16']:.1f} dB "
          f"(target {fixed.target_sqnr:.0f} dB)")

    print()

    def make_model() -> nn.Module:
        net = SensorNet()
        keep_fp32(net, report.keep_fp32)  # the fix found above, in every precision's copy
        return net

    def make_batches():
        data = torch.Generator().manual_seed(2)
        x = readings(64, data)
        y = (x[:, :, 1].mean(dim=1) > 0).long() + 2 * (x[:, :, 2].mean(dim=1) > 0).long()
        return [(x, y)] * 30

    def weighted_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # A small loss weight (1e-7, as a term of a larger objective can have) puts the gradients below
        # float16's smallest subnormal: what loss scaling exists for.
        return 1e-7 * nn.functional.cross_entropy(logits.float(), target)

    training = compare_training(make_model, make_batches, 30, ("fp32", "bf16", "fp16", "fp16-noscale"),
                                loss_fn=weighted_loss, optimizer=lambda params: torch.optim.Adam(params, lr=3e-2))
    print(training)
    print(f"plot written to {training.plot(plot_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
