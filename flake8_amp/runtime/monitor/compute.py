"""How to compute: device-side statistics, never read to the host here.

Every function returns tensors on the device it was given and makes no host synchronisation: no
``.item()``, no host list turned into a device tensor, no boolean indexing; the one exception is a
:class:`GradientReader` told its tensors are in host memory, where a read synchronises nothing. Temporaries
are bounded (counts are taken on evenly strided views; histograms chunk by chunk).
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: a gradient norm that could not be read (no gradient: after zero_grad, in an eval step): not a NaN
MISSING = -1.0
#: one row per watched module on a sampled step
ACTIVATION_COLUMNS = ("amax", "small", "nonzero", "distortion")
#: elements of an activation that its underflow ratio and distortion are estimated on (evenly strided)
RATIO_SAMPLE = 1 << 16
#: elements of a gradient binned at a time (bounds a histogram's temporaries)
_CHUNK = 1 << 22
#: on a CPU, gradients from this size on get their own BLAS dot rather than a share of the fused norm
_OWN_CALL = 1 << 16
#: on a CPU, up to this many gradients all get a dot: the fused norm's fixed cost, right after the backward
#: pass, is about that of ten small dots
_FEW_GRADIENTS = 10
#: dtype name -> (max, smallest normal, smallest subnormal)
FORMAT_LIMITS = {
    "float16": (65504.0, 2.0**-14, 2.0**-24),
    "bfloat16": (3.3895313892515355e38, 2.0**-126, 2.0**-133),
    "float32": (3.4028234663852886e38, 2.0**-126, 2.0**-149),
    "float64": (1.7976931348623157e308, 2.0**-1022, 2.0**-1074),
}
PRECISION_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
#: exponent histograms: one bin per binade of |x|, 2**-64 up to 2**32 (zeros are counted apart)
HISTOGRAM_EXPONENTS = (-64, 32)


def judged_format(dtype: torch.dtype, precision: str | None) -> str:
    """The format values of ``dtype`` are judged against: their own, or with ``precision="fp16"`` float16
    for float32 and bfloat16 values ("would this run survive float16?")."""
    name = str(dtype).removeprefix("torch.")
    if precision and name in ("float32", "bfloat16"):
        return PRECISION_DTYPES[precision]
    return name if name in FORMAT_LIMITS else "float32"


class _Plan:
    """How one pattern of gradients (which are missing, their dtypes and sizes) is reduced: the groups of
    gradients reduced together and, for each, the layer of each of its gradients as a device tensor; the
    layers that have a gradient; each layer's element count. Made once per pattern (a run has one or two:
    all present, or some frozen), so that no step builds a device tensor from a host list."""

    def __init__(self, grads: list[torch.Tensor | None], layer_of: list[int], layers: int, device: torch.device,
                 fused: bool) -> None:
        groups: dict[Any, list[int]] = {}
        dense = [not fused and grad is not None and grad.layout == torch.strided
                 and grad.dtype in (torch.float32, torch.float64) for grad in grads]
        few = sum(dense) <= _FEW_GRADIENTS
        for i, grad in enumerate(grads):
            if grad is not None:
                own_call = dense[i] and (few or grad.numel() >= _OWN_CALL)
                groups.setdefault("dot" if own_call else grad.dtype, []).append(i)
        present = [i for i, grad in enumerate(grads) if grad is not None]
        totals = [0.0] * layers
        for i in present:
            totals[layer_of[i]] += float(grads[i].numel())
        with torch.inference_mode(False):
            self.groups = [(kind, indices, torch.tensor([layer_of[i] for i in indices], dtype=torch.long, device=device))
                           for kind, indices in groups.items()]
            self.present = present
            self.present_layers = torch.tensor([layer_of[i] for i in present], dtype=torch.long, device=device)
            self.has_gradient_on_host = None if len(present) == len(grads) else [total > 0 for total in totals]
            self.has_gradient = None if self.has_gradient_on_host is None else torch.tensor(
                self.has_gradient_on_host, device=device)
            self.totals_on_host = totals
            self.totals = torch.tensor(totals, device=device)


class GradientReader:
    """Per layer, the squared norm of its gradients, whether it had any, and on sampled steps the fraction
    of its elements that are zero (or would be in a narrower format): device tensors, no host read.

    In host memory (a CPU model) reading costs no synchronisation, and each torch call is dear: called
    right after the optimizer's large kernels, it runs with cold caches (about 15 µs each, in a two-layer
    MLP's training loop, against 1 µs in a tight loop). There every gradient's norm comes to Python in one
    list, summed per layer in Python, and a few gradients all get a dot (the fused norm's fixed cost is
    that of about ten).
    """

    def __init__(self, layer_of: list[int], layers: int, device: torch.device, on_host: bool) -> None:
        self.layer_of, self.layers, self.device, self.on_host = layer_of, layers, device, on_host
        self.fused = device.type != "cpu"  # fused norms pay off on an accelerator, BLAS dots on a CPU
        self._plans: dict[tuple, _Plan] = {}

    def _plan(self, grads: list[torch.Tensor | None]) -> _Plan:
        # a gradient has its parameter's shape: which are missing, their dtypes and layouts tell the pattern
        key = tuple(None if g is None else (g.dtype, g.layout) for g in grads)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(grads, self.layer_of, self.layers, self.device, self.fused)
        return plan

    def prepare(self, params: list[torch.Tensor]) -> None:
        """Make the plan of the expected pattern (every gradient present, in its parameter's dtype) now,
        at construction, so that the first steps make none."""
        self._plan(list(params))

    def squares(self, grads: list[torch.Tensor | None]) -> tuple[Any, Any] | None:
        """(per-layer squared gradient norms, which layers had a gradient: None when all did); None when no
        parameter has a gradient. Device tensors accumulated in float32 (float64 gradients in float64), or
        in host memory Python lists. One fused call per dtype, except on a CPU for large gradients: a BLAS
        dot each, about twice as fast there as the fused norm once a gradient is large enough to pay for
        its own call."""
        if all(g is None for g in grads):
            return None
        plan = self._plan(grads)
        if self.on_host:  # every group's values in one list: three torch calls fewer than a list per group
            parts: list[torch.Tensor] = []
            order: list[tuple[int, bool]] = []  # (gradient, whether its value is a norm still to square)
            for kind, indices, _ in plan.groups:
                parts += _group_values(grads, kind, indices)
                order += [(i, kind != "dot") for i in indices]
            squares = [0.0] * self.layers
            for (i, is_norm), value in zip(order, torch.stack(parts).tolist()):
                squares[self.layer_of[i]] += value * value if is_norm else value
            return squares, plan.has_gradient_on_host
        device_squares = torch.zeros(self.layers, dtype=torch.float32, device=self.device)
        for kind, indices, layer_index in plan.groups:
            device_squares.index_add_(0, layer_index, _group_squares(grads, kind, indices).float())
        return device_squares, plan.has_gradient

    def zero_fractions(self, grads: list[torch.Tensor | None], threshold: torch.Tensor | None) -> torch.Tensor:
        """Per layer, the fraction of its gradient elements that are zero, or with ``threshold`` (a 0-d
        device tensor) below it in magnitude: the elements float16 would flush to zero. NaN for a layer
        without a gradient; a sparse gradient's elements that are not stored count as zeros. Estimated, as
        activations' ratios are, on at most :data:`RATIO_SAMPLE` evenly strided elements of each gradient
        (an odd stride, which walks every column of a power-of-two-wide weight): counting is slow on a CPU
        (a full count took 0.6 ms a step for a 1.6M-parameter MLP), and the judge's floor (a quarter of the
        elements) is a hundred times the estimate's error."""
        plan = self._plan(grads)
        if not plan.present:
            return torch.full((self.layers,), math.nan, device=self.device)
        samples = [_sampled(grads[i]) for i in plan.present]
        if self.on_host:
            # one call for every gradient (the zero-norm counts non-zero values): per-gradient calls cost a
            # GPT-2-shaped model's 147 gradients 2 ms a sampled step
            if threshold is None:
                nonzero = torch.stack(torch._foreach_norm([sample for sample, _, _ in samples], 0)).tolist()
                counts = [sample.numel() - count for (sample, _, _), count in zip(samples, nonzero)]
            else:
                counts = torch.stack([_count_small(sample, threshold) for sample, _, _ in samples]).tolist()
            small = [0.0] * self.layers
            for i, (_, weight, unstored), count in zip(plan.present, samples, counts):
                small[self.layer_of[i]] += unstored + count * weight
            return torch.tensor([value / total if total else math.nan for value, total in zip(small, plan.totals_on_host)])
        counts = [_count_small(sample, threshold) for sample, _, _ in samples]
        estimates = torch.stack([unstored + count * weight for (_, weight, unstored), count in zip(samples, counts)])
        small = torch.zeros(self.layers, dtype=torch.float32, device=self.device).index_add_(0, plan.present_layers, estimates.float())
        return torch.where(plan.totals > 0, small / plan.totals.clamp_min(1), math.nan)


def _group_values(grads: list[torch.Tensor | None], kind: Any, indices: list[int]) -> list[torch.Tensor]:
    """One group of gradients' squared norms (a dot each) or norms (one fused call), in their own precision."""
    if kind == "dot":
        return [torch.dot(flat, flat) for flat in (grads[i].reshape(-1) for i in indices)]
    # the fused norm takes gradients of any shape: no per-gradient view to make
    group = [grads[i] if grads[i].layout == torch.strided else _stored(grads[i]) for i in indices]
    return list(torch._foreach_norm(group, 2, dtype=None if kind == torch.float64 else torch.float32))


def _group_squares(grads: list[torch.Tensor | None], kind: Any, indices: list[int]) -> torch.Tensor:
    """One group of gradients' squared norms, in float32 (float64 gradients in float64)."""
    values = torch.stack(_group_values(grads, kind, indices))
    return values if kind == "dot" else values.square()


def _sampled(grad: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """An evenly strided sample of a gradient's stored values, how many stored values each sampled one
    stands for, and how many elements are not stored (a sparse gradient's: zeros)."""
    flat = _stored(grad)
    sample = flat[:: strided_step(flat.numel())]
    return sample, flat.numel() / max(sample.numel(), 1), grad.numel() - flat.numel()


def _count_small(sample: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    """How many of ``sample``'s values are zero, or below ``threshold`` in magnitude."""
    if threshold is None:
        return sample.numel() - torch.count_nonzero(sample)
    return torch.count_nonzero(sample.abs() < threshold)


def strided_step(elements: int) -> int:
    """The step of an evenly strided sample of at most about :data:`RATIO_SAMPLE` of ``elements`` values:
    odd, so that rows of a power-of-two width are not sampled at the same columns each time."""
    return max(1, elements // RATIO_SAMPLE) | 1


#: an integer dtype as wide as each float dtype, to count non-zero values by their bits
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _stored(grad: torch.Tensor) -> torch.Tensor:
    """A gradient's stored values, flat: itself (a view where it can be), or a sparse gradient's values."""
    if grad.layout != torch.strided:
        grad = grad.coalesce().values()
    return grad.reshape(-1)


def activation_stats(x: torch.Tensor, precision: str | None) -> tuple[torch.Tensor, tuple[float, int]]:
    """One activation's :data:`ACTIVATION_COLUMNS` as a float32 vector on its device, and what the host
    knows of it: the judged format's max and how many values the counts were taken over. The host turns
    them into headroom (max |x| / format max), underflow ratio and non-finiteness at the report.

    max |x| is exact, from one min/max pass (NaN and Inf propagate through it, so it also says whether
    every value is finite). The counts (values below the smallest normal, zeros included; non-zero values)
    and the distortion are taken on an evenly strided view of at most :data:`RATIO_SAMPLE` elements, which
    costs the same whatever the activation's size (a ratio's standard error under 0.2%). Few device ops
    per module: a sampled step hooks every watched module, and on a GPU each op is a kernel launch.
    """
    judged_as = judged_format(x.dtype, precision)
    fmt_max, fmt_normal, _ = FORMAT_LIMITS[judged_as]
    low, high = torch.aminmax(x)
    amax = torch.maximum(high, -low).float()
    flat = x.reshape(-1) if x.is_contiguous() else x.flatten()
    sample = flat[:: strided_step(flat.numel())]
    magnitude = sample.abs()
    # counted with count_nonzero, on a CPU over the bits of |x| (-0.0 is gone): several times faster there
    # than summing a mask or counting float values, and the same on a GPU
    small = torch.count_nonzero(magnitude < fmt_normal)  # zeros and subnormals (a NaN is neither)
    bits = _BITS.get(magnitude.dtype) if magnitude.is_cpu and magnitude.is_contiguous() else None
    nonzero = torch.count_nonzero(magnitude if bits is None else magnitude.view(bits))
    own = str(x.dtype).removeprefix("torch.")
    if judged_as != own and own in ("float32", "bfloat16"):
        target = torch.float16 if judged_as == "float16" else torch.bfloat16
        wide = magnitude.float()
        error = (wide.to(target).float() - wide).abs() / wide.clamp_min(1e-30)
        distortion = error.mean(dtype=torch.float32)
    else:
        distortion = torch.full((), math.nan, device=x.device)
    return torch.stack([amax, small, nonzero, distortion]), (fmt_max, sample.numel())


def exponent_histograms(grads: list[torch.Tensor | None], layer_of: list[int], layers: int,
                        device: torch.device) -> torch.Tensor:
    """Per layer, a histogram of log2 |g| over its gradients' elements, one bin per binade from 2**-64 to
    2**32, then the count of zeros: (layers, bins + 1) float32. Chunked: temporaries stay bounded."""
    low, high = HISTOGRAM_EXPONENTS
    bins = high - low
    rows = [torch.zeros(bins + 1, dtype=torch.float32, device=device) for _ in range(layers)]
    for grad, layer in zip(grads, layer_of):
        if grad is None:
            continue
        flat = _stored(grad)
        for i in range(0, flat.numel(), _CHUNK):
            chunk = flat[i : i + _CHUNK].float().abs()
            rows[layer][:bins] += torch.histc(torch.log2(chunk), bins=bins, min=low, max=high)
            rows[layer][bins] += chunk.numel() - torch.count_nonzero(chunk)
    return torch.stack(rows)
