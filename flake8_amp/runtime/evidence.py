"""What ``verify`` saw at a flagged line, and the verdict a rule draws from it. Pure Python: no torch.

The runtime (``flake8_amp.runtime.verify``) measures; each rule judges. A rule's ``verify`` method reads a
:class:`LineEvidence` (what ran at the finding's line, and at the lines of the objects it created) and the
:class:`RunEvidence` (the whole run: steps, GradScaler, autocast) and returns a :class:`Verdict`. Keeping
this module free of torch lets the rules, which the linter imports, own their runtime judgement too.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class Outcome(str, enum.Enum):
    CONFIRMED = "confirmed"
    NOT_OBSERVED = "not_observed"
    NOT_REACHED = "not_reached"
    NOT_CHECKABLE = "not_checkable"


class Probe(str, enum.Enum):
    """Extra measurements a rule asks for at its lines (the runtime always counts ops, dtypes and errors)."""

    #: casts down to float16/bfloat16: how many values overflowed, how many non-zero values became 0
    CAST = "cast"
    #: ops fed float16/bfloat16: the same op recomputed in float32 on the same inputs, and the difference
    RECOMPUTE = "recompute"
    #: binary_cross_entropy: probabilities that saturated to exactly 0 or 1
    SATURATION = "saturation"
    #: gradients a backward wrote in float16/bfloat16: how many landed below the smallest normal
    GRADIENT_RANGE = "gradient_range"
    #: optimizer steps over low-precision parameters: how many updates vanished in rounding
    UPDATES = "updates"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    evidence: str


@dataclass
class CastStats:
    """A cast from a wider float to float16/bfloat16, summed over its runs."""

    target: str
    values: int = 0
    nonzero: int = 0
    flushed: int = 0  # non-zero values that became 0
    overflowed: int = 0  # finite values that became inf
    max_abs: float = 0.0
    format_max: float = math.inf


@dataclass
class RecomputeStats:
    """An op that ran on float16/bfloat16 inputs, against the same op in float32 on the same values."""

    dtype: str
    runs: int = 0
    max_relative_error: float = 0.0  # max |low - ref| / max |ref|, over the runs
    flushed: int = 0  # elements non-zero in float32 and 0 in low precision
    nonzero: int = 0
    overflowed: int = 0  # elements finite in float32 and inf/NaN in low precision


@dataclass
class OpRecord:
    """One torch op (by name) at one line, summed over its calls."""

    op: str
    calls: int = 0
    under_autocast: int = 0  # calls while autocast was enabled on the op's device
    input_dtypes: set[str] = field(default_factory=set)
    output_dtypes: set[str] = field(default_factory=set)
    max_abs_output: float = 0.0
    casts: list[CastStats] = field(default_factory=list)
    recompute: RecomputeStats | None = None
    saturated: int = 0  # SATURATION: probabilities at exactly 0 or 1 in float16/bfloat16
    probabilities: int = 0
    saturation_margin: float = math.inf  # SATURATION: the closest a float16/bfloat16 probability came to 0 or 1
    low_precision_autocast_dtypes: set[str] = field(default_factory=set)


@dataclass
class ErrorRecord:
    type: str
    message: str
    step: int
    caused_crash: bool = False


@dataclass
class ClipRecord:
    """A clip_grad_norm_ / clip_grad_value_ call."""

    total_norm: float | None  # None for clip_grad_value_
    max_value: float  # max_norm or clip_value
    scale: float | None  # the GradScaler's scale while the gradients were still scaled, else None
    step: int


@dataclass
class GradientRecord:
    """GRADIENT_RANGE: float16/bfloat16 gradients written by backward nodes created at the line."""

    values: int = 0
    nonzero: int = 0
    subnormal: int = 0  # 0 < |g| < smallest normal: already losing bits, next to flushing
    nonfinite: int = 0
    min_abs_nonzero: float = math.inf


@dataclass
class UpdateRecord:
    """UPDATES: optimizer steps over float16/bfloat16 parameters."""

    steps: int = 0
    moved: int = 0  # parameter elements with a non-zero gradient
    vanished: int = 0  # ... whose value did not change in the step
    nonfinite_after: int = 0


@dataclass
class ScalerCall:
    """A GradScaler method call (scale, unscale_, step, update) or a backward / optimizer step."""

    kind: str  # "scale", "unscale_", "step", "update", "backward", "optimizer_step", "save"
    step: int
    #: backward: whether the tensor came from scaler.scale(); optimizer_step/step: gradients still scaled
    scaled: bool | None = None
    #: the GradScaler's scale at the call (save: after the last update(), None before the first)
    scale: float | None = None
    under_autocast: bool | None = None
    #: save: whether the saved object holds a GradScaler's state; update: whether a step came before it
    detail: bool | None = None


@dataclass
class LineEvidence:
    """Everything verify saw at one source line (and, for a line that creates an object, at its uses)."""

    path: str
    line: int
    executions: int = 0  # times the line ran (line events of the project's frames)
    first_step: int | None = None
    last_step: int | None = None
    ops: dict[str, OpRecord] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    clips: list[ClipRecord] = field(default_factory=list)
    calls: list[ScalerCall] = field(default_factory=list)
    gradients: GradientRecord = field(default_factory=GradientRecord)
    updates: UpdateRecord = field(default_factory=UpdateRecord)
    nonfinite_produced: list[tuple[str, str, int, str]] = field(default_factory=list)  # (op, phase, step, kind)

    @property
    def reached(self) -> bool:
        return bool(self.executions or self.ops or self.errors or self.calls or self.clips)

    def steps_text(self) -> str:
        if self.first_step is None:
            return f"{self.executions} runs"
        span = f"step {self.first_step}" if self.first_step == self.last_step else f"steps {self.first_step}-{self.last_step}"
        return f"{span}, {self.executions} runs"

    def calls_of(self, kind: str) -> list[ScalerCall]:
        return [call for call in self.calls if call.kind == kind]


@dataclass
class RunEvidence:
    """The whole run, for rules whose hazard is a property of the run (a scaler that never had work)."""

    steps_run: int = 0
    device: str = "cpu"
    scaler_enabled: bool = False
    scales: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    autocast_dtypes: set[str] = field(default_factory=set)  # low-precision dtypes autocast ran ops in
    #: every deprecation warning of the run: (path, line, text) at the project line it points at
    deprecations: list[tuple[str | None, int | None, str]] = field(default_factory=list)


def fmt(value: float | None) -> str:
    """A number for a verdict's evidence: 3 significant digits, inf/nan spelled out."""
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.1e}"


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2g}%" if whole else "0%"


def crashed_here(evidence: LineEvidence) -> Verdict | None:
    """An exception raised at the line is the hazard happening, for rules whose hazard is an error."""
    if not evidence.errors:
        return None
    error = evidence.errors[0]
    crash = " (the script stopped here)" if error.caused_crash else ""
    return Verdict(Outcome.CONFIRMED, f"step {error.step}: {error.type} \"{error.message}\"{crash}")


def nonfinite_here(evidence: LineEvidence) -> Verdict | None:
    """A NaN/Inf produced at the line (from finite inputs)."""
    if not evidence.nonfinite_produced:
        return None
    op, phase, step, kind = evidence.nonfinite_produced[0]
    more = f" ({len(evidence.nonfinite_produced)} times)" if len(evidence.nonfinite_produced) > 1 else ""
    return Verdict(Outcome.CONFIRMED, f"step {step}: {op} produced {_KIND[kind]} in {phase}{more}")


_KIND = {"nan": "NaN", "inf": "Inf"}
#: a cast or a low-precision op "lost values" when at least this fraction of non-zero values became 0
FLUSH_THRESHOLD = 1e-3
#: ... or "lost precision" when it differs from float32 by more than this, relative to the largest value
RELATIVE_ERROR_THRESHOLD = 1e-2


def judge_casts(evidence: LineEvidence) -> Verdict:
    """A cast to float16/bfloat16: confirmed when a finite value overflowed or at least FLUSH_THRESHOLD
    of the non-zero values became 0; otherwise the headroom to the format's maximum."""
    casts = [cast for record in evidence.ops.values() for cast in record.casts]
    if not casts:
        return Verdict(Outcome.NOT_OBSERVED, f"{evidence.steps_text()}: no float32 value was cast to float16/bfloat16 here")
    values = sum(c.values for c in casts)
    nonzero = sum(c.nonzero for c in casts)
    flushed = sum(c.flushed for c in casts)
    overflowed = sum(c.overflowed for c in casts)
    max_abs = max(c.max_abs for c in casts)
    format_max = min(c.format_max for c in casts)
    headroom = "" if not max_abs or math.isnan(max_abs) else f" (headroom {fmt(format_max / max_abs)}x)"
    parts = []
    if overflowed:
        parts.append(f"{overflowed} finite values became inf")
    parts.append(f"{pct(flushed, nonzero)} of non-zero values became 0")
    text = f"{evidence.steps_text()}: {', '.join(parts)}, max |x| {fmt(max_abs)}{headroom}"
    if overflowed or (nonzero and flushed / nonzero >= FLUSH_THRESHOLD):
        return Verdict(Outcome.CONFIRMED, text)
    return Verdict(Outcome.NOT_OBSERVED, f"{text} over {values} values")


def judge_numeric(evidence: LineEvidence, ops: frozenset[str] | None = None) -> Verdict:
    """A line whose hazard is a number: an error or a NaN/Inf produced there confirms it; otherwise the
    ops that ran on float16/bfloat16 values are compared with float32 on the same inputs (RECOMPUTE):
    overflow, at least FLUSH_THRESHOLD of non-zero results flushed to 0, or a relative error above
    RELATIVE_ERROR_THRESHOLD confirms it."""
    verdict = crashed_here(evidence) or nonfinite_here(evidence)
    if verdict is not None:
        return verdict
    records = [r for name, r in evidence.ops.items() if ops is None or name in ops]
    compared = [r for r in records if r.recompute is not None and r.recompute.runs]
    if not compared:
        dtypes = sorted({d for r in records for d in r.input_dtypes}) or ["no tensor"]
        return Verdict(Outcome.NOT_OBSERVED,
                       f"{evidence.steps_text()}: never ran on float16/bfloat16 values (inputs: {', '.join(dtypes)})")
    worst = max(compared, key=lambda r: r.recompute.max_relative_error)  # type: ignore[union-attr]
    stats = worst.recompute
    assert stats is not None
    overflowed = sum(r.recompute.overflowed for r in compared)  # type: ignore[union-attr]
    flushed = sum(r.recompute.flushed for r in compared)  # type: ignore[union-attr]
    nonzero = sum(r.recompute.nonzero for r in compared)  # type: ignore[union-attr]
    text = (f"{evidence.steps_text()}: {worst.op} in {stats.dtype} vs float32: relative error "
            f"{fmt(stats.max_relative_error)}, {pct(flushed, nonzero)} of non-zero results became 0")
    if overflowed:
        return Verdict(Outcome.CONFIRMED, f"{text}, {overflowed} overflowed to inf/NaN")
    if (nonzero and flushed / nonzero >= FLUSH_THRESHOLD) or stats.max_relative_error > RELATIVE_ERROR_THRESHOLD:
        return Verdict(Outcome.CONFIRMED, text)
    return Verdict(Outcome.NOT_OBSERVED, f"{text} (thresholds: {RELATIVE_ERROR_THRESHOLD:g} relative, "
                                         f"{FLUSH_THRESHOLD:.1%} flushed)")
