"""examples/fused_op_buggy.py fixed: the decorators name the device type. Lints clean and runs on CPU.

    flake8 --select AMP examples/fused_op_fixed.py && python examples/fused_op_fixed.py
"""

import torch

device = "cuda" if torch.cuda.is_available() else "cpu"


class FusedScale(torch.autograd.Function):
    """y = x * scale, with a hand-written backward, its inputs cast to float32 under autocast."""

    @staticmethod
    @torch.amp.custom_fwd(device_type=device, cast_inputs=torch.float32)
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x * scale

    @staticmethod
    @torch.amp.custom_bwd(device_type=device)
    def backward(ctx, grad):
        return grad * ctx.scale, None


if __name__ == "__main__":
    x = torch.randn(4, 8, device=device, requires_grad=True)
    with torch.autocast(device):
        y = FusedScale.apply(x @ x.t(), 0.5)
    y.backward(torch.ones_like(y))
    print("gradient norm", x.grad.norm().item())
