"""SARIF 2.1.0 logs of the findings, for GitHub code scanning and other SARIF viewers.

One builder, :func:`sarif_log`, behind both ``flake8 --format=sarif`` and ``flake8-amp check --format=sarif``
(both hand it flake8's ``Violation`` objects, so the two logs agree). What goes where:

- ``tool.driver``: flake8-amp, its version, and every rule, each with its code as ``id``, its name, its
  summary and why, a ``helpUri`` to its published doc, the doc itself as ``help.markdown``, and its severity
  as ``defaultConfiguration.level`` (HIGH -> error, MEDIUM -> warning, LOW -> note). A code reported
  alongside that is not a rule's (AMP000, or E999 and the like when other checks are selected) gets a
  descriptor with its id after them.
- ``results``: one per reported finding, in the order the text formats list them, with ``ruleId``,
  ``ruleIndex``, ``level``, the message flake8 prints, and the location: the file as a URI relative to the
  directory the run started in (``uriBaseId`` ``%SRCROOT%``, which ``originalUriBaseIds`` resolves), and the
  1-based line and column. flake8 counts an AMP finding's column in UTF-8 bytes (the ``ast`` offset plus
  one); SARIF counts characters, so the column is converted (``columnKind`` ``unicodeCodePoints``): the
  two agree on ASCII lines. Other tools' columns are passed through as flake8 prints them.
- ``partialFingerprints``: a hash of the code, the file and the flagged line's text (not its number), so
  that a viewer tracks a finding across commits that move it.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from flake8.violation import Violation

from . import __version__
from .json_report import DocumentReport, code_facts
from .rule_docs import DOCS_URL, REPOSITORY_URL, doc_url, read_doc, status
from .rules import ALL_RULES
from .rules.base import Rule, Severity

SARIF_VERSION = "2.1.0"
#: the OASIS schema (2.1.0 with errata 01) that tests/data/sarif-schema-2.1.0.json is a copy of
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SOURCE_ROOT = "%SRCROOT%"
LEVELS = {Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note"}
#: the key of the fingerprint in ``partialFingerprints``; the version part changes if its recipe does
FINGERPRINT = "flake8-amp/v1"

# A doc's links to its sibling pages ("[shared exemptions](exemptions.md)") are relative to rule_docs/.
_RELATIVE_DOC_LINK = re.compile(r"\]\(([\w.-]+\.md(?:#[\w-]*)?)\)")


def rule_descriptor(rule: Rule) -> dict[str, Any]:
    """A rule as SARIF's ``reportingDescriptor``."""
    url = doc_url(rule.code)
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.why},
        "helpUri": url,
        "help": {
            "text": f"{rule.summary}. Why: {rule.why}. Fix: {rule.fix}. Doc: {url}",
            "markdown": _RELATIVE_DOC_LINK.sub(rf"]({DOCS_URL}\1)", read_doc(rule.code)),
        },
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {
            "tags": ["pytorch", "mixed-precision", status(rule)],
            "severity": rule.severity.value,
            "pylint-symbol": rule.symbol,
        },
    }


def other_descriptor(code: str) -> dict[str, Any]:
    """A reported code that is not a rule's: AMP000 (a rule failed on the file), or another check's code."""
    facts = code_facts(code)
    descriptor: dict[str, Any] = {"id": code, "defaultConfiguration": {"level": _level(code)}}
    if facts.name:
        descriptor["name"] = facts.name
    if facts.url:
        descriptor["helpUri"] = facts.url
    return descriptor


def sarif_log(violations: Iterable[Violation], root: str) -> dict[str, Any]:
    """The SARIF log of one run: ``violations`` as flake8 reports them, paths relative to ``root``."""
    rules = [rule_descriptor(rule) for rule in ALL_RULES]
    index = {rule.code: position for position, rule in enumerate(ALL_RULES)}
    results = []
    occurrences: Counter[str] = Counter()
    for violation in violations:
        if violation.code not in index:
            index[violation.code] = len(rules)
            rules.append(other_descriptor(violation.code))
        location, line_text = _location(violation, root)
        key = "\0".join((violation.code, location["artifactLocation"]["uri"], line_text.strip()))
        occurrences[key] += 1  # the same code twice on equal lines of one file: told apart by their order
        results.append(
            {
                "ruleId": violation.code,
                "ruleIndex": index[violation.code],
                "level": _level(violation.code),
                "message": {"text": violation.text},
                "locations": [{"physicalLocation": location}],
                "partialFingerprints": {
                    FINGERPRINT: hashlib.sha256(f"{key}\0{occurrences[key]}".encode()).hexdigest()[:32]
                },
            }
        )
    run = {
        "tool": {
            "driver": {
                "name": "flake8-amp",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": REPOSITORY_URL,
                "rules": rules,
            }
        },
        "originalUriBaseIds": {SOURCE_ROOT: {"uri": Path(root).resolve().as_uri().rstrip("/") + "/"}},
        "columnKind": "unicodeCodePoints",
        "results": results,
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _level(code: str) -> str:
    severity = code_facts(code).severity
    if severity is not None:
        return LEVELS[severity]
    # E902 / E999: the file could not be read or parsed, so nothing was checked in it
    return "error" if code.startswith("E9") else "warning"


def _location(violation: Violation, root: str) -> tuple[dict[str, Any], str]:
    """The ``physicalLocation`` of a finding, and the text of its line ("" where there is none to read)."""
    path = os.path.abspath(violation.filename)
    try:
        relative = os.path.relpath(path, root)
    except ValueError:  # another drive than root's (Windows)
        relative = os.pardir
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        artifact = {"uri": Path(path).as_uri()}
    else:
        artifact = {"uri": quote(Path(relative).as_posix()), "uriBaseId": SOURCE_ROOT}
    location: dict[str, Any] = {"artifactLocation": artifact}
    if violation.line_number < 1:  # E902: the file could not be read, there is no line to point at
        return location, ""
    line_text = linecache.getline(violation.filename, violation.line_number)
    column = violation.column_number
    if line_text and violation.code.startswith("AMP"):
        column = len(line_text.encode("utf-8")[: column - 1].decode("utf-8", errors="ignore")) + 1
    location["region"] = {"startLine": violation.line_number, "startColumn": max(column, 1)}
    return location, line_text


class SarifReport(DocumentReport):
    """``flake8 --format=sarif`` (and ``check --format=sarif``): the run's findings as one SARIF log."""

    def after_init(self) -> None:
        super().after_init()
        # Paths are reported relative to where the run started, as flake8 names them.
        self.root = os.getcwd()

    def document(self) -> dict[str, Any]:
        return sarif_log(self.violations, self.root)
