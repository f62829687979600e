"""What happened while the script ran: every torch op attributed to a project line, the first NaN/Inf in
forward and in backward, the GradScaler's trajectory, and the measurements the flagged lines' rules asked for.

Cost model. Every torch API call goes through one ``TorchFunctionMode``: a stack walk to the innermost
project frame (cached per code object), and one device-side reduction (max |x|, which is NaN for a NaN
and inf for an Inf) per floating output, appended to the step's list. Outputs that carry an autograd
node get a post-hook on it, so the gradients a backward node writes are checked the same way and land
on the forward line that created the node. Nothing is read back per op: at the end of each optimizer
step the step's values are stacked and read in one transfer. Probes (casts, float32 recomputation,
saturation, gradient ranges, updates) run only at the lines a rule asked about.

The recorder never changes training: it reads detached values under ``no_grad``, draws no random
numbers, recomputes only deterministic out-of-place ops, and its hooks return None.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
import weakref
from typing import Any, Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode, _pop_mode, _pop_mode_temporarily, _push_mode
from torch.overrides import _get_current_function_mode_stack as _function_modes

from ..evidence import (
    CastStats,
    ClipRecord,
    ErrorRecord,
    LineEvidence,
    OpRecord,
    Probe,
    RecomputeStats,
    RunEvidence,
    ScalerCall,
)
from ..cuda_emulation import CudaEmulation, autocast_applies
from ..formats import get_format
from .attribution import ProjectFrames, Span

Site = tuple  # (path, line)

_LOW = (torch.float16, torch.bfloat16)
_FORMATS = {dtype: get_format(dtype) for dtype in _LOW}  # their limits, from the runtime's format table
# torch API calls that are bookkeeping, not computation
_UNINTERESTING = frozenset(
    {"__get__", "__set__", "_set_grad_enabled", "is_floating_point", "_has_compatible_shallow_copy_type", "dim",
     "size", "numel", "__len__", "__repr__", "__format__", "__hash__", "__bool__", "tolist", "item", "__iter__",
     "data_ptr", "stride", "is_contiguous", "__reduce_ex__", "__setstate__", "_is_view", "requires_grad_",
     "register_hook", "element_size", "__index__", "__int__", "__float__", "storage_offset", "untyped_storage"}
)
_CASTS = frozenset({"half", "bfloat16", "to", "type", "type_as"})
# ops whose float32 recomputation would change nothing the user sees: random or in-place
_RANDOM = frozenset({"dropout", "rand", "randn", "randint", "rand_like", "randn_like", "bernoulli", "multinomial",
                     "normal", "uniform_", "normal_", "randperm", "alpha_dropout", "feature_alpha_dropout",
                     "dropout1d", "dropout2d", "dropout3d", "gumbel_softmax", "rrelu"})
# inputs whose ranges an op's value keeps (for a NaN/Inf origin's "input ranges")
_INPUTS_KEPT = 4
# the phase of a value that only stands for an input's range: never an origin itself
_INPUT = "input"
# values held on the device before an early read, when a step is very long or never ends
_FLUSH_AT = 65536
# ops whose output is uninitialised memory until something writes it
_UNINITIALISED = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
_BCE = frozenset({"binary_cross_entropy"})


class StopScript(BaseException):
    """Raised into the script to end it cleanly (a step or time limit); a BaseException so that the
    script's own ``except Exception`` does not swallow it."""

    def __init__(self, reason: str = "timeout") -> None:
        super().__init__(reason)
        self.reason = reason


class _Mode(TorchFunctionMode):
    def __init__(self, recorder: "Recorder") -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _UNINTERESTING or self.recorder.busy:
            return func(*args, **kwargs)
        return self.recorder.on_op(func, name, args, kwargs)


class Recorder:
    def __init__(
        self,
        frames: ProjectFrames,
        watched: dict[Site, LineEvidence],
        probes: dict[Site, set[Probe]],
        spans: list[Span],
        steps: int | None,
    ) -> None:
        self.frames = frames
        self.watched = watched
        self.probes = probes
        self.spans = spans
        self.span_files = {span.path for span in spans}
        self.watched_files = {path for path, _line in watched} | self.span_files
        self._paths: dict[str, str] = {}
        self.max_steps = steps
        self.busy = False
        self.failure: str | None = None  # why the recorder stopped measuring, if it did
        self.devices: set[str] = set()  # the device types the script's ops ran on
        self.step = 0
        self.stop_reason: str | None = None
        self.run = RunEvidence()
        self.first_nonfinite: dict[str, dict[str, Any]] = {}  # phase -> origin
        # per step, device-side: (max |x|, site, op, phase, the op's forward max |x|s, indices of its inputs')
        self._values: list[tuple[torch.Tensor, Site | None, str, str, tuple, tuple[int, ...]]] = []
        self._producers: dict[int, tuple[Any, int]] = {}  # id(tensor) -> (weak ref, index in _values)
        self._deferred: list[tuple[Callable[[list[float]], None], list[torch.Tensor]]] = []
        # exceptions already recorded, by id: the exception itself is held (ids of freed objects are reused,
        # and exceptions take no weak references) until the step ends, when none can still be propagating
        self._seen_errors: dict[int, BaseException] = {}
        # objects created at watched lines, followed to their uses (a BCELoss, an optimizer)
        self.followed: "weakref.WeakKeyDictionary[Any, Site]" = weakref.WeakKeyDictionary()
        self.scaled_outputs: "weakref.WeakSet[torch.Tensor]" = weakref.WeakSet()
        self.grads_scaled_by: Any = None  # the GradScaler whose scale() the current gradients carry
        # optimizers unscale_()d since that scale(): their gradients are unscaled, the others' are not
        self.unscaled_optimizers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.in_scaler_step = False
        self.optimizer_stepped = False
        self._step_paused = False  # the mode is off for an optimizer step in progress
        self._snapshot: tuple[Site, list] | None = None  # UPDATES: a followed optimizer's weights before its step
        self._order = 0  # values read so far: orders the NaN/Inf origins of both phases in time
        self._mode = _Mode(self)
        self._undo: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ sites
    def _sites_for(self, frame, inner=None) -> list[Site]:
        """The watched sites an op at this stack counts for: the project lines on the stack (the line that
        ran it, and the calls around it: a finding on ``z = helper(x)`` sees the ops inside ``helper``),
        the creation line of a followed object whose method ran it, and the spans (with blocks,
        functions) the stack is inside."""
        inner = inner or self.frames.innermost(frame)
        if inner is None:
            return []
        sites = []
        if self.followed:
            walk = frame
            while walk is not None and walk is not inner:
                if walk.f_code.co_name in ("forward", "__call__", "_call_impl"):
                    owner = walk.f_locals.get("self")
                    if owner is not None:
                        try:
                            followed = self.followed.get(owner)
                        except TypeError:
                            followed = None
                        if followed is not None and followed not in sites:
                            sites.append(followed)
                walk = walk.f_back
        for project_frame in self.frames.project_stack(inner):
            path = self._path_of(project_frame.f_code)
            if path not in self.watched_files:
                continue
            site = (path, project_frame.f_lineno)
            if site in self.watched and site not in sites:
                sites.append(site)
            if path in self.span_files:
                for span in self.spans:
                    if span.path == path and span.covers(project_frame.f_lineno) and span.site not in sites:
                        sites.append(span.site)
        return sites

    def _path_of(self, code) -> str:
        path = self._paths.get(code.co_filename)
        if path is None:
            path = self._paths[code.co_filename] = os.path.realpath(code.co_filename)
        return path

    def innermost_site(self, frame) -> Site | None:
        inner = self.frames.innermost(frame)
        return None if inner is None else (self._path_of(inner.f_code), inner.f_lineno)

    @contextlib.contextmanager
    def paused(self):
        """The mode off, inside torch's own bookkeeping that the recorder wraps anyway (the GradScaler's
        methods, an optimizer's step, clipping, saving): with a mode on, every tensor attribute those
        loops read goes through Python, which is most of what watching would cost."""
        stack = _function_modes()
        if not stack or stack[-1] is not self._mode:
            yield
            return
        with _pop_mode_temporarily():
            yield

    # ------------------------------------------------------------------ ops
    def on_op(self, func, name: str, args: tuple, kwargs: dict):
        frame = sys._getframe(2)
        inner = self.frames.innermost(frame)  # walked once: the op's line, and where the watched sites start
        inner_site = None if inner is None else (self._path_of(inner.f_code), inner.f_lineno)
        sites = self._sites_for(frame, inner) if self.watched and inner is not None else []
        phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
        autocast_on = _autocast_enabled(args)
        if name == "backward":
            self._on_backward(args, sites, autocast_on)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            if name in ("backward", "grad"):  # raised in the backward pass (a custom Function's): it surfaces here too
                self._seen_errors.pop(id(exc), None)
            self._record_error(exc, sites)
            raise
        self.busy = True
        try:
            self._after(func, name, args, kwargs, out, inner_site, sites, phase, autocast_on)
        except Exception as exc:  # noqa: BLE001 - the recorder must never break the training it watches
            self.fail(exc)
        finally:
            self.busy = False
        return out

    def fail(self, exc: BaseException) -> None:
        """Stop measuring (the script runs on untouched) and say why in the report."""
        if self.failure is None:
            self.failure = f"step {self.step}: {type(exc).__name__}: {_first_line(exc)}"
        self.busy = True  # from now on every op passes straight through

    def _after(self, func, name, args, kwargs, out, inner_site, sites, phase, autocast_on) -> None:
        outputs = [t for t in _tensors(out) if t.is_floating_point()]
        grad_enabled = torch.is_grad_enabled()
        with torch.no_grad():
            forward = []  # this op's max |output|s: its backward hook tells an origin from a consequence
            if name not in _UNINITIALISED and any(t.numel() for t in outputs):
                inputs = self._input_indices(_tensors((args, kwargs)))
                for tensor in outputs:
                    if tensor.numel():
                        forward.append(_max_abs(tensor))
                        self._remember(tensor, len(self._values))
                        self._values.append((forward[-1], inner_site, name, phase, (), inputs))
            if grad_enabled and phase == "forward" and name not in _UNINITIALISED:
                nodes = {t.grad_fn for t in outputs if t.grad_fn is not None}
                for node in nodes:
                    node.register_hook(self._backward_hook(inner_site, sites, name, tuple(forward)))
            if len(self._values) + len(self._deferred) > _FLUSH_AT:
                self._flush()  # a script that never steps an optimizer: keep memory bounded anyway
            if outputs:
                self.devices.add(outputs[0].device.type)
            if autocast_on:
                self.run.autocast_dtypes.update(_dtype_name(t.dtype) for t in outputs if t.dtype in _LOW)
            for site in sites:
                self._record_op(site, func, name, args, kwargs, out, outputs, autocast_on)

    def _remember(self, tensor: torch.Tensor, index: int) -> None:
        self._producers[id(tensor)] = (weakref.ref(tensor), index)

    def _input_indices(self, tensors: list[torch.Tensor]) -> tuple[int, ...]:
        """Where each floating input's max |x| is among the step's values: the op that produced it, or,
        for a tensor no recorded op produced (a weight, a batch), a value taken now, once per read."""
        indices = []
        for tensor in tensors[:_INPUTS_KEPT]:
            if not tensor.is_floating_point() or not tensor.numel():
                continue
            known = self._producers.get(id(tensor))
            if known is None or known[0]() is not tensor:
                known = (weakref.ref(tensor), len(self._values))
                self._producers[id(tensor)] = known
                self._values.append((_max_abs(tensor), None, "", _INPUT, (), ()))
            indices.append(known[1])
        return tuple(indices)

    def _record_op(self, site, func, name, args, kwargs, out, outputs, autocast_on) -> None:
        evidence = self.watched[site]
        record = evidence.ops.get(name)
        if record is None:
            record = evidence.ops[name] = OpRecord(name)
        record.calls += 1
        record.under_autocast += bool(autocast_on)
        inputs = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
        record.input_dtypes.update(_dtype_name(t.dtype) for t in inputs)
        record.output_dtypes.update(_dtype_name(t.dtype) for t in outputs)
        if autocast_on:
            record.low_precision_autocast_dtypes.update(_dtype_name(t.dtype) for t in outputs if t.dtype in _LOW)
        nonempty = [t for t in outputs if t.numel()]
        if nonempty:
            self._defer(lambda values, r=record: setattr(r, "max_abs_output", _nanmax(r.max_abs_output, *values)),
                        [_max_abs(t) for t in nonempty])
        self._touch(evidence)
        probes = self.probes.get(site, ())
        if Probe.CAST in probes and name in _CASTS:
            self._probe_cast(record, args, out)
        if Probe.RECOMPUTE in probes and any(t.dtype in _LOW for t in inputs):
            self._probe_recompute(record, func, name, args, kwargs, out)
        if Probe.SATURATION in probes and name in _BCE and args and isinstance(args[0], torch.Tensor):
            probabilities = args[0].detach()
            if probabilities.dtype in _LOW:
                saturated = ((probabilities == 0) | (probabilities == 1)).sum()
                margin = torch.minimum(probabilities, 1 - probabilities).float().amin()
                self._defer(lambda v, r=record, n=probabilities.numel(): _add_saturation(r, int(v[0]), n, v[1]),
                            [saturated, margin])

    def _touch(self, evidence: LineEvidence) -> None:
        if evidence.first_step is None:
            evidence.first_step = self.step
        evidence.last_step = self.step

    def _probe_cast(self, record: OpRecord, args, out) -> None:
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is None or not isinstance(out, torch.Tensor) or out.dtype not in _LOW or source.dtype in _LOW:
            return
        if not source.is_floating_point() or source.numel() == 0:
            return
        src, dst = source.detach(), out.detach()
        stats = next((c for c in record.casts if c.target == _dtype_name(dst.dtype)), None)
        if stats is None:
            stats = CastStats(_dtype_name(dst.dtype), format_max=_FORMATS[dst.dtype].max)
            record.casts.append(stats)
        nonzero = src != 0
        finite = torch.isfinite(src)

        def fold(values, s=stats, n=src.numel()):
            s.values += n
            s.nonzero += int(values[0])
            s.flushed += int(values[1])
            s.overflowed += int(values[2])
            s.max_abs = _nanmax(s.max_abs, values[3])

        self._defer(fold, [nonzero.sum(), (nonzero & (dst == 0)).sum(), (finite & ~torch.isfinite(dst)).sum(),
                           _max_abs(src)])

    def _probe_recompute(self, record: OpRecord, func, name, args, kwargs, out) -> None:
        if name in _RANDOM or name.endswith("_") or "out" in kwargs or not isinstance(out, torch.Tensor):
            return
        if not out.is_floating_point() or out.numel() == 0:
            return
        low = out.detach()
        try:
            with _autocast_off(low.device.type):
                reference = func(*_upcast(args), **_upcast(kwargs))
        except Exception:  # noqa: BLE001 - an op that will not run in float32 has nothing to compare
            return
        if not isinstance(reference, torch.Tensor) or reference.shape != low.shape:
            return
        reference = reference.detach().float()
        stats = record.recompute
        if stats is None:
            stats = record.recompute = RecomputeStats(_dtype_name(next(t.dtype for t in _tensors((args, kwargs)) if t.dtype in _LOW)))
        low32 = low.float()
        finite_ref = torch.isfinite(reference)
        ref_nonzero = finite_ref & (reference != 0)
        diff = torch.where(finite_ref & torch.isfinite(low32), (low32 - reference).abs(), torch.zeros_like(reference))
        scale = torch.where(finite_ref, reference.abs(), torch.zeros_like(reference))

        def fold(values, s=stats):
            s.runs += 1
            ref_max = values[1]
            if ref_max > 0:
                s.max_relative_error = max(s.max_relative_error, values[0] / ref_max)
            s.nonzero += int(values[2])
            s.flushed += int(values[3])
            s.overflowed += int(values[4])

        self._defer(fold, [diff.amax(), scale.amax(), ref_nonzero.sum(), (ref_nonzero & (low32 == 0)).sum(),
                           (finite_ref & ~torch.isfinite(low32)).sum()])

    # ------------------------------------------------------------------ backward
    def _backward_hook(self, site: Site | None, sites: list[Site], name: str, forward: tuple = ()):
        gradient_sites = [s for s in sites if Probe.GRADIENT_RANGE in self.probes.get(s, ())]

        def hook(grad_inputs, grad_outputs):
            if self.busy:
                return None
            self.busy = True
            try:
                with torch.no_grad():
                    inputs = None
                    for grad in grad_inputs:
                        if isinstance(grad, torch.Tensor) and grad.is_floating_point() and grad.numel():
                            if inputs is None:  # the gradients flowing in
                                inputs = self._input_indices([g for g in grad_outputs if isinstance(g, torch.Tensor)])
                            self._remember(grad, len(self._values))
                            self._values.append((_max_abs(grad), site, name, "backward", forward, inputs))
                            if grad.dtype in _LOW:
                                for gradient_site in gradient_sites:
                                    self._probe_gradient(gradient_site, grad)
            except Exception as exc:  # noqa: BLE001 - never break the backward pass
                self.fail(exc)
                return None
            self.busy = False
            return None

        return hook

    def _probe_gradient(self, site: Site, grad: torch.Tensor) -> None:
        record = self.watched[site].gradients
        g = grad.detach().abs()
        nonzero = g != 0
        finite = torch.isfinite(g)
        smallest = _FORMATS[grad.dtype].smallest_normal
        masked = torch.where(nonzero & finite, g.float(), torch.full_like(g, math.inf, dtype=torch.float32))

        def fold(values, r=record, n=g.numel()):
            r.values += n
            r.nonzero += int(values[0])
            r.subnormal += int(values[1])
            r.nonfinite += int(values[2])
            r.min_abs_nonzero = min(r.min_abs_nonzero, values[3])

        self._defer(fold, [nonzero.sum(), (nonzero & (g < smallest)).sum(), (~finite).sum(), masked.amin()])

    def _on_backward(self, args, sites: list[Site], autocast_on: bool) -> None:
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if tensor is None or not sites:
            return
        scaled = self._is_scaled(tensor)
        for site in sites:
            self.watched[site].calls.append(ScalerCall("backward", self.step, scaled=scaled,
                                                       under_autocast=autocast_on))
            self._touch(self.watched[site])

    def _is_scaled(self, tensor: torch.Tensor) -> bool:
        if tensor in self.scaled_outputs:
            return True
        node = tensor.grad_fn
        frontier = [node] if node is not None else []
        for _ in range(4):  # scaler.scale(loss) / accumulation_steps: a few nodes down
            nxt = []
            for n in frontier:
                for child, _index in getattr(n, "next_functions", ()):
                    if child is not None:
                        if child.metadata.get("flake8_amp_scaled"):
                            return True
                        nxt.append(child)
            frontier = nxt
        return bool(node is not None and node.metadata.get("flake8_amp_scaled"))

    # ------------------------------------------------------------------ errors, time
    def _seen(self, exc: BaseException) -> bool:
        """Whether ``exc`` was recorded already; it is from now on."""
        if self._seen_errors.get(id(exc)) is exc:
            return True
        self._seen_errors[id(exc)] = exc
        return False

    def _record_error(self, exc: BaseException, sites: Iterable[Site]) -> None:
        if self._seen(exc):
            return
        for site in sites:
            self.watched[site].errors.append(ErrorRecord(type(exc).__name__, _first_line(exc), self.step))
            self._touch(self.watched[site])

    def record_error_at(self, exc: BaseException, site: Site) -> None:
        """An exception seen by the line tracer in a watched frame (not a torch op)."""
        if site not in self.watched or self._seen(exc):
            return
        self.watched[site].errors.append(ErrorRecord(type(exc).__name__, _first_line(exc), self.step))
        self._touch(self.watched[site])

    def time_is_up(self) -> None:
        """The watchdog's expiry (see :mod:`.deadline`): the StopScript it raises ends the run."""
        if self.stop_reason is None:
            self.stop_reason = "timeout"

    # ------------------------------------------------------------------ steps
    def end_step(self, skipped: bool = False) -> None:
        self._seen_errors.clear()
        self.flush()
        self.step += 1
        self.run.steps_run = self.step
        if skipped:
            self.run.skipped_steps.append(self.step - 1)
        if self.max_steps is not None and self.step >= self.max_steps and self.stop_reason is None:
            self.stop_reason = "steps"
            raise StopScript("steps")

    def flush(self) -> None:
        """Read the step's device-side values in one transfer each and fold them into the evidence. Busy
        meanwhile: the recorder's own ops (from an optimizer hook) are not the script's."""
        if self.failure is not None:
            return
        busy, self.busy = self.busy, True
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001 - never break the step it is called from
            self.fail(exc)
            return
        self.busy = busy

    def _flush(self) -> None:
        values, self._values = self._values, []
        deferred, self._deferred = self._deferred, []
        self._producers.clear()
        if values:
            numbers = _read([v[0] for v in values])
            firsts: dict[str, dict[str, Any]] = {}
            inherited = set()  # phases whose first non-finite value is an earlier one reaching this op
            for index, (number, (_tensor, site, op, phase, forward, inputs)) in enumerate(zip(numbers, values)):
                if not math.isfinite(number) and phase not in firsts and phase != _INPUT:
                    kind = "nan" if math.isnan(number) else "inf"
                    firsts[phase] = {"site": site, "op": op, "phase": phase, "step": self.step, "kind": kind,
                                     "order": self._order + index, "inputs": [numbers[i] for i in inputs]}
                    if forward and not all(math.isfinite(v) for v in torch.stack([t.float().cpu() for t in forward]).tolist()):
                        # a non-finite gradient at an op whose forward output was already NaN/Inf: the
                        # run's first in backward, but the line did not produce it (its forward did, or
                        # an earlier line's)
                        inherited.add(phase)
            self._order += len(values)
            for phase, origin in firsts.items():
                self.first_nonfinite.setdefault(phase, origin)
                if origin["site"] in self.watched and phase not in inherited:
                    self.watched[origin["site"]].nonfinite_produced.append((origin["op"], phase, self.step, origin["kind"]))
        if deferred:
            numbers = _read([t.reshape(()).double() for _fold, tensors in deferred for t in tensors])
            index = 0
            for fold, tensors in deferred:
                fold(numbers[index:index + len(tensors)])
                index += len(tensors)

    def _defer(self, fold: Callable[[list[float]], None], tensors: list[torch.Tensor]) -> None:
        self._deferred.append((fold, tensors))

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        pre = register_optimizer_step_pre_hook(self._optimizer_pre_step)
        post = register_optimizer_step_post_hook(self._optimizer_post_step)
        self._undo += [pre.remove, post.remove]
        self._patch_scaler()
        self._patch_clip()
        self._patch_save()
        self._patch_constructors()
        self._patch_warnings()
        self._patch_engine()
        self._mode.__enter__()
        self._undo.append(lambda: self._mode.__exit__(None, None, None))
        self._undo.append(self._resume_after_step)  # undone first: the mode back on its stack, then exited

    def uninstall(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # noqa: BLE001 - keep undoing the rest
                pass

    def _patch(self, owner: Any, name: str, wrapper_factory: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name] if name in getattr(owner, "__dict__", {}) else getattr(owner, name)
        setattr(owner, name, wrapper_factory(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def _patch_scaler(self) -> None:
        from torch.amp.grad_scaler import GradScaler

        recorder = self

        def scale(original):
            def wrapper(scaler, outputs):
                result = original(scaler, outputs)
                if scaler.is_enabled():
                    recorder.run.scaler_enabled = True
                    recorder.grads_scaled_by = scaler
                    recorder.unscaled_optimizers.clear()
                    for tensor in _tensors(result):
                        recorder.scaled_outputs.add(tensor)
                        if tensor.grad_fn is not None:
                            tensor.grad_fn.metadata["flake8_amp_scaled"] = True
                recorder._scaler_call("scale", scaler)
                return result
            return wrapper

        def unscale(original):
            def wrapper(scaler, optimizer):
                recorder._scaler_call("unscale_", scaler)
                with recorder.paused():
                    result = original(scaler, optimizer)
                if recorder.grads_scaled_by is scaler:
                    recorder.unscaled_optimizers.add(optimizer)
                return result
            return wrapper

        def step(original):
            def wrapper(scaler, optimizer, *args, **kwargs):
                recorder._scaler_call("step", scaler)
                recorder.in_scaler_step = True
                recorder.optimizer_stepped = False
                try:
                    with recorder.paused():
                        result = original(scaler, optimizer, *args, **kwargs)
                finally:
                    recorder.in_scaler_step = False
                if scaler.is_enabled() and not recorder.optimizer_stepped:
                    recorder.end_step(skipped=True)
                return result
            return wrapper

        def update(original):
            def wrapper(scaler, new_scale=None):
                had_step = bool(getattr(scaler, "_per_optimizer_states", {})) and any(
                    state.get("stage") is not None and str(state.get("stage")).endswith("STEPPED")
                    for state in scaler._per_optimizer_states.values()
                )
                recorder._scaler_call("update", scaler, detail=had_step)
                if scaler.is_enabled() and not recorder.run.scales:
                    recorder.run.scales.append(float(scaler.get_scale()))
                with recorder.paused():
                    result = original(scaler, new_scale)
                if scaler.is_enabled():
                    recorder.run.scales.append(float(scaler.get_scale()))
                if recorder.grads_scaled_by is scaler:
                    recorder.grads_scaled_by = None
                return result
            return wrapper

        for name, factory in (("scale", scale), ("unscale_", unscale), ("step", step), ("update", update)):
            self._patch(GradScaler, name, factory)

    def _scaler_call(self, kind: str, scaler: Any, detail: bool | None = None) -> None:
        # from the patched method's frame: _sites_for walks out to the project line that called it
        sites = self._sites_for(sys._getframe(1)) if self.watched else []
        scale = None
        for site in sites:
            if scale is None and scaler.is_enabled():
                scale = float(scaler.get_scale())
            self.watched[site].calls.append(ScalerCall(kind, self.step, scale=scale, detail=detail))
            self._touch(self.watched[site])

    def _optimizer_pre_step(self, optimizer, args, kwargs) -> None:
        self._resume_after_step()  # a step that raised never reached its post-hook
        if self.in_scaler_step:
            return
        # the step's own ops (and the snapshot below) run unwatched, as inside the GradScaler's (see
        # paused); its result is read per weight in the post-hook
        stack = _function_modes()
        if stack and stack[-1] is self._mode:
            _pop_mode()
            self._step_paused = True
        sites = self._sites_for(sys._getframe(1)) if self.watched else []  # torch's step wrapper, then the caller
        followed = self.followed.get(optimizer)
        if followed is not None and followed not in sites:
            sites.append(followed)
        scaler = self.grads_scaled_by if optimizer not in self.unscaled_optimizers else None
        for site in sites:
            scale = float(scaler.get_scale()) if scaler is not None else None
            self.watched[site].calls.append(ScalerCall("optimizer_step", self.step, scaled=scaler is not None, scale=scale))
            self._touch(self.watched[site])
        if followed is not None and Probe.UPDATES in self.probes.get(followed, ()):
            self._snapshot = (followed, [(p, p.detach().clone()) for group in optimizer.param_groups
                                         for p in group["params"] if p.grad is not None and p.dtype in _LOW])

    def _resume_after_step(self) -> None:
        if self._step_paused:
            self._step_paused = False
            _push_mode(self._mode)

    def _optimizer_post_step(self, optimizer, args, kwargs) -> None:
        busy, self.busy = self.busy, True  # the recorder's own reads are not the script's ops
        try:
            self._after_step(optimizer)
        finally:
            self.busy = busy or self.failure is not None  # after a failure, nothing is recorded again
            self._resume_after_step()

    def _after_step(self, optimizer) -> None:
        self.optimizer_stepped = True
        if self.failure is None:
            try:  # the step's own ops run unwatched (see paused): its result is one value per weight
                site = self.innermost_site(sys._getframe(1))
                op = f"{type(optimizer).__name__}.step"
                with torch.no_grad():
                    for group in optimizer.param_groups:
                        for param in group["params"]:
                            if param.is_floating_point() and param.numel():
                                self._remember(param, len(self._values))
                                self._values.append((_max_abs(param), site, op, "forward", (), ()))
            except Exception as exc:  # noqa: BLE001 - never break the step
                self.fail(exc)
        snapshot = self._snapshot
        if snapshot is not None:
            self._snapshot = None
            site, pairs = snapshot
            record = self.watched[site].updates
            record.steps += 1
            with torch.no_grad():
                for param, before in pairs:
                    moved = param.grad.detach() != 0
                    record.moved += int(moved.sum())
                    record.vanished += int((moved & (param.detach() == before)).sum())
                    record.nonfinite_after += int((~torch.isfinite(param.detach())).sum())
        self.end_step()

    def _patch_clip(self) -> None:
        import torch.nn.utils as utils
        import torch.nn.utils.clip_grad as clip_grad

        recorder = self

        def factory(kind):
            def make(original):
                def wrapper(parameters, *args, **kwargs):
                    sites = recorder._sites_for(sys._getframe(1)) if recorder.watched else []
                    with recorder.paused():
                        result = original(parameters, *args, **kwargs)
                    if sites:
                        limit = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value"))
                        # the parameters' optimizer is not known here: any unscale_ counts
                        scaler = recorder.grads_scaled_by if not recorder.unscaled_optimizers else None
                        scale = float(scaler.get_scale()) if scaler is not None else None
                        norm = float(result) if kind == "norm" and isinstance(result, torch.Tensor) else None
                        for site in sites:
                            recorder.watched[site].clips.append(ClipRecord(norm, float(limit), scale, recorder.step))
                            recorder._touch(recorder.watched[site])
                    return result
                return wrapper
            return make

        for name, kind in (("clip_grad_norm_", "norm"), ("clip_grad_value_", "value")):
            original = getattr(clip_grad, name)
            wrapped = factory(kind)(original)
            for owner in (clip_grad, utils):
                if getattr(owner, name, None) is original:
                    setattr(owner, name, wrapped)
                    self._undo.append(lambda owner=owner, name=name, original=original: setattr(owner, name, original))

    def _patch_save(self) -> None:
        recorder = self

        def make(original):
            def wrapper(obj, *args, **kwargs):
                sites = recorder._sites_for(sys._getframe(1)) if recorder.watched else []
                for site in sites:
                    recorder.watched[site].calls.append(
                        ScalerCall("save", recorder.step, detail=_holds_scaler_state(obj),
                                   scaled=recorder.run.scaler_enabled,
                                   scale=recorder.run.scales[-1] if recorder.run.scales else None))
                    recorder._touch(recorder.watched[site])
                with recorder.paused():
                    return original(obj, *args, **kwargs)
            return wrapper

        self._patch(torch, "save", make)

    def _patch_warnings(self) -> None:
        """Deprecation warnings, attributed to the project line they point at (AMP013's evidence)."""
        recorder = self

        def make(original):
            def wrapper(message, category=None, stacklevel=1, *args, **kwargs):
                kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
                if recorder.watched and isinstance(kind, type) and issubclass(kind, (DeprecationWarning, FutureWarning)):
                    try:
                        frame = sys._getframe(max(stacklevel, 1))
                    except ValueError:
                        frame = None
                    text = f"{kind.__name__}: {str(message).splitlines()[0] if str(message) else ''}"
                    where = recorder.innermost_site(frame) or (None, None)
                    if (*where, text) not in recorder.run.deprecations:
                        recorder.run.deprecations.append((*where, text))
                    for site in recorder._sites_for(frame):
                        evidence = recorder.watched[site]
                        if text not in evidence.warnings:
                            evidence.warnings.append(text)
                        recorder._touch(evidence)
                return original(message, category, stacklevel + 1, *args, **kwargs)
            return wrapper

        self._patch(warnings, "warn", make)

    def _patch_engine(self) -> None:
        """The mode is off while its handler runs ``loss.backward()`` / ``torch.autograd.grad``: put it back
        around the engine, so that the ops of a custom autograd.Function's backward (Python code the
        engine calls) are recorded too."""
        import torch.autograd as autograd
        from torch.overrides import _get_current_function_mode_stack

        recorder = self

        def make(original):
            def wrapper(*args, **kwargs):
                if recorder._mode in _get_current_function_mode_stack():
                    return original(*args, **kwargs)
                with recorder._mode:
                    return original(*args, **kwargs)
            return wrapper

        self._patch(autograd, "_engine_run_backward", make)

    def _patch_constructors(self) -> None:
        """Objects created at watched lines are followed to their uses: a loss module to its calls, an
        optimizer to its steps."""
        recorder = self

        def make(original):
            def wrapper(obj, *args, **kwargs):
                original(obj, *args, **kwargs)
                if recorder.watched and obj not in recorder.followed:
                    site = recorder.innermost_site(sys._getframe(1))
                    if site in recorder.watched:
                        recorder.followed[obj] = site
            return wrapper

        self._patch(torch.nn.Module, "__init__", make)
        self._patch(torch.optim.Optimizer, "__init__", make)


# ---------------------------------------------------------------------- helpers
def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _max_abs(tensor: torch.Tensor) -> torch.Tensor:
    """max |x| on the device: NaN when the tensor holds a NaN, inf when it holds an Inf."""
    tensor = tensor.detach()
    if tensor.dtype == torch.float64:  # vector_norm only widens: read a float64 result as float32
        return torch.linalg.vector_norm(tensor, math.inf).float()
    return torch.linalg.vector_norm(tensor, math.inf, dtype=torch.float32)


def _read(scalars: list[torch.Tensor]) -> list[float]:
    """0-d tensors to floats, one transfer per device."""
    if not scalars:
        return []
    device = scalars[0].device
    if all(t.device == device for t in scalars):
        return torch.stack(scalars).tolist()
    return [float(v) for v in torch.stack([t.cpu() for t in scalars]).tolist()]


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().float() if value.dtype in _LOW else value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(v) for v in value)
    if isinstance(value, dict):
        return {k: _upcast(v) for k, v in value.items()}
    if value in _LOW:
        return torch.float32
    return value


def _autocast_enabled(args: tuple) -> bool:
    device = "cpu"
    for tensor in _tensors(args[:2] if args else ()):
        device = tensor.device.type
        break
    try:
        return autocast_applies(device)
    except (RuntimeError, TypeError):
        return False


def _autocast_off(device: str) -> contextlib.AbstractContextManager:
    """Autocast off for an op on ``device``: while CUDA is emulated, a CPU tensor's CUDA region too."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device, enabled=False))
    if CudaEmulation._active and device == "cpu":
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _nanmax(*values: float) -> float:
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        return math.nan
    return max(values)


def _add_saturation(record: OpRecord, saturated: int, total: int, margin: float = math.inf) -> None:
    record.saturated += saturated
    record.probabilities += total
    record.saturation_margin = min(record.saturation_margin, margin)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _holds_scaler_state(obj: Any, depth: int = 0) -> bool:
    if depth > 3:
        return False
    if isinstance(obj, dict):
        if {"scale", "growth_factor", "backoff_factor"} <= set(obj):
            return True
        return any(_holds_scaler_state(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_scaler_state(v, depth + 1) for v in obj)
    return False

