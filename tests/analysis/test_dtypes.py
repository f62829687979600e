"""Which calls move a tensor to a device without changing its dtype (dtypes.moves_device_only)."""

from __future__ import annotations

import ast

import pytest

from flake8_amp.analysis.dtypes import moves_device_only


@pytest.mark.parametrize(
    "source, device_only",
    [
        ("x.cuda()", True),
        ("x.cpu()", True),
        ("x.cuda(non_blocking=True)", True),
        ("x.to(device)", True),
        ("x.to(self.device, non_blocking=True)", True),
        ("x.to(args.local_rank)", True),
        ("x.to('cuda:0')", True),
        ("x.to(0)", True),
        ("x.to(torch.device('cuda'))", True),
        ("x.to(device=dev)", True),
        ("x.to(torch.float16)", False),  # a cast
        ("x.to(device, torch.float16)", False),
        ("x.to(device, dtype=dtype)", False),
        ("x.to(self.dtype)", False),  # may be any dtype
        ("x.to(other)", False),  # takes other's dtype
        ("x.to()", False),
        ("x.half()", False),
        ("to(device)", False),  # a function, not the method
    ],
)
def test_moves_device_only(source, device_only):
    call = ast.parse(source, mode="eval").body
    assert isinstance(call, ast.Call)
    assert moves_device_only(call) is device_only
