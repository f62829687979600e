"""What a fix is: edits of a module's text, and how safe applying them is."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable


class FixSafety(str, enum.Enum):
    """How ``flake8-amp fix`` may apply a fix (ruff's applicability): a safe fix keeps what the code does on
    every torch the project supports; an unsafe one may change it, and runs only with ``--unsafe-fixes``."""

    SAFE = "safe"
    UNSAFE = "unsafe"


@dataclass(frozen=True, order=True)
class Edit:
    """Replace ``text[start:end]`` of the module (character offsets) with ``replacement``; an insertion
    where ``start == end``."""

    start: int
    end: int
    replacement: str

    def conflicts_with(self, other: "Edit") -> bool:
        """Two different edits of overlapping text, or two insertions at one place (their order would be
        a guess). Identical edits do not conflict: two findings may need the same one."""
        if self == other:
            return False
        if self.start == self.end == other.start == other.end:
            return True
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Fix:
    """The edits that fix one finding, applied all together or not at all."""

    edits: tuple[Edit, ...]
    safety: FixSafety = FixSafety.SAFE


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """``text`` with non-conflicting ``edits`` applied, from the last to the first so that offsets hold."""
    for edit in sorted(set(edits), key=lambda e: (e.start, e.end), reverse=True):
        text = text[: edit.start] + edit.replacement + text[edit.end :]
    return text
