"""``flake8 --format=amp``: findings grouped by file, with severity, why and fix, then a summary.

    File: model.py
    Line 45: [HIGH] AMP001 .half() cast of 'x' feeds autocast code
      -> a manual cast bypasses autocast's per-op precision choices; ...
      -> fix: remove the cast and run the forward pass under torch.autocast(...)

    3 findings in 1 file: 2 HIGH, 1 MEDIUM, 0 LOW
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flake8.formatting.base import BaseFormatter

from .rules import RULES_BY_CODE
from .rules.base import DOC_POINTER, FIX_SEPARATOR, Severity


def split_message(code: str, text: str) -> tuple[str, str | None]:
    """(what, fix) from a flake8-amp message body ``<what> -> <fix> (flake8-amp explain CODE)``."""
    pointer = DOC_POINTER.format(code=code)
    if text.endswith(pointer):
        text = text[: -len(pointer)]
    what, separator, fix = text.partition(FIX_SEPARATOR)
    return what, (fix if separator else None)


class GroupedReport(BaseFormatter):
    """Findings grouped by file. flake8 hands errors over file by file (also with --jobs), in order."""

    def after_init(self) -> None:
        self._current_file: str | None = None
        self._severities: Counter[str] = Counter()
        self._files: set[str] = set()
        self._total = 0

    def format(self, error: Any) -> str | None:
        lines = []
        if error.filename != self._current_file:
            if self._current_file is not None:
                lines.append("")
            lines.append(f"File: {error.filename}")
            self._current_file = error.filename
        self._files.add(error.filename)
        self._total += 1
        rule = RULES_BY_CODE.get(error.code)
        if rule is None:
            if error.code.startswith("AMP"):  # AMP000: a rule failed on this file
                what, fix = split_message(error.code, error.text)
                lines.append(f"Line {error.line_number}: {error.code} {what}")
                lines.extend([f"  -> {fix}"] if fix else [])
            else:  # another plugin's code selected alongside AMP (E501, F401 ...): no severity or fix to give
                lines.append(f"Line {error.line_number}: {error.code} {error.text}")
            return "\n".join(lines)
        self._severities[rule.severity.value] += 1
        what, fix = split_message(error.code, error.text)
        lines.append(f"Line {error.line_number}: [{rule.severity.value}] {error.code} {what}")
        lines.append(f"  -> {rule.why}")
        lines.append(f"  -> fix: {fix or rule.fix}")
        return "\n".join(lines)

    def stop(self) -> None:
        if self._total == 0:
            self._write("No AMP findings.")
        else:
            counts = ", ".join(f"{self._severities[s.value]} {s.value}" for s in Severity)
            others = self._total - sum(self._severities.values())
            extra = f", {others} other" if others else ""
            noun = "finding" if self._total == 1 else "findings"
            files = f"{len(self._files)} file" + ("" if len(self._files) == 1 else "s")
            self._write(f"\n{self._total} {noun} in {files}: {counts}{extra}")
        super().stop()
