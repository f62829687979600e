"""The report of :func:`~.layers.compare_precision`: each layer's errors, the end-to-end SQNR, the plan of
layers to keep in float32 and the code that applies it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


from ..formats import get_format, json_safe
from .common import _SHOWN_ROWS, _db, _first_of, _num, _table


# ------------------------------------------------------------------------------------------ results
@dataclass
class LayerComparison:
    """One layer in one format. ``sqnr`` / ``max_rel_error``: its output in the low-precision run of the
    whole model against float32's (error accumulated up to it); ``local_*``: the layer alone in low
    precision on its float32 inputs (None when not measured; ``note`` says why)."""

    name: str
    format: str
    kind: str
    order: int
    calls: int
    numel: int
    sqnr: float | None
    max_rel_error: float | None
    local_sqnr: float | None
    local_max_rel_error: float | None
    overflow_pct: float | None
    underflow_pct: float
    nonfinite: int
    reference_nonfinite: int
    note: str = ""

    @property
    def rank_key(self) -> tuple[float, float, int]:
        """Worst first: the error the layer adds on its own, then the accumulated one, then forward order
        (an unmeasured value stands in for the other; both unmeasured sort last)."""
        own = _first_of(self.local_sqnr, self.sqnr, math.inf)
        return (own, _first_of(self.sqnr, own), self.order)


@dataclass
class EndToEnd:
    """The model's output in one format against float32's."""

    format: str
    sqnr: float
    max_rel_error: float
    nonfinite: int


@dataclass
class KeepFp32Plan:
    """The layers to keep in float32 for one format, and the end-to-end SQNR measured with them kept."""

    format: str
    names: list[str]
    sqnr_before: float
    sqnr_after: float
    met: bool
    evaluations: int
    note: str = ""


@dataclass
class GradientComparison:
    """One parameter's gradient in one format against float32's (``loss_scale``: the scale it was computed at)."""

    name: str
    format: str
    sqnr: float
    max_rel_error: float
    loss_scale: float


@dataclass
class CompareReport:
    """What :func:`compare_precision` found. ``layers`` is sorted worst first (the error a layer adds on
    its own, then the accumulated one, then forward order); ``keep_fp32`` is the plan for the first format."""

    layers: list[LayerComparison]
    formats: list[str]
    mode: str
    device_type: str | None
    emulated: bool
    target_sqnr: float
    end_to_end: dict[str, EndToEnd]
    plans: dict[str, KeepFp32Plan]
    gradients: list[GradientComparison] = field(default_factory=list)
    uncalled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def keep_fp32(self) -> list[str]:
        """The smallest set found of layers to keep in float32 for the first format asked for."""
        return list(self.plans[self.formats[0]].names) if self.formats else []

    @property
    def end_to_end_sqnr(self) -> dict[str, float]:
        return {name: result.sqnr for name, result in self.end_to_end.items()}

    def code(self, format: str | None = None) -> str:
        """Python that applies the plan of ``format`` (the first format by default) to a variable ``model``."""
        plan = self.plans[get_format(format).name if format is not None else self.formats[0]]
        if not plan.names:
            return "# nothing to keep in float32"
        names = "[" + ", ".join(repr(name) for name in plan.names) + "]"
        if self.mode == "cast":
            dtype = "torch.float16" if plan.format == "fp16" else "torch.bfloat16"
            lines = [
                "import torch",
                "from flake8_amp.runtime import keep_fp32",
                "",
                f"model.to({dtype})  # the model cast whole, as compared",
                f"keep_fp32(model, {names}, model_dtype={dtype})  # these layers in float32",
            ]
        else:
            lines = ["from flake8_amp.runtime import keep_fp32", ""]
            lines.append(f"keep_fp32(model, {names})  # autocast off around these layers, inputs cast to float32")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep_fp32"] = self.keep_fp32
        data["end_to_end_sqnr"] = self.end_to_end_sqnr
        return json_safe(data)

    def table(self, max_rows: int | None = None) -> str:
        """The layers worst first, as an aligned table (all of them, or the worst ``max_rows``)."""
        headers = ["layer", "format", "SQNR dB", "own dB", "max rel err", "own max rel", "overflow %",
                   "underflow %", "calls"]
        rows = [
            [
                f"{entry.name or '(model)'} ({entry.kind})",
                entry.format,
                _db(entry.sqnr),
                _db(entry.local_sqnr),
                _num(entry.max_rel_error),
                _num(entry.local_max_rel_error),
                "n/a" if entry.overflow_pct is None else f"{entry.overflow_pct:.2f}",
                f"{entry.underflow_pct:.2f}",
                str(entry.calls),
            ]
            for entry in self.layers[: max_rows if max_rows is not None else len(self.layers)]
        ]
        text = _table(headers, rows, right=range(2, 9))
        hidden = len(self.layers) - len(rows)
        return text + (f"\n... {hidden} more (report.table() lists them all)" if hidden > 0 else "")

    def __str__(self) -> str:
        where = "cast whole (weights, buffers and inputs)" if self.mode == "cast" else f"autocast on {self.device_type}"
        if self.emulated:
            where += ", CUDA's policy emulated on this CPU"
        layer_count = len({entry.name for entry in self.layers})
        lines = [f"compare_precision: {layer_count} layers x {len(self.formats)} formats; {where}"]
        ends = []
        for name in self.formats:
            result = self.end_to_end[name]
            extra = f" ({result.nonfinite} non-finite values)" if result.nonfinite else ""
            ends.append(f"{name} {_db(result.sqnr)} dB{extra}")
        lines.append(f"end to end (model output vs float32): {', '.join(ends)}; target {_db(self.target_sqnr)} dB")
        lines.append("")
        lines.append(self.table(_SHOWN_ROWS))
        lines.append("SQNR: the layer's output in the low-precision run (error accumulated up to it); "
                     "own: the layer alone on float32 inputs")
        notes = [f"{entry.name or '(model)'} ({entry.format}): {entry.note}" for entry in self.layers if entry.note]
        for note in [*self.notes, *dict.fromkeys(notes)]:
            lines.append(f"note: {note}")
        if self.uncalled:
            lines.append(f"not called by this forward: {', '.join(self.uncalled)}")
        lines.append("")
        for name in self.formats:
            plan = self.plans[name]
            if not plan.names:
                lines.append(f"keep in float32 for {name}: nothing ({_db(plan.sqnr_before)} dB meets "
                             f"{_db(self.target_sqnr)} dB as it is)")
                continue
            verdict = "meets" if plan.met else "does NOT meet"
            lines.append(
                f"keep in float32 for {name}: {', '.join(n or '(model)' for n in plan.names)} -> end to end "
                f"{_db(plan.sqnr_before)} -> "
                f"{_db(plan.sqnr_after)} dB ({verdict} {_db(self.target_sqnr)} dB; {plan.evaluations} end-to-end runs)"
            )
            if plan.note:
                lines.append(f"  {plan.note}")
        if self.gradients:
            lines.append("")
            lines.append("gradients (loss_fn), worst first:")
            rows = [[g.name, g.format, _db(g.sqnr), _num(g.max_rel_error), f"{g.loss_scale:g}"]
                    for g in self.gradients[:_SHOWN_ROWS]]
            headers = ["parameter", "format", "SQNR dB", "max rel err", "loss scale"]
            lines.append(_table(headers, rows, right=range(2, 5)))
        for name in self.formats:
            if self.plans[name].names:
                lines.append("")
                lines.append(f"apply it ({name}):")
                lines.extend("    " + line if line else "" for line in self.code(name).splitlines())
        return "\n".join(lines)


