"""Where autocast is in force, and with what settings."""

from __future__ import annotations

import ast

import pytest

from flake8_amp.analysis.autocast_regions import region_from_call
from flake8_amp.analysis.module_analysis import ModuleAnalysis



def test_a_custom_fwd_with_cast_inputs_is_a_region_with_autocast_off_and_float32_inputs():
    source = (
        "import torch\n"
        "from utils.amp import custom_fwd\n"
        "@torch.amp.custom_fwd(device_type='cuda', cast_inputs=torch.float32)\n"
        "def a(x): pass\n"
        "@custom_fwd(cast_inputs=torch.float32)\n"
        "def b(x): pass\n"
        "@torch.amp.custom_fwd(device_type='cuda')\n"
        "def c(x): pass\n"
    )
    analysis = ModuleAnalysis(ast.parse(source))
    regions = {
        function.name: region_from_call(function.decorator_list[0], function, analysis.resolve)
        for function in analysis.nodes(ast.FunctionDef)
    }
    assert (regions["a"].enabled, regions["a"].inputs_dtype, regions["a"].device_type) == (False, "float32", "cuda")
    # re-exported by the project: known by its name, since nothing else takes cast_inputs
    assert (regions["b"].enabled, regions["b"].inputs_dtype) == (False, "float32")
    # without cast_inputs the forward runs in the caller's autocast state: no region of its own
    assert regions["c"] is None
    assert not analysis.uses_autocast  # regions that turn autocast off are no evidence of using it


# A project's own autocast context manager, taking the state to enter (metaseq's, fairscale's).
_CONTEXT_MANAGER = (
    "import torch\n"
    "from contextlib import contextmanager\n"
    "@contextmanager\n"
    "def autocast(enabled):\n"
    "    with torch.cuda.amp.autocast(enabled):\n"
    "        yield\n"
)


@pytest.mark.parametrize(
    "source, uses",
    [
        # activation checkpointing: the recompute re-enters the state the forward recorded
        (
            "import torch\n"
            "def forward(ctx, fn, x):\n"
            "    ctx.had_autocast = torch.is_autocast_enabled()\n"
            "def backward(ctx, g):\n"
            "    with torch.autocast('cuda', enabled=ctx.had_autocast):\n"
            "        pass\n",
            False,
        ),
        # the same through a project's context manager and a wrapper of is_autocast_enabled (metaseq)
        (
            "import torch\n"
            "from contextlib import contextmanager\n"
            "def is_autocast_enabled():\n"
            "    return torch.is_autocast_enabled()\n"
            "@contextmanager\n"
            "def autocast(enabled):\n"
            "    if enabled:\n"
            "        with torch.cuda.amp.autocast(enabled):\n"
            "            yield\n"
            "    else:\n"
            "        yield\n"
            "def forward(ctx):\n"
            "    ctx.had_autocast_in_fwd = is_autocast_enabled()\n"
            "def backward(ctx):\n"
            "    with autocast(ctx.had_autocast_in_fwd):\n"
            "        pass\n",
            False,
        ),
        # torch.utils.checkpoint's spelling: the settings recorded in a dict and spread
        (
            "import torch\n"
            "def forward(ctx):\n"
            "    ctx.gpu_autocast_kwargs = {'enabled': torch.is_autocast_enabled(), 'dtype': torch.get_autocast_gpu_dtype()}\n"
            "def backward(ctx):\n"
            "    with torch.cuda.amp.autocast(**ctx.gpu_autocast_kwargs):\n"
            "        pass\n",
            False,
        ),
        # the same context manager, but one caller turns autocast on itself
        (
            _CONTEXT_MANAGER
            + "def backward(ctx):\n"
            "    with autocast(ctx.had_autocast_in_fwd):\n"
            "        pass\n"
            "def train(model, x, use_amp):\n"
            "    with autocast(use_amp):\n"
            "        model(x)\n",
            True,
        ),
        # a recorded state under another receiver's attribute of the same name is no evidence
        (
            "import torch\n"
            "def forward(ctx):\n"
            "    ctx.fp16 = torch.is_autocast_enabled()\n"
            "def train(args):\n"
            "    with torch.autocast('cuda', enabled=args.fp16):\n"
            "        pass\n",
            True,
        ),
        # the context manager is also called through another object, perhaps with True
        (
            _CONTEXT_MANAGER
            + "def backward(ctx):\n"
            "    ctx.had = torch.is_autocast_enabled()\n"
            "    with autocast(ctx.had):\n"
            "        pass\n"
            "def train(helpers):\n"
            "    with helpers.autocast(True):\n"
            "        pass\n",
            True,
        ),
        ("import torch\nwith torch.autocast('cuda', enabled=args.amp):\n    pass\n", True),
        ("import torch\nwith torch.autocast('cuda', **settings):\n    pass\n", True),
        ("import torch\nwith torch.autocast('cuda', enabled=False):\n    pass\n", False),
    ],
)
def test_a_region_that_only_restores_a_recorded_state_is_no_use_of_autocast(source, uses):
    assert ModuleAnalysis(ast.parse(source)).uses_autocast is uses
