"""Autocast regions: where ``torch.autocast`` (in any spelling) is in force, and with what settings."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .dtypes import Resolver, dtype_of
from .torch_api import AUTOCAST_CONSTRUCTORS, CUSTOM_FWD

# The dtype autocast uses when none is given, per device type.
_DEFAULT_DTYPE = {"cuda": "float16", "cpu": "bfloat16", "mps": "float16", "xpu": "bfloat16"}


@dataclass(frozen=True)
class AutocastRegion:
    """One ``with autocast(...)`` block or ``@autocast(...)``-decorated function.

    Settings are captured where they are literals; ``None`` means "not known statically".
    """

    node: ast.AST
    api: str
    device_type: str | None
    dtype: str | None
    enabled: bool | None
    #: False when a dtype is given but is not a literal (``dtype=self.dtype``)
    dtype_known: bool = True
    #: not a region of the source around the code, but the region its function is called in
    inherited: bool = False
    #: ``@custom_fwd(cast_inputs=torch.float32)``: autocast is off in the function and its floating
    #: inputs arrive cast to this dtype
    inputs_dtype: str | None = None
    #: for an inherited region: whether the function that opens it, or one it calls, steps an optimizer
    caller_steps: bool = True
    #: the ``enabled`` argument as written, and a ``**settings`` argument, when there is one
    enabled_expr: ast.AST | None = field(default=None, compare=False)
    settings_expr: ast.AST | None = field(default=None, compare=False)

    @property
    def effective_dtype(self) -> str | None:
        """The low-precision dtype the region computes in: the explicit one or the device default."""
        if self.dtype is not None or not self.dtype_known:
            return self.dtype
        return _DEFAULT_DTYPE.get(self.device_type or "")

    @property
    def may_be_enabled(self) -> bool:
        return self.enabled is not False

    @property
    def is_cpu(self) -> bool:
        return self.device_type == "cpu"

    def reason(self) -> str:
        """For a message: why code in this region runs under autocast, when the source does not show it."""
        if not self.inherited:
            return ""
        name = getattr(self.node, "name", "this function")
        return f" ({name}() runs under the {self.api})"


def _literal_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.partition(":")[0]
    return None


def _literal_bool(node: ast.AST | None) -> bool | None:
    if node is None:
        return True
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    return None


def region_from_call(call: ast.Call, owner: ast.AST, resolve: Resolver) -> AutocastRegion | None:
    """The region an autocast constructor call opens, or None if ``call`` is not one."""
    qualified = resolve(call.func)
    if qualified in AUTOCAST_CONSTRUCTORS:
        implied_device = AUTOCAST_CONSTRUCTORS[qualified]
        keywords = {kw.arg: kw.value for kw in call.keywords if kw.arg}
        args = list(call.args)
        if implied_device is None:
            # torch.autocast(device_type, dtype=None, enabled=True, cache_enabled=None)
            device_node = args.pop(0) if args else keywords.get("device_type")
            device = _literal_str(device_node)
            dtype_node = args[0] if args else keywords.get("dtype")
            enabled_node = args[1] if len(args) > 1 else keywords.get("enabled")
        else:
            # torch.cuda.amp.autocast(enabled=True, dtype=torch.float16, cache_enabled=True)
            device = implied_device
            enabled_node = args[0] if args else keywords.get("enabled")
            dtype_node = args[1] if len(args) > 1 else keywords.get("dtype")
        dtype = dtype_of(dtype_node, resolve)
        settings = next((kw.value for kw in call.keywords if kw.arg is None), None)
        return AutocastRegion(
            node=owner,
            api=qualified,
            device_type=device,
            dtype=dtype,
            enabled=_literal_bool(enabled_node) if settings is None or enabled_node is not None else None,
            dtype_known=dtype is not None or dtype_node is None,
            enabled_expr=enabled_node,
            settings_expr=settings,
        )
    identifier = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if qualified in CUSTOM_FWD or identifier.endswith("custom_fwd"):
        # @custom_fwd(device_type=..., cast_inputs=torch.float32): the forward runs with autocast off and
        # its floating inputs cast; without cast_inputs it runs in the caller's autocast state. Known by its
        # name too when a project re-exports it (`from utils.amp import custom_fwd`, GLIP; DeepSpeed's
        # `autocast_custom_fwd`): nothing else takes cast_inputs.
        cast = next((kw.value for kw in call.keywords if kw.arg == "cast_inputs"), None)
        inputs_dtype = dtype_of(cast, resolve) if cast is not None else None
        if inputs_dtype is None:
            return None
        device = _literal_str(next((kw.value for kw in call.keywords if kw.arg == "device_type"), None))
        if (qualified or "").startswith("torch.cuda."):
            device = "cuda"
        return AutocastRegion(
            node=owner, api=qualified or identifier, device_type=device, dtype=None, enabled=False, inputs_dtype=inputs_dtype
        )
    # Framework wrappers such as accelerate's `accelerator.autocast()`: autocast with settings
    # decided elsewhere.
    if (
        qualified is None
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "autocast"
        and not call.args
        and not call.keywords
    ):
        return AutocastRegion(node=owner, api="autocast", device_type=None, dtype=None, enabled=None)
    return None
