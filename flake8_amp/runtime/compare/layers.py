"""``compare_precision``: which layers break in float16 / bfloat16, and which to keep in float32.

The model runs twice in lockstep, without storing activations: float32 (the reference) in a worker thread
and low precision in the caller's thread. A forward hook on each compared layer hands the float32 output
over (a queue of one; the float32 run waits until the low-precision run has reached the same layer), where
it is compared with the low-precision output on the fly: the error *accumulated* up to that layer. In the
float32 run, the same hook runs the layer alone in low precision on the float32 inputs it was just given:
the error the layer *adds on its own*. So peak memory is that of the two forwards (under ``no_grad``: a
few activations each) plus a few copies of one layer's output, whatever the depth of the model.

Scoring, per layer and format, over every floating output tensor of every call of the layer:

* SQNR = 10 log10(sum(ref**2) / sum((ref - test)**2)) in float64, +inf when equal. Elements whose float32
  value is not finite are left out (counted in ``reference_nonfinite``). An element that is finite in
  float32 but inf or NaN in low precision makes the SQNR -inf and the max relative error inf: a layer that
  overflows ranks first, and no NaN ever reaches a sort.
* max relative error = max |test - ref| / max |ref| (relative to the largest reference value: the
  element-wise ratio is unbounded near zero and says nothing about the layer).
* overflow % = elements of the layer's own low-precision output (float32 inputs) that are inf or NaN, or
  whose float32 value is beyond the format's max, per finite float32 element.
* underflow % = non-zero float32 output values below the format's smallest normal (subnormal or zero once
  stored in the format), per non-zero float32 element.

``mode="autocast"`` runs what autocast runs on the target device: real ``torch.autocast("cuda")`` for a
model on a GPU; for a model on the CPU, CUDA's policy emulated by :class:`~.cuda_emulation.CudaEmulation`
(``emulated=True``), or CPU autocast's own with ``device_type="cpu"``. ``mode="cast"`` casts the whole
layer (weights, buffers and inputs) as ``model.half()`` / ``model.to(torch.bfloat16)`` would, on a copy.

The user's model is never changed: it runs in eval mode under ``no_grad`` (training flags restored
afterwards), its weights are only read, and every hook added is removed on every path. Its forward runs in
two threads at once (the float32 run on the caller's device and CUDA stream): a model that changes its own
state during forward, or a hook of the user's that does, sees both runs.

The ``keep_fp32`` plan is checked end to end in the same mode. Under autocast, :func:`keep_fp32` turns
autocast off around the kept layers; for a model cast whole it also gives them float32 weights and makes
every other layer cast its inputs back to the model's dtype (``model_dtype=``), as the printed code does.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
from collections import Counter
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..cuda_emulation import CudaEmulation, _DeviceMode
from ..formats import FloatFormat
from .common import DEFAULT_TARGET_SQNR, INITIAL_LOSS_SCALE, LOW_PRECISION_DTYPES, MODES, _MAX_SCALE_BACKOFFS, _STAT_CHUNK, _STAT_CHUNK_ACCELERATOR, _cast_floating, _castable, _db, _detached_copy, _emulation, _float_tensors, _low_precision_formats, _model_device, _preserved, _resolve_device_type, _select_layers, _split_inputs, _versions
from .keep import _autocast_disabled, keep_fp32
from .report import CompareReport, EndToEnd, GradientComparison, KeepFp32Plan, LayerComparison


# ------------------------------------------------------------------------------------------ compare_precision
def compare_precision(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    formats: Sequence[str] | str = ("fp16", "bf16"),
    layers: Sequence[str] | str | None = None,
    mode: str = "autocast",
    *,
    device_type: str | None = None,
    target_sqnr: float = DEFAULT_TARGET_SQNR,
    accumulated: bool = True,
) -> CompareReport:
    """Compare each layer of ``model`` in each low-precision format with float32, on ``inputs``.

    ``inputs``: a tensor (the one positional argument), a tuple (positional arguments) or a dict (keyword
    arguments). ``layers``: module paths to compare (default: every module with parameters of its own that
    has no children, and every ``nn.MultiheadAttention`` whole), in forward order. ``mode``: "autocast"
    (the target device's autocast policy; ``device_type`` picks it, see the module doc) or "cast" (the
    layer cast whole). ``target_sqnr``: the end-to-end SQNR (dB) that the ``keep_fp32`` plan must reach.
    With ``loss_fn`` (called as ``loss_fn(output, target)``, or ``loss_fn(output)`` without a target), the
    gradient of every parameter that requires one is compared as well (this needs a forward and backward
    with stored activations, as in training; the layer comparison itself does not).

    Memory: the error accumulated up to each layer is measured with the float32 and the low-precision
    forwards running in lockstep, so peak memory is about what two forwards hold at once (under
    ``no_grad``: a few activations each) plus a copy of one layer's output. ``accumulated=False`` leaves
    that error out (``sqnr`` and ``max_rel_error`` are None; the layers are ranked by the error they add
    on their own) and runs one float32 forward, each layer alone in low precision beside it, then the
    low-precision forward for the end-to-end figures: peak memory is one forward plus one layer.

    The plan for each format: layers sorted by the error they add on their own, the shortest worst-first
    prefix whose end-to-end SQNR (measured with them kept, in the same mode) meets the target is found by
    bisection, then each chosen layer is dropped again if the target still holds without it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compare_precision() needs a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use 'autocast' (the device's autocast policy) or 'cast' "
                         "(whole layers)")
    args, kwargs = _split_inputs(inputs, "compare_precision")
    fmts = _low_precision_formats(formats)
    names = _select_layers(model, layers)
    device = _model_device(model, (args, kwargs))
    resolved_device_type, emulate = _resolve_device_type(mode, device_type, device)
    precisions = [_Precision(fmt, mode, resolved_device_type) for fmt in fmts]
    emulated = emulate or (resolved_device_type == "cuda" and device.type == "cpu" and CudaEmulation._active)

    layer_results: list[LayerComparison] = []
    end_to_end: dict[str, EndToEnd] = {}
    plans: dict[str, KeepFp32Plan] = {}
    gradients: list[GradientComparison] = []
    notes: list[str] = []
    called: set[str] = set()
    with _preserved(model), _autocast_disabled((args, kwargs)), _emulation(emulate):
        for precision in precisions:
            session = _Lockstep(model, names, precision, device, accumulated)
            reference, output = session.run(args, kwargs)
            called.update(session.order)
            results = session.results()
            layer_results.extend(results)
            if session.diverged:
                notes.append(f"{precision.fmt.name}: {session.diverged}")
            sums = _ErrorSums(precision.fmt)
            sums.add(reference, output)
            end_to_end[precision.fmt.name] = EndToEnd(precision.fmt.name, sums.sqnr, sums.max_rel_error, sums.nonfinite)
            del output
            ranked = sorted(results, key=lambda entry: entry.rank_key)
            plans[precision.fmt.name] = _plan_keep_fp32(model, precision, ranked, args, kwargs, reference, target_sqnr,
                                                        end_to_end[precision.fmt.name].sqnr)
            del reference
        if loss_fn is not None:
            gradients = _compare_gradients(model, precisions, args, kwargs, target, loss_fn)
    layer_results.sort(key=lambda entry: entry.rank_key)
    return CompareReport(
        layers=layer_results,
        formats=[fmt.name for fmt in fmts],
        mode=mode,
        device_type=resolved_device_type,
        emulated=emulated,
        target_sqnr=target_sqnr,
        end_to_end=end_to_end,
        plans=plans,
        gradients=gradients,
        uncalled=[name for name in names if name not in called],
        notes=notes,
    )


class _Precision:
    """One low-precision setting: the format, and how a module is run in it (an autocast region, or in
    cast mode a copy of the module whose floating weights, buffers and inputs are cast)."""

    def __init__(self, fmt: FloatFormat, mode: str, device_type: str | None) -> None:
        self.fmt = fmt
        self.dtype = LOW_PRECISION_DTYPES[fmt.name]
        self.mode = mode
        self.device_type = device_type

    def region(self) -> Any:
        if self.mode == "autocast":
            return torch.autocast(self.device_type, dtype=self.dtype)
        return nullcontext()

    def model(self, model: nn.Module, keep: Sequence[str] = ()) -> nn.Module:
        """The module to run: ``model`` itself under autocast; in cast mode a cast copy (``keep``: modules
        whose weights stay float32)."""
        return model if self.mode == "autocast" else _cast_copy(model, self.dtype, keep)

    def inputs(self, values: Any) -> Any:
        return _cast_floating(values, self.dtype) if self.mode == "cast" else values


def _cast_copy(model: nn.Module, dtype: torch.dtype, keep: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` with its floating parameters and buffers (not float64) cast to ``dtype``, except
    those of the ``keep`` modules, which share the original's float32 storage (the copy only reads them).
    The original's float32 weights are never copied whole: the cast ones are the only new memory."""
    kept = {id(t) for name in keep for m in [model.get_submodule(name)] for t in (*m.parameters(), *m.buffers())}
    memo: dict[int, Any] = {}
    for parameter in model.parameters():
        value = parameter.detach()
        if id(parameter) not in kept and _castable(value):
            value = value.to(dtype)
        memo[id(parameter)] = nn.Parameter(value, requires_grad=parameter.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.to(dtype) if id(buffer) not in kept and _castable(buffer) else buffer
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - whatever the model holds that cannot be copied
        raise TypeError(f"mode='cast' runs a cast copy of the model, and copying it failed: {exc}") from exc


class _Lockstep:
    """One paired run for one format: float32 in a worker thread, low precision in this one (see the module doc).

    Hooks tell the runs apart by a thread-local role. The float32 run's hook measures the layer alone in
    low precision, then hands a copy of its output over through a queue of one: the float32 run is never
    more than a layer ahead, and each output is compared as soon as the low-precision run produces its own.
    Without ``accumulated`` the two runs go one after the other in this thread and nothing is handed over."""

    def __init__(self, model: nn.Module, names: list[str], precision: _Precision, device: torch.device,
                 accumulated: bool = True) -> None:
        self.model = model
        self.accumulated = accumulated
        self.device = device
        self.names = names
        self.precision = precision
        self.low_model = precision.model(model)
        self.modules = {name: model.get_submodule(name) for name in names}
        self.low_modules = {name: self.low_model.get_submodule(name) for name in names}
        self.local = threading.local()
        self.handoff: queue.Queue = queue.Queue(maxsize=1)
        self.consumer_done = threading.Event()
        self.abort = threading.Event()
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.reference_calls: Counter[str] = Counter()
        self.test_calls: Counter[str] = Counter()
        self.local_sums = {name: _ErrorSums(precision.fmt) for name in names}
        self.sums = {name: _ErrorSums(precision.fmt) for name in names}
        self.layer_notes: dict[str, str] = {}
        self.diverged = ""
        self.reference_output: Any = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- the two runs
    def run(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """(float32 output, low-precision output) of the whole model; the per-layer sums fill up on the way."""
        if not self.accumulated:
            return self._run_in_turn(args, kwargs)
        handles = self._register()
        # on a GPU the float32 run uses the caller's device and stream, so that what it hands over is ordered
        # with the low-precision run's work (and its thread has a current CUDA context)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self._thread = threading.Thread(target=self._reference, args=(args, kwargs, stream), daemon=True,
                                        name="flake8-amp-float32")
        try:
            self._thread.start()
            self.local.role = "test"
            low_args, low_kwargs = self.precision.inputs((args, kwargs))
            with torch.no_grad(), self.precision.region():
                output = self.low_model(*low_args, **low_kwargs)
        except BaseException as exc:
            self.abort.set()
            self._note_failure(exc)
            raise
        finally:
            self.local.role = None
            self.consumer_done.set()
            self._drain()
            self._thread.join()
            self._drain()
            for handle in handles:
                handle.remove()
        if self.error is not None:
            raise RuntimeError(f"the float32 forward of the model failed: {self.error}") from self.error
        if not self.diverged and self.reference_calls != self.test_calls:
            self.diverged = "the low-precision run called the layers a different number of times than float32"
        return self.reference_output, output

    def _run_in_turn(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """Without the accumulated error: the float32 forward in this thread, each compared layer also run
        alone in low precision by its hook, then the low-precision forward unhooked; one at a time."""
        self.consumer_done.set()  # nothing is handed over
        handles = self._register()
        try:
            self.local.role = "reference"
            self.local.stack = []
            with torch.no_grad():
                reference = self.model(*args, **kwargs)
        finally:
            self.local.role = None
            for handle in handles:
                handle.remove()
        low_args, low_kwargs = self.precision.inputs((args, kwargs))
        try:
            with torch.no_grad(), self.precision.region():
                output = self.low_model(*low_args, **low_kwargs)
        except Exception as exc:
            self._note_failure(exc)
            raise
        return reference, output

    def _note_failure(self, exc: BaseException) -> None:
        """Say which run raised: the model's own error, in the low-precision run."""
        if isinstance(exc, Exception) and hasattr(exc, "add_note"):
            exc.add_note(f"(raised by the model in compare_precision's {self.precision.fmt.name} "
                         f"{self.precision.mode} run)")

    def _reference(self, args: tuple, kwargs: dict, stream: Any) -> None:
        self.local.role = "reference"
        self.local.stack = []
        try:
            if stream is not None and self.device.index is not None:
                torch.cuda.set_device(self.device)
            # torch-function modes are per thread: under CUDA emulation this thread needs its own device mode
            device_mode = _DeviceMode() if CudaEmulation._active else nullcontext()
            with torch.no_grad(), torch.cuda.stream(stream) if stream is not None else nullcontext(), device_mode:
                self.reference_output = self.model(*args, **kwargs)
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self.error = exc
        finally:
            self.local.role = None
            try:
                self._put(_END)
            except _Aborted:
                pass

    def _register(self) -> list[Any]:
        handles = []
        shared = self.low_model is self.model
        for name in self.names:
            roles = ("reference", "test") if shared else ("reference",)
            targets = [(self.modules[name], roles)] + ([] if shared else [(self.low_modules[name], ("test",))])
            for module, module_roles in targets:
                handles.append(module.register_forward_pre_hook(self._pre_hook(name, module_roles), with_kwargs=True))
                handles.append(module.register_forward_hook(self._post_hook(name, module_roles), with_kwargs=True))
        return handles

    def _role(self, roles: tuple[str, ...]) -> str | None:
        role = getattr(self.local, "role", None)
        if role not in roles or getattr(self.local, "suspended", False):
            return None
        return role

    def _pre_hook(self, name: str, roles: tuple[str, ...]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._role(roles) == "reference":
                if name not in self.seen:
                    self.seen.add(name)
                    self.order.append(name)
                self.local.stack.append(_versions((args, kwargs)))

        return hook

    def _post_hook(self, name: str, roles: tuple[str, ...]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            role = self._role(roles)
            if role == "reference":
                if self.abort.is_set():
                    raise _Aborted
                before = self.local.stack.pop()
                if before == _versions((args, kwargs)):
                    self._run_alone(name, args, kwargs, output)
                else:
                    self.layer_notes[name] = "modifies its input in place: its own error is not measured"
                index = self.reference_calls[name]
                self.reference_calls[name] += 1
                if not self.consumer_done.is_set():
                    self._put((name, index, _detached_copy(output)))
            elif role == "test":
                index = self.test_calls[name]
                self.test_calls[name] += 1
                if self.diverged:
                    return
                item = self._get()
                if item is _END or item[:2] != (name, index):
                    self.diverged = (f"the low-precision run took another path than float32's at {name} (call "
                                     f"{index + 1}): accumulated errors from there on are not measured")
                    return
                self.sums[name].add(item[2], output)

        return hook

    def _run_alone(self, name: str, args: tuple, kwargs: dict, output: Any) -> None:
        """The layer alone in low precision on the float32 inputs it was just given (hooks suspended)."""
        self.local.suspended = True
        try:
            low_args, low_kwargs = self.precision.inputs((args, kwargs))
            with torch.no_grad(), self.precision.region():
                test = self.low_modules[name](*low_args, **low_kwargs)
            self.local_sums[name].add(output, test)
        except Exception as exc:  # noqa: BLE001 - reported on the layer, the rest goes on
            self.layer_notes[name] = f"running it alone failed: {type(exc).__name__}: {exc}"
            self.local_sums[name] = _ErrorSums(self.precision.fmt)
        finally:
            self.local.suspended = False

    # ---------------------------------------------------------------- the handoff
    def _put(self, item: Any) -> None:
        while not self.consumer_done.is_set():
            if self.abort.is_set():
                raise _Aborted
            try:
                self.handoff.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _get(self) -> Any:
        while True:
            try:
                return self.handoff.get(timeout=0.05)
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and self.handoff.empty():
                    return _END

    def _drain(self) -> None:
        while True:
            try:
                self.handoff.get_nowait()
            except queue.Empty:
                return

    # ---------------------------------------------------------------- results
    def results(self) -> list[LayerComparison]:
        results = []
        for order, name in enumerate(self.order):
            sums, local = self.sums[name], self.local_sums[name]
            measured_alone = local.numel > 0 or (local.mismatch is None and name not in self.layer_notes)
            compared = sums.numel > 0 or (sums.mismatch is None and self.test_calls[name] > 0 and not self.diverged)
            note = self.layer_notes.get(name, "") or local.mismatch or sums.mismatch or ""
            results.append(LayerComparison(
                name=name,
                format=self.precision.fmt.name,
                kind=type(self.modules[name]).__name__,
                order=order,
                calls=self.reference_calls[name],
                numel=local.numel or sums.numel,
                sqnr=sums.sqnr if compared else None,
                max_rel_error=sums.max_rel_error if compared else None,
                local_sqnr=local.sqnr if measured_alone else None,
                local_max_rel_error=local.max_rel_error if measured_alone else None,
                overflow_pct=local.overflow_pct if measured_alone else None,
                underflow_pct=local.underflow_pct if measured_alone else sums.underflow_pct,
                nonfinite=sums.nonfinite,
                reference_nonfinite=max(local.reference_nonfinite, sums.reference_nonfinite),
                note=note,
            ))
        return results


class _Aborted(Exception):
    """Stops the float32 run when the low-precision one failed."""


_END = object()


# ------------------------------------------------------------------------------------------ scoring
class _ErrorSums:
    """Streaming sums over any number of (reference, test) output pairs, chunk by chunk (temporaries bounded
    by a chunk), added up in float64 on the host.

    A chunk where both outputs are finite takes the fast path: a few reductions in the reference's own
    precision (float32), the squares summed in float64. A chunk holding inf or NaN is redone with explicit
    masks, in float64. Torch-function modes (CUDA emulation's device mode) are bypassed: this is plain
    arithmetic on tensors that exist."""

    _KEYS = ("ref_sq", "err_sq", "nonfinite", "reference_nonfinite", "overflow", "tiny", "nonzero", "finite",
             "max_err", "max_ref")

    def __init__(self, fmt: FloatFormat) -> None:
        self.fmt = fmt
        self.numel = 0
        self.mismatch: str | None = None
        self.values = dict.fromkeys(self._KEYS, 0.0)

    def add(self, reference: Any, test: Any) -> None:
        references, tests = _float_tensors(reference), _float_tensors(test)
        if len(references) != len(tests) or any(r.shape != t.shape for r, t in zip(references, tests)):
            self.mismatch = (f"outputs differ in structure ({len(references)} floating tensors in float32, "
                             f"{len(tests)} in low precision): not compared")
            return
        with _no_torch_function():
            for ref, out in zip(references, tests):
                self._add(ref.detach(), out.detach())

    def _add(self, reference: torch.Tensor, test: torch.Tensor) -> None:
        if reference.numel() == 0:
            return
        work = torch.float64 if reference.dtype == torch.float64 else torch.float32
        chunk = _STAT_CHUNK if reference.device.type == "cpu" else _STAT_CHUNK_ACCELERATOR
        ref_flat, test_flat = _paired_flat(reference, test)
        for start in range(0, ref_flat.numel(), chunk):
            ref = ref_flat[start : start + chunk].to(work)
            out = test_flat[start : start + chunk].to(device=ref.device, dtype=work)
            chunk_values = self._fast(ref, out)
            if chunk_values is None:
                chunk_values = self._masked(ref.to(torch.float64), out.to(torch.float64))
            for key, value in chunk_values.items():
                if key.startswith("max_"):
                    self.values[key] = max(self.values[key], value)
                else:
                    self.values[key] += value
        self.numel += reference.numel()

    def _fast(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float] | None:
        magnitude = ref.abs()
        error = torch.sub(out, ref).abs_()  # a new tensor: ``out`` may be the run's own output
        max_ref, max_err, nonzero, below = torch.stack([
            magnitude.amax(), error.amax(), torch.count_nonzero(magnitude).to(ref.dtype),
            (magnitude < self.fmt.smallest_normal).sum().to(ref.dtype),
        ]).tolist()
        if not (math.isfinite(max_ref) and math.isfinite(max_err)):
            return None
        ref_norm, err_norm = torch.stack([torch.linalg.vector_norm(ref, dtype=torch.float64),
                                          torch.linalg.vector_norm(error, dtype=torch.float64)]).tolist()
        overflow = float((magnitude > self.fmt.max).sum()) if max_ref > self.fmt.max else 0.0
        count = ref.numel()
        return {"ref_sq": ref_norm**2, "err_sq": err_norm**2, "overflow": overflow, "tiny": below - (count - nonzero),
                "nonzero": nonzero, "finite": count, "max_err": max_err, "max_ref": max_ref}

    def _masked(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
        ref_finite, out_finite = torch.isfinite(ref), torch.isfinite(out)
        ref = torch.where(ref_finite, ref, 0.0)
        error = torch.where(ref_finite & out_finite, out - ref, 0.0).abs_()
        magnitude = ref.abs()
        nonzero = magnitude > 0
        values = torch.stack([
            (ref * ref).sum(),
            (error * error).sum(),
            (ref_finite & ~out_finite).sum(),
            (~ref_finite).sum(),
            (ref_finite & (~out_finite | (magnitude > self.fmt.max))).sum(),
            (nonzero & (magnitude < self.fmt.smallest_normal)).sum(),
            nonzero.sum(),
            ref_finite.sum(),
            error.amax(),
            magnitude.amax(),
        ]).tolist()
        return dict(zip(self._KEYS, values))

    @property
    def nonfinite(self) -> int:
        return int(self.values["nonfinite"])

    @property
    def reference_nonfinite(self) -> int:
        return int(self.values["reference_nonfinite"])

    @property
    def sqnr(self) -> float:
        v = self.values
        if v["nonfinite"]:
            return -math.inf
        if v["err_sq"] == 0:
            return math.inf
        if v["ref_sq"] == 0:
            return -math.inf
        return 10 * math.log10(v["ref_sq"] / v["err_sq"])

    @property
    def max_rel_error(self) -> float:
        v = self.values
        if v["nonfinite"]:
            return math.inf
        if v["max_err"] == 0:
            return 0.0
        return v["max_err"] / v["max_ref"] if v["max_ref"] else math.inf

    @property
    def overflow_pct(self) -> float:
        v = self.values
        return 100 * v["overflow"] / v["finite"] if v["finite"] else 0.0

    @property
    def underflow_pct(self) -> float:
        v = self.values
        return 100 * v["tiny"] / v["nonzero"] if v["nonzero"] else 0.0


def _paired_flat(reference: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors in one dimension, element i of one matching element i of the other: the reference's
    axes in the order that makes it contiguous (a view when there is one, as :func:`~.analyzer._flat`
    does), the test tensor's in the same order (copied only when that order is not contiguous for it)."""
    if reference.is_contiguous() and test.is_contiguous():
        return reference.reshape(-1), test.reshape(-1)
    order = sorted(range(reference.dim()), key=lambda d: (-reference.stride(d), -reference.shape[d]))
    return reference.permute(order).reshape(-1), test.permute(order).reshape(-1)


def _no_torch_function() -> Any:
    """Torch-function handling off (modes and subclasses): the statistics are plain arithmetic."""
    disable = getattr(torch._C, "DisableTorchFunction", None)
    return disable() if disable is not None else nullcontext()


# ------------------------------------------------------------------------------------------ keep_fp32 search
def _plan_keep_fp32(model: nn.Module, precision: _Precision, ranked: list[LayerComparison], args: tuple,
                    kwargs: dict, reference: Any, target: float, before: float) -> KeepFp32Plan:
    """Greedy on the error each layer adds on its own, every candidate checked end to end (see
    compare_precision). ``before``: the end-to-end SQNR with nothing kept, already measured."""
    fmt = precision.fmt.name
    candidates = list(dict.fromkeys(entry.name for entry in ranked))
    measured: dict[frozenset[str], float] = {frozenset(): before}

    def sqnr(keep: Sequence[str]) -> float:
        key = frozenset(keep)
        if key not in measured:
            measured[key] = _end_to_end_sqnr(model, precision, list(keep), args, kwargs, reference)
        return measured[key]

    if before >= target:
        return KeepFp32Plan(fmt, [], before, before, True, 0)
    everything = sqnr(candidates)
    if everything < target:
        return KeepFp32Plan(
            fmt, candidates, before, everything, False, len(measured) - 1,
            note=(f"even with every compared layer in float32 the output reaches only {_db(everything)} dB: the "
                  "rest of the error comes from ops outside them (functional calls, residual adds, attention "
                  "matmuls); compare more layers with layers=, or lower target_sqnr"),
        )
    low, high = 0, len(candidates)  # sqnr(prefix of length high) meets the target, of length low does not
    while high - low > 1:
        middle = (low + high) // 2
        if sqnr(candidates[:middle]) >= target:
            high = middle
        else:
            low = middle
    chosen = candidates[:high]
    for name in reversed(list(chosen)):  # least harmful first: drop any the target does not need
        trial = [kept for kept in chosen if kept != name]
        if sqnr(trial) >= target:
            chosen = trial
    return KeepFp32Plan(fmt, chosen, before, sqnr(chosen), True, len(measured) - 1)


def _end_to_end_sqnr(model: nn.Module, precision: _Precision, keep: list[str], args: tuple, kwargs: dict,
                     reference: Any) -> float:
    low_model = precision.model(model, keep)
    low_args, low_kwargs = precision.inputs((args, kwargs))
    model_dtype = precision.dtype if precision.mode == "cast" else None
    handle = keep_fp32(low_model, keep, model_dtype=model_dtype) if keep else nullcontext()
    with handle, torch.no_grad(), precision.region():
        output = low_model(*low_args, **low_kwargs)
    sums = _ErrorSums(precision.fmt)
    sums.add(reference, output)
    return sums.sqnr


# ------------------------------------------------------------------------------------------ gradients
def _compare_gradients(model: nn.Module, precisions: list[_Precision], args: tuple, kwargs: dict, target: Any,
                       loss_fn: Callable[..., torch.Tensor]) -> list[GradientComparison]:
    """Each trainable parameter's gradient in each format against float32's. Gradients come from
    ``torch.autograd.grad``: the model's ``.grad`` fields are not touched. float16 is computed with a loss
    scale, from GradScaler's initial one, halved while the gradients are not finite (as GradScaler would)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []

    def loss_of(output: Any, dtype: torch.dtype | None) -> torch.Tensor:
        goal = _cast_floating(target, dtype) if dtype is not None else target
        loss = loss_fn(output) if target is None else loss_fn(output, goal)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError("loss_fn must return a scalar tensor")
        return loss

    with torch.enable_grad():
        reference = torch.autograd.grad(loss_of(model(*args, **kwargs), None), [p for _, p in named],
                                        allow_unused=True)
    results = []
    for precision in precisions:
        low_model = precision.model(model)
        low_params = dict(low_model.named_parameters())
        params = [low_params[name] for name, _ in named]
        low_args, low_kwargs = precision.inputs((args, kwargs))
        scale = INITIAL_LOSS_SCALE if precision.fmt.name == "fp16" else 1.0
        for _ in range(_MAX_SCALE_BACKOFFS):
            with torch.enable_grad():
                with precision.region():
                    output = low_model(*low_args, **low_kwargs)
                    loss = loss_of(output, precision.dtype if precision.mode == "cast" else None)
                grads = torch.autograd.grad(loss.float() * scale, params, allow_unused=True)
            finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
            if finite or scale <= 1.0:
                break
            scale /= 2
        for (name, _), ref, grad in zip(named, reference, grads):
            if ref is None or grad is None:
                continue
            sums = _ErrorSums(precision.fmt)
            sums.add(ref, grad.float() / scale)
            results.append(GradientComparison(name, precision.fmt.name, sums.sqnr, sums.max_rel_error, scale))
    results.sort(key=lambda g: (g.sqnr, g.name))
    return results


