"""What a rule is: one hazard, its metadata, and its detector."""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Iterator

from ..analysis.module_analysis import ModuleAnalysis
from ..fixes.edits import Fix, FixSafety
from ..runtime.evidence import LineEvidence, Probe, RunEvidence, Verdict

if TYPE_CHECKING:
    from ..fixes.source import FixableModule


class Severity(str, enum.Enum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


#: pylint's id for the flake8-amp checker: rule AMP0NN is message <category>51NN
PYLINT_CHECKER_ID = 51
#: severity -> pylint's message category (convention, not refactor, for LOW: IDEs show refactor
#: messages only as hints, outside the problems list)
PYLINT_CATEGORY = {Severity.HIGH: "E", Severity.MEDIUM: "W", Severity.LOW: "C"}

# Separators that the grouped report uses to take a message apart again.
FIX_SEPARATOR = " -> "
DOC_POINTER = " (flake8-amp explain {code})"


@dataclass(frozen=True)
class Finding:
    line: int
    col: int
    code: str
    what: str
    fix: str
    #: the node found, for the exemption policy; the engine drops it before findings leave it
    node: ast.AST | None = field(default=None, compare=False, repr=False)

    def detached(self) -> "Finding":
        return replace(self, node=None) if self.node is not None else self

    @property
    def message(self) -> str:
        """``AMP001 <what was found> -> <the fix> (flake8-amp explain AMP001)``"""
        return f"{self.code} {self.what}{FIX_SEPARATOR}{self.fix}{DOC_POINTER.format(code=self.code)}"


class Rule:
    """One mixed-precision hazard. Subclasses set the metadata and implement :meth:`check`."""

    code: ClassVar[str]
    #: pylint symbol without the ``amp-`` prefix, e.g. ``manual-half-cast``
    name: ClassVar[str]
    severity: ClassVar[Severity]
    #: one line for ``flake8-amp rules``
    summary: ClassVar[str]
    #: one line saying what goes wrong, for the grouped report
    why: ClassVar[str]
    #: the default fix, one line
    fix: ClassVar[str]
    #: opinionated rules are off unless selected (flake8's extend_default_ignore)
    default_enabled: ClassVar[bool] = True
    #: a rule whose findings on held-out code were too often wrong (benchmarks/precision.md, "Stable and
    #: preview rules"): run only with ``--amp-preview`` (and always by verify, which can confirm them)
    preview: ClassVar[bool] = False

    # Which parts of the exemption policy (flake8_amp.analysis.exemptions) apply to the rule:
    #: quiet in test code (False for rules about the API itself: tests break on it too)
    exempt_in_tests: ClassVar[bool] = True
    #: the hazard is in training: quiet in evaluation-only code (no_grad, inference_mode)
    training_only: ClassVar[bool] = False
    #: the hazard needs low precision: quiet on the float32 arm of a precision switch
    low_precision_hazard: ClassVar[bool] = True
    #: a cast the rule flags is deliberate under a condition on a precision setting
    deliberate_when_configured: ClassVar[bool] = False
    #: a float16-range hazard: quiet in bfloat16 code (bfloat16 has float32's range)
    quiet_in_bf16: ClassVar[bool] = False

    # The runtime verifier (``flake8-amp verify``): the runtime measures, the rule judges, torch-free.
    #: measurements verify takes at the rule's lines, beyond op counts, dtypes, errors and NaN/Inf
    probes: ClassVar[frozenset[Probe]] = frozenset()
    #: why nothing about the hazard can be observed while the script runs; set instead of :meth:`verify`
    not_checkable: ClassVar[str | None] = None

    # The automatic fix (``flake8-amp fix``), where the rule has one: :meth:`rewrite` builds it for a finding.
    #: the safety of the rule's fix in the common case (None: the rule has no automatic fix); one finding's
    #: fix may be less safe than this, and :attr:`fix_safety_reason` says when
    fix_safety: ClassVar[FixSafety | None] = None
    #: one line, what the fix does: the first sentence of the doc's "Fix safety" section
    fix_summary: ClassVar[str] = ""
    #: why the fix is safe or unsafe, and when a finding's fix differs or is not offered (the section's rest)
    fix_safety_reason: ClassVar[str] = ""
    #: the torch release each spelling the fix writes needs, where that varies with the project's oldest torch
    fix_min_torch: ClassVar[str | None] = None

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        raise NotImplementedError

    def verify(self, evidence: LineEvidence, run: RunEvidence) -> Verdict:
        """What happened at a flagged line that ran: confirmed (the hazard happened, past the threshold
        the rule's doc states) or not_observed (with the margins measured)."""
        raise NotImplementedError(f"{self.code} has no runtime verifier")

    def rewrite(self, finding: Finding, module: "FixableModule") -> Fix | None:
        """The edits that fix ``finding`` in ``module`` (the engine's finding, its node kept), or None where
        this finding has no automatic fix. Only rules with a :attr:`fix_safety` are asked."""
        return None

    def finding(self, node: ast.AST, what: str, fix: str | None = None) -> Finding:
        return Finding(
            line=node.lineno,  # type: ignore[attr-defined]
            col=node.col_offset,  # type: ignore[attr-defined]
            code=self.code,
            what=what,
            fix=fix or self.fix,
            node=node,
        )

    @property
    def symbol(self) -> str:
        """pylint's message symbol, ``amp-manual-half-cast``."""
        return f"amp-{self.name}"

    @property
    def pylint_id(self) -> str:
        """pylint's message id, ``E5101`` for a HIGH AMP001."""
        number = int(self.code[3:])
        if not 0 < number < 100:
            raise ValueError(f"flake8-amp: rule code {self.code} does not fit pylint's <category>{PYLINT_CHECKER_ID}NN ids")
        return f"{PYLINT_CATEGORY[self.severity]}{PYLINT_CHECKER_ID}{number:02d}"
