"""A fused op whose autocast decorators lack the device type: the module cannot even be imported.

This case lives in its own file because the TypeError is raised when the module is imported, before any
training could run. Lint it:   flake8 --select AMP examples/fused_op_buggy.py
Verify it:   flake8-amp verify examples/fused_op_buggy.py   (fixed twin: examples/fused_op_fixed.py)
"""

import torch

device = "cuda" if torch.cuda.is_available() else "cpu"


class FusedScale(torch.autograd.Function):
    """y = x * scale, with a hand-written backward, its inputs cast to float32 under autocast."""

    @staticmethod
    @torch.amp.custom_fwd(cast_inputs=torch.float32)
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x * scale

    @staticmethod
    @torch.amp.custom_bwd
    def backward(ctx, grad):
        return grad * ctx.scale, None


if __name__ == "__main__":
    x = torch.randn(4, 8, device=device, requires_grad=True)
    with torch.autocast(device):
        y = FusedScale.apply(x @ x.t(), 0.5)
    y.backward(torch.ones_like(y))
    print("gradient norm", x.grad.norm().item())
