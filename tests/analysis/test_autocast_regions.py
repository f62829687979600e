"""Where autocast is in force, and with what settings."""

from __future__ import annotations

import ast

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
