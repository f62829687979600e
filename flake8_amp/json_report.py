"""``flake8-amp check --format=json``: every reported finding as one JSON array, for scripts and CI.

The shape (pinned by tests/test_check_cli.py), one object per finding, in the order the text formats list them::

    [
      {
        "path": "src/train.py",        # the file, named as flake8 names it
        "line": 57,                    # 1-based
        "column": 16,                  # 1-based, the column flake8's default format prints
        "code": "AMP002",
        "message": "BCELoss is unsafe to autocast -> use nn.BCEWithLogitsLoss ... (flake8-amp explain AMP002)",
        "severity": "HIGH",            # HIGH / MEDIUM / LOW; null for a code that is not flake8-amp's (E999)
        "rule": "unsafe-binary-cross-entropy",  # the rule's name (pylint's symbol without "amp-"); null likewise
        "url": "https://.../rule_docs/AMP002.md"  # the rule's doc; null likewise
      }
    ]

An empty run prints ``[]``. The document is written when the run ends, so that it is one valid JSON value
whatever ``--jobs`` says; ``--statistics`` adds nothing to it.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from flake8.formatting.base import BaseFormatter
from flake8.statistics import Statistics
from flake8.violation import Violation

from .engine import INTERNAL_ERROR_CODE
from .rule_docs import doc_url
from .rules import RULES_BY_CODE
from .rules.base import Severity


class CodeFacts(NamedTuple):
    """What flake8-amp knows about a reported code, for the machine-readable reports."""

    #: the rule's name (``manual-half-cast``); None for another tool's code
    name: str | None
    severity: Severity | None
    #: the rule's published doc
    url: str | None


#: AMP000 is no rule of the registry: it says that a rule failed on the file (rule_docs/AMP000.md)
_INTERNAL_ERROR = CodeFacts("internal-error", Severity.HIGH, doc_url(INTERNAL_ERROR_CODE))


def code_facts(code: str) -> CodeFacts:
    """Name, severity and doc of an AMP code; all None for a code flake8-amp does not own (E999, F401)."""
    rule = RULES_BY_CODE.get(code)
    if rule is not None:
        return CodeFacts(rule.name, rule.severity, doc_url(code))
    if code == INTERNAL_ERROR_CODE:
        return _INTERNAL_ERROR
    return CodeFacts(None, None, None)


def finding_record(error: Violation) -> dict[str, Any]:
    """One finding as the JSON report shows it."""
    facts = code_facts(error.code)
    return {
        "path": error.filename,
        "line": error.line_number,
        "column": error.column_number,
        "code": error.code,
        "message": error.text,
        "severity": facts.severity.value if facts.severity else None,
        "rule": facts.name,
        "url": facts.url,
    }


class DocumentReport(BaseFormatter):
    """A formatter whose output is one JSON document written at the end of the run (flake8 hands findings
    over one at a time; a document written piecemeal would not parse). Subclasses say what the document is."""

    def after_init(self) -> None:
        self.violations: list[Violation] = []

    def start(self) -> None:
        """Truncate ``--output-file`` rather than append to it as flake8's text formats do: two documents
        in one file would not parse."""
        if self.filename:
            os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
            self.output_fd = open(self.filename, "w", encoding="utf-8")

    def handle(self, error: Violation) -> None:
        self.violations.append(error)

    def format(self, error: Violation) -> str | None:
        """Nothing per finding: :meth:`handle` collects them and :meth:`stop` writes the document."""
        return None

    def show_statistics(self, statistics: Statistics) -> None:
        """Nothing: text lines before the document would make the output unparseable."""

    def show_benchmarks(self, benchmarks: list[tuple[str, float]]) -> None:
        """Nothing, for the same reason."""

    def document(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        self._write(json.dumps(self.document(), indent=2))
        super().stop()


class JsonReport(DocumentReport):
    """The findings as a JSON array of :func:`finding_record` objects."""

    def document(self) -> list[dict[str, Any]]:
        return [finding_record(error) for error in self.violations]
