"""CUDA emulated on the CPU: a script written for a GPU runs here with CUDA's autocast semantics.

``with CudaEmulation(project_root): ...`` makes, for the code it runs:

* **the device CUDA**: ``torch.cuda.is_available()`` is True, ``device_count()`` 1, and the calls training
  scripts make (``synchronize``, ``manual_seed(_all)``, memory statistics, ``get_device_name`` /
  ``get_device_properties``, ``set_device``, ``current_device``, ``Stream`` / ``Event``, ``nvtx``)
  behave sensibly; tensors asked for on ``"cuda"`` (``.cuda()``, ``.to("cuda")``, ``device="cuda:0"`` in
  factories, ``torch.device("cuda")``) are made on the CPU; ``pin_memory`` is accepted. Any other
  ``torch.cuda.X`` the project's code asks for raises :class:`NotEmulated`, naming X and the line.
* **autocast CUDA's**: inside ``torch.autocast("cuda", dtype=...)`` (also ``torch.amp.autocast`` and the
  deprecated ``torch.cuda.amp.autocast``), every op is cast as CUDA autocast casts it, from the table in
  :mod:`.cuda_policy`: the lower-precision list, the float32 list, the promote list, and
  ``binary_cross_entropy`` raising CUDA's error. The region is a CPU autocast region underneath, whose
  per-op kernels are replaced (``torch.library``, dispatch key ``AutocastCPU``) by ones applying CUDA's
  policy, so casts are recorded by autograd as on the GPU. ``custom_fwd(cast_inputs=...)`` /
  ``custom_bwd`` and ``GradScaler("cuda")`` work as on CUDA. ``autocast("cpu")`` regions keep CPU's
  policy.

Not emulated: a tensor's ``.device`` reads ``cpu`` and ``.is_cuda`` False (code that picks its autocast
device from a tensor gets CPU autocast); random numbers come from the CPU generator; CUDA kernels of
extensions, CUDA graphs, streams' concurrency and NCCL do not exist. Everything is put back on exit,
after an exception too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
import warnings
from typing import Any, Callable

import torch
from torch._C import DispatchKey
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode

from .cuda_policy import (
    BANNED,
    BANNED_MESSAGE,
    CPU_LOWER_PRECISION_FP,
    CPU_PROMOTE,
    CUDA_POLICY,
    FP32,
    FP32_APPEND_DTYPE,
    FP32_SET_OPT_DTYPE,
    LOWER_PRECISION_FP,
    PROMOTE,
)

__all__ = ["CudaEmulation", "NotEmulated", "EMULATED_DEVICE_NAME", "autocast_applies"]

EMULATED_DEVICE_NAME = "CUDA emulated on CPU (flake8-amp)"
_CUDA_DEFAULT_DTYPE = torch.float16
_CUDA_AMP_AUTOCAST_DEPRECATED = (
    "`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', args...)` instead."
)
_AUTOCAST_CPU = torch._C.DispatchKeySet(DispatchKey.AutocastCPU)
#: the overload that ``norm`` is redispatched to with a float32 dtype appended (autocast_mode.h)
_APPENDED_DTYPE_OVERLOAD = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}


class NotEmulated(RuntimeError):
    """A ``torch.cuda`` API that CUDA emulation does not provide."""


class _Regions(threading.local):
    """The autocast state of each device the script sees, per thread: on real hardware CUDA's and the
    CPU's are separate, here both are served by CPU autocast underneath. Each entry is (enabled, dtype)."""

    def __init__(self) -> None:
        self.cuda: list[tuple[bool, torch.dtype]] = []
        self.cpu: list[tuple[bool, torch.dtype]] = []


_REGIONS = _Regions()


def _cuda_enabled() -> bool:
    return bool(_REGIONS.cuda) and _REGIONS.cuda[-1][0]


def _cpu_region() -> tuple[bool, torch.dtype] | None:
    return _REGIONS.cpu[-1] if _REGIONS.cpu else None


def autocast_applies(device_type: str) -> bool:
    """Whether an op on a tensor of ``device_type`` runs under autocast: while CUDA is emulated, a CPU
    tensor stands for a CUDA one, so an emulated CUDA region applies to it too."""
    if CudaEmulation._active and device_type == "cpu":
        return _cuda_enabled() or torch.is_autocast_enabled("cpu")
    return torch.is_autocast_enabled(device_type)


# ------------------------------------------------------------------------------------- autocast policy
def _eligible(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype is not torch.float64


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """A tensor, or a list of tensors (``Tensor[]`` arguments), cast as autocast casts: eligible ones only."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if _eligible(value) and value.dtype is not dtype else value
    if isinstance(value, (list, tuple)) and any(isinstance(item, torch.Tensor) for item in value):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _cast_all(args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    return tuple(_cast(arg, dtype) for arg in args), {name: _cast(value, dtype) for name, value in kwargs.items()}


def _tensors(values: Any):
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


def _first_tensor(args: tuple) -> Any:
    return next(_tensors(args), None)


def _make_kernel(op: Any, name: str, cpu_policy: str | None) -> Callable:
    """The AutocastCPU kernel for one ATen overload: CUDA's policy in an emulated region, CPU's in a
    CPU one (``cpu_policy`` None: CPU autocast has no kernel for the op, it runs as called)."""
    cuda_policy = CUDA_POLICY.get(name)
    dtype_index = next((i for i, arg in enumerate(op._schema.arguments) if arg.name == "dtype"), None)
    returns = op._schema.returns
    one_tensor = len(returns) == 1 and str(returns[0].type) == "Tensor"
    appended = _overload(_APPENDED_DTYPE_OVERLOAD[name]) if cuda_policy == FP32_APPEND_DTYPE else None

    def kernel(keyset, *args, **kwargs):
        below = keyset.remove(DispatchKey.AutocastCPU)
        if _cuda_enabled():
            policy, region_dtype = cuda_policy, _REGIONS.cuda[-1][1]
        else:
            policy, region_dtype = cpu_policy, _REAL["get_autocast_dtype"]("cpu")
        if policy is None:
            return op.redispatch(below, *args, **kwargs)
        if policy == LOWER_PRECISION_FP:
            args, kwargs = _cast_all(args, kwargs, region_dtype)
            if one_tensor:
                # What a GPU's tensor cores do with float16/bfloat16 operands: products accumulated in
                # float32, the result rounded to the low-precision dtype. The CPU has no fast float16
                # GEMM, so the rounded operands are multiplied in float32 and the result rounded back:
                # the same values and dtypes, at float32's speed.
                wide_args, wide_kwargs = _cast_all(args, kwargs, torch.float32)
                with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                    out = op.redispatch(below, *wide_args, **wide_kwargs)
                return out.to(region_dtype) if out.dtype is torch.float32 else out
        elif policy == FP32:
            args, kwargs = _cast_all(args, kwargs, torch.float32)
        elif policy == PROMOTE:
            widest = region_dtype
            for tensor in _tensors((*args, *kwargs.values())):
                if _eligible(tensor):
                    widest = torch.promote_types(widest, tensor.dtype)
            args, kwargs = _cast_all(args, kwargs, widest)
        elif policy == FP32_SET_OPT_DTYPE:
            if _eligible(_first_tensor(args)):
                if dtype_index is not None and len(args) > dtype_index:
                    if args[dtype_index] is None:
                        args = (*args[:dtype_index], torch.float32, *args[dtype_index + 1 :])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
        elif policy == FP32_APPEND_DTYPE:
            if _eligible(_first_tensor(args)):
                with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                    return appended.redispatch(below, *args, **kwargs, dtype=torch.float32)
        elif policy == BANNED:
            raise RuntimeError(BANNED_MESSAGE)
        # As torch's autocast kernels do: the op runs with autocast excluded, so that the ops a composite
        # is built from are not cast a second time (an op autocast does not list falls through instead,
        # above, and its parts are autocast one by one).
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op.redispatch(below, *args, **kwargs)

    return kernel


def _overload(name: str) -> Any:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


_CPU_AUTOCAST_OPS: frozenset[str] | None = None


def _cpu_autocast_ops() -> frozenset[str]:
    """The ATen overloads CPU autocast has a kernel for, asked of torch before anything is replaced."""
    global _CPU_AUTOCAST_OPS
    if _CPU_AUTOCAST_OPS is None:
        names = torch._C._dispatch_get_all_op_names()
        _CPU_AUTOCAST_OPS = frozenset(
            name.removeprefix("aten::")
            for name in names
            if name.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCPU")
        )
    return _CPU_AUTOCAST_OPS


def _cpu_policy(name: str, cpu_ops: frozenset[str]) -> str | None:
    if name not in cpu_ops:
        return None
    if name in CPU_LOWER_PRECISION_FP:
        return LOWER_PRECISION_FP
    return PROMOTE if name in CPU_PROMOTE else FP32


# ------------------------------------------------------------------------------------- autocast regions
_RealAutocast = torch.amp.autocast
#: torch's own autocast-state functions, kept before anything is replaced
_REAL = {
    "is_autocast_enabled": torch.is_autocast_enabled,
    "set_autocast_enabled": torch.set_autocast_enabled,
    "get_autocast_dtype": torch.get_autocast_dtype,
    "set_autocast_dtype": torch.set_autocast_dtype,
}


class _EmulatedAutocast(_RealAutocast):
    """``torch.autocast`` while CUDA is emulated. Each device keeps its own state, as on real hardware
    (``autocast("cpu", enabled=False)`` inside a CUDA region leaves the CUDA region on); CPU autocast is
    on underneath whenever either is, and the replaced kernels apply the policy of the one that is."""

    def __init__(self, device_type: str, dtype: torch.dtype | None = None, enabled: bool = True,
                 cache_enabled: bool | None = None) -> None:
        self._emulated = device_type in ("cuda", "cpu")
        if not self._emulated:
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
            return
        self.device = device_type
        self.fast_dtype = dtype if dtype is not None else (
            _CUDA_DEFAULT_DTYPE if device_type == "cuda" else _REAL["get_autocast_dtype"]("cpu"))
        self._enabled = bool(enabled)
        self._cache_enabled = torch.is_autocast_cache_enabled() if cache_enabled is None else cache_enabled
        if self.fast_dtype not in (torch.float16, torch.bfloat16):  # torch's own warning, for either device
            warnings.warn(f"In {device_type.upper()} autocast, but the target dtype is not supported. "
                          "Disabling autocast.", stacklevel=2)
            self._enabled = False

    def __enter__(self):
        if not self._emulated:
            return super().__enter__()
        self._previous = (_REAL["is_autocast_enabled"]("cpu"), _REAL["get_autocast_dtype"]("cpu"),
                          torch.is_autocast_cache_enabled())
        stack = _REGIONS.cuda if self.device == "cuda" else _REGIONS.cpu
        stack.append((self._enabled, self.fast_dtype))
        _apply_regions()
        torch.set_autocast_cache_enabled(self._cache_enabled)
        torch.autocast_increment_nesting()
        return self

    def __exit__(self, *exc_info: Any):
        if not self._emulated:
            return super().__exit__(*exc_info)
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        stack = _REGIONS.cuda if self.device == "cuda" else _REGIONS.cpu
        if stack:
            stack.pop()
        enabled, dtype, cache = self._previous
        _REAL["set_autocast_enabled"]("cpu", enabled)
        _REAL["set_autocast_dtype"]("cpu", dtype)
        torch.set_autocast_cache_enabled(cache)
        return False


def _apply_regions() -> None:
    """CPU autocast underneath: on when the innermost CUDA or CPU region is, in the dtype of the one whose
    policy applies (CUDA's first: a CPU tensor stands for a CUDA one)."""
    cpu = _cpu_region()
    if _cuda_enabled():
        _REAL["set_autocast_enabled"]("cpu", True)
        _REAL["set_autocast_dtype"]("cpu", _REGIONS.cuda[-1][1])
    elif cpu is not None:
        _REAL["set_autocast_enabled"]("cpu", cpu[0])
        _REAL["set_autocast_dtype"]("cpu", cpu[1])
    else:
        _REAL["set_autocast_enabled"]("cpu", False)


class _EmulatedCudaAmpAutocast(_EmulatedAutocast):
    """The deprecated ``torch.cuda.amp.autocast(enabled=True, dtype=torch.float16, cache_enabled=True)``."""

    def __init__(self, enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True) -> None:
        # the deprecation warning torch gives, at the caller's line, as on a GPU
        warnings.warn(_CUDA_AMP_AUTOCAST_DEPRECATED, FutureWarning, stacklevel=2)
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def _is_autocast_enabled(device_type: str | None = None) -> bool:
    if device_type is None or device_type == "cuda":
        return _cuda_enabled()
    if device_type == "cpu" and _REGIONS.cpu:
        return _REGIONS.cpu[-1][0]
    if device_type == "cpu" and _cuda_enabled():
        return False  # CPU autocast is on underneath for CUDA's sake only
    return _REAL["is_autocast_enabled"](device_type)


def _get_autocast_dtype(device_type: str) -> torch.dtype:
    if device_type == "cuda":
        return _REGIONS.cuda[-1][1] if _REGIONS.cuda else _CUDA_DEFAULT_DTYPE
    if device_type == "cpu" and _REGIONS.cpu:
        return _REGIONS.cpu[-1][1]
    return _REAL["get_autocast_dtype"](device_type)


def _amp_cast(original: Callable) -> Callable:
    """``torch.amp.autocast_mode._cast`` (custom_fwd's cast_inputs): tensors "on cuda" are on the CPU."""

    def cast(value, device_type, dtype):
        return original(value, "cpu" if device_type == "cuda" else device_type, dtype)

    return cast


# ------------------------------------------------------------------------------------- the device
def _is_cuda_device(value: Any) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    if isinstance(value, str):
        return value == "cuda" or value.startswith("cuda:")
    return False


def _on_cpu(value: Any) -> Any:
    return torch.device("cpu") if _is_cuda_device(value) else value


class _DeviceMode(TorchFunctionMode):
    """Tensors asked for on CUDA are made on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "cuda" and args and isinstance(args[0], torch.Tensor):  # Tensor.cuda(device=None, ...)
            return args[0]
        if name == "pin_memory" and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name == "is_pinned":
            return False
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if name in ("to", "new_empty", "new_zeros", "new_ones", "new_full", "new_tensor") or name.endswith("_like"):
            args = tuple(_on_cpu(arg) for arg in args)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------- torch.cuda
class _Stream:
    def __init__(self, device: Any = None, priority: int = 0, **_: Any) -> None:
        self.device = torch.device("cuda", 0)
        self.priority = priority

    def synchronize(self) -> None:
        return None

    def wait_stream(self, stream: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> "_Event":
        event = event or _Event()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None


class _Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        return None

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_Event") -> float:
        """Milliseconds between the two records, as CUDA events report them."""
        if self._time is None or end._time is None:
            raise RuntimeError("elapsed_time: both events must be recorded first")
        return (end._time - self._time) * 1000.0


class _DeviceContext:
    """``torch.cuda.device(i)``: there is one emulated device, so entering it changes nothing."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def __enter__(self) -> "_DeviceContext":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None


def _properties() -> types.SimpleNamespace:
    return types.SimpleNamespace(name=EMULATED_DEVICE_NAME, major=8, minor=0, total_memory=80 * 2**30,
                                 multi_processor_count=108, is_integrated=False, is_multi_gpu_board=False)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _cuda_functions() -> dict[str, Any]:
    """What ``torch.cuda`` answers while emulated: one function object per name (torch._dynamo maps
    torch's functions by identity and refuses one object under two names)."""
    functions = {}
    for name, value in _cuda_answers().items():
        if isinstance(value, types.FunctionType):
            value = types.FunctionType(value.__code__, value.__globals__, name, value.__defaults__, value.__closure__)
        functions[name] = value
    return functions


def _cuda_answers() -> dict[str, Any]:
    stream = _Stream()
    nvtx = types.SimpleNamespace(range_push=_zero, range_pop=_zero, mark=_nothing,
                                 range=lambda *a, **k: _DeviceContext(None))
    return {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "init": _nothing,
        "device_count": lambda: 1,
        "current_device": _zero,
        "set_device": _nothing,
        "device": _DeviceContext,
        "synchronize": _nothing,
        "manual_seed": _nothing,
        "manual_seed_all": _nothing,
        "seed": _nothing,
        "seed_all": _nothing,
        "initial_seed": lambda: torch.initial_seed(),
        "get_rng_state": lambda device="cuda": torch.get_rng_state(),
        "get_rng_state_all": lambda: [torch.get_rng_state()],
        "set_rng_state": _nothing,
        "set_rng_state_all": _nothing,
        "get_device_name": lambda device=None: EMULATED_DEVICE_NAME,
        "get_device_properties": lambda device=None: _properties(),
        "get_device_capability": lambda device=None: (8, 0),
        "is_bf16_supported": lambda including_emulation=True: True,
        "memory_allocated": _zero,
        "max_memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_reserved": _zero,
        "memory_cached": _zero,
        "max_memory_cached": _zero,
        "reset_peak_memory_stats": _nothing,
        "reset_max_memory_allocated": _nothing,
        "reset_max_memory_cached": _nothing,
        "reset_accumulated_memory_stats": _nothing,
        "empty_cache": _nothing,
        "memory_stats": lambda device=None: {},
        "memory_summary": lambda device=None, abbreviated=False: f"{EMULATED_DEVICE_NAME}: no device memory\n",
        "mem_get_info": lambda device=None: (80 * 2**30, 80 * 2**30),
        "Stream": _Stream,
        "Event": _Event,
        "stream": lambda stream=None: stream if stream is not None else _DeviceContext(None),
        "current_stream": lambda device=None: stream,
        "default_stream": lambda device=None: stream,
        "nvtx": nvtx,
    }


#: torch.cuda names that pass through as they are (exceptions, submodules whose classes work on the CPU)
_PASS_THROUGH = frozenset(
    {"amp", "OutOfMemoryError", "CudaError", "DeferredCudaCallError", "is_current_stream_capturing", "_is_compiled",
     "_lazy_init", "_initialized", "_is_in_bad_fork", "__name__", "__spec__", "__path__", "__file__", "__loader__",
     "__package__", "__dict__", "__class__"}
)


class _CudaNamespace(types.ModuleType):
    """What ``torch.cuda`` is while emulated: the emulated calls, the real module's submodules, and a
    clear error for anything else that the project's code asks for."""

    def __init__(self, real: types.ModuleType, functions: dict[str, Any], project_root: str | None) -> None:
        super().__init__(real.__name__)
        self.__dict__.update(functions)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_project_root", project_root)

    def __getattr__(self, name: str) -> Any:
        real = object.__getattribute__(self, "_real")
        root = object.__getattribute__(self, "_project_root")
        if name in _PASS_THROUGH or root is None:
            return getattr(real, name)
        caller = sys._getframe(1)
        path = os.path.realpath(caller.f_code.co_filename)
        if not path.startswith(root):
            return getattr(real, name)  # torch's own code, or a library's: it gets the real module
        raise NotEmulated(
            f"not emulated: torch.cuda.{name} (at {os.path.relpath(path)}:{caller.f_lineno}); CUDA emulation "
            "provides device queries, seeding, synchronisation, memory statistics, streams and events, autocast "
            "and GradScaler"
        )


# ------------------------------------------------------------------------------------- the whole
class CudaEmulation:
    """``with CudaEmulation(project_root):`` CUDA on this CPU for the code run inside; see the module doc.

    ``project_root`` is where the script's own code lives: a ``torch.cuda.X`` that is not emulated raises
    :class:`NotEmulated` only when asked for there (None: never). Not reentrant; one at a time."""

    _active = False

    def __init__(self, project_root: str | os.PathLike[str] | None = None) -> None:
        self.project_root = os.path.realpath(project_root) + os.sep if project_root is not None else None
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> "CudaEmulation":
        if CudaEmulation._active:
            raise RuntimeError("CUDA emulation is already active")
        CudaEmulation._active = True
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._uninstall()

    # ------------------------------------------------------------------ install / uninstall
    def _set(self, owner: Any, name: str, value: Any) -> None:
        missing = object()
        original = owner.__dict__.get(name, missing) if isinstance(owner, (type, types.ModuleType)) else missing
        setattr(owner, name, value)

        def undo() -> None:
            if original is missing:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)

        self._undo.append(undo)

    def _install(self) -> None:
        import torch._dynamo.trace_rules  # noqa: F401 - it maps torch.cuda's functions once, the real ones

        torch._dynamo.trace_rules.get_torch_obj_rule_map()
        cpu_ops = _cpu_autocast_ops()
        library = torch.library.Library("aten", "IMPL")
        self._undo.append(library._destroy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
            for name in sorted(set(CUDA_POLICY) | cpu_ops):
                try:
                    op = _overload(name)
                except (AttributeError, RuntimeError):
                    continue  # an overload this torch build does not have
                kernel = _make_kernel(op, name, _cpu_policy(name, cpu_ops))
                library.impl(name, kernel, "AutocastCPU", with_keyset=True)

        real_cuda = torch.cuda
        functions = _cuda_functions()
        for name, value in functions.items():
            self._set(real_cuda, name, value)
        self._set(torch, "cuda", _CudaNamespace(real_cuda, functions, self.project_root))
        # its C++ argument parser refuses the emulated Stream before any mode could see the call
        self._set(torch.Tensor, "record_stream", lambda tensor, stream: None)

        for owner in (torch, torch.amp, torch.amp.autocast_mode):
            self._set(owner, "autocast", _EmulatedAutocast)
        self._set(real_cuda.amp, "autocast", _EmulatedCudaAmpAutocast)
        if hasattr(real_cuda.amp, "autocast_mode"):
            self._set(real_cuda.amp.autocast_mode, "autocast", _EmulatedCudaAmpAutocast)
        self._set(torch, "is_autocast_enabled", _is_autocast_enabled)
        self._set(torch, "get_autocast_dtype", _get_autocast_dtype)
        self._set(torch, "get_autocast_gpu_dtype", lambda: torch.get_autocast_dtype("cuda"))
        self._set(real_cuda, "is_autocast_enabled", lambda: torch.is_autocast_enabled("cuda"))
        self._set(torch.amp.autocast_mode, "_cast", _amp_cast(torch.amp.autocast_mode._cast))
        self._set(torch.amp.autocast_mode, "is_autocast_available", lambda device_type: True)

        mode = _DeviceMode()
        _push_mode(mode)
        self._undo.append(lambda: _pop_exact(mode))
        _REGIONS.cuda, _REGIONS.cpu = [], []

    def _uninstall(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # noqa: BLE001 - put back everything else even if one step fails
                pass
        _REGIONS.cuda, _REGIONS.cpu = [], []
        CudaEmulation._active = False


def _pop_exact(mode: TorchFunctionMode) -> None:
    """Pop modes down to and including ``mode`` (a script may have left its own above it)."""
    from torch.overrides import _get_current_function_mode_stack

    if mode in _get_current_function_mode_stack():
        while _get_current_function_mode_stack() and _pop_mode() is not mode:
            pass
