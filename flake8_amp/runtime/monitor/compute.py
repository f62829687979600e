"""How to compute: device-side statistics, never read to the host here.

Every function returns tensors on the device it was given and makes no host synchronisation: no
``.item()``, no host list turned into a device tensor, no boolean indexing. Temporaries are bounded
(activations are judged on an evenly strided view; gradient thresholds are applied chunk by chunk).
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
#: elements of a gradient compared with a threshold at a time (bounds the temporaries)
_CHUNK = 1 << 22
#: on a CPU, gradients from this size on get their own BLAS dot rather than a share of the fused norm
_OWN_CALL = 1 << 16
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
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            own_call = (not fused and grad.layout == torch.strided and grad.numel() >= _OWN_CALL
                        and grad.dtype in (torch.float32, torch.float64) and grad.is_contiguous())
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
            self.has_gradient = None if len(present) == len(grads) else torch.tensor(
                [total > 0 for total in totals], device=device)
            self.totals = torch.tensor(totals, device=device)


class GradientReader:
    """Per layer, the squared norm of its gradients, whether it had any, and on sampled steps the fraction
    of its elements that are zero (or would be in a narrower format): device tensors, no host read."""

    def __init__(self, layer_of: list[int], layers: int, device: torch.device) -> None:
        self.layer_of, self.layers, self.device = layer_of, layers, device
        self.fused = device.type != "cpu"  # fused norms pay off on an accelerator, BLAS dots on a CPU
        self._plans: dict[tuple, _Plan] = {}
        with torch.inference_mode(False):
            self._zero = torch.zeros((), device=device)

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

    def squares(self, grads: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(per-layer squared gradient norms, which layers had a gradient: None when all did); None when no
        parameter has a gradient. Accumulated in float32 (float64 gradients in float64). One fused call
        per dtype, except on a CPU for large gradients: a BLAS dot each, about twice as fast there as the
        fused norm once a gradient is large enough to pay for its own call."""
        if all(g is None for g in grads):
            return None
        plan = self._plan(grads)
        squares = torch.zeros(self.layers, dtype=torch.float32, device=self.device)
        for kind, indices, layer_index in plan.groups:
            if kind == "dot":
                flats = [grads[i].view(-1) for i in indices]
                values = torch.stack([torch.dot(flat, flat) for flat in flats]).float()
            else:  # the fused norm takes gradients of any shape: no per-gradient view to make
                group = [grads[i] if grads[i].layout == torch.strided else _stored(grads[i]) for i in indices]
                values = torch.stack(torch._foreach_norm(group, 2, dtype=None if kind == torch.float64 else torch.float32))
                values = values.float().square()
            squares.index_add_(0, layer_index, values)
        return squares, plan.has_gradient

    def zero_fractions(self, grads: list[torch.Tensor | None], threshold: torch.Tensor | None) -> torch.Tensor:
        """Per layer, the fraction of its gradient elements that are zero, or with ``threshold`` (a 0-d
        device tensor) below it in magnitude: the elements float16 would flush to zero. NaN for a layer
        without a gradient; a sparse gradient's elements that are not stored count as zeros."""
        plan = self._plan(grads)
        if not plan.present:
            return torch.full((self.layers,), math.nan, device=self.device)
        counts = torch.stack([_small(grads[i], threshold) for i in plan.present]).float()
        small = torch.zeros(self.layers, dtype=torch.float32, device=self.device).index_add_(0, plan.present_layers, counts)
        return torch.where(plan.totals > 0, small / plan.totals.clamp_min(1), math.nan)


def _small(grad: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    flat = _stored(grad)
    unstored = grad.numel() - flat.numel()
    if threshold is None:
        return unstored + flat.numel() - torch.count_nonzero(flat)
    parts = [torch.count_nonzero(flat[i : i + _CHUNK].abs() < threshold) for i in range(0, flat.numel(), _CHUNK)]
    return unstored + (torch.stack(parts).sum() if len(parts) > 1 else parts[0])


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
    sample = flat[:: max(1, flat.numel() // RATIO_SAMPLE)]
    magnitude = sample.abs()
    small = (magnitude < fmt_normal).sum(dtype=torch.float32)  # zeros and subnormals (a NaN is neither)
    nonzero = torch.count_nonzero(sample).float()
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
