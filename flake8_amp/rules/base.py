"""What a rule is: one hazard, its metadata, and its detector."""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass
from typing import ClassVar, Iterator

from ..analysis.module_analysis import ModuleAnalysis


class Severity(str, enum.Enum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


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

    def check(self, analysis: ModuleAnalysis) -> Iterator[Finding]:
        raise NotImplementedError

    def finding(self, node: ast.AST, what: str, fix: str | None = None) -> Finding:
        return Finding(
            line=node.lineno,  # type: ignore[attr-defined]
            col=node.col_offset,  # type: ignore[attr-defined]
            code=self.code,
            what=what,
            fix=fix or self.fix,
        )

    @property
    def symbol(self) -> str:
        return f"amp-{self.name}"
