"""verify's report: the text a person reads, the JSON a tool reads, and SARIF for code scanning."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ... import __version__
from ..formats import json_safe
from ..evidence import Outcome, fmt

_TEXT_VERDICT = {
    Outcome.CONFIRMED: "CONFIRMED",
    Outcome.NOT_OBSERVED: "NOT OBSERVED",
    Outcome.NOT_REACHED: "NOT REACHED",
    Outcome.NOT_CHECKABLE: "NOT CHECKABLE",
}
_SARIF_LEVEL = {"HIGH": "error", "MEDIUM": "warning", "LOW": "note"}


@dataclass
class VerifiedFinding:
    path: str
    line: int
    col: int
    code: str
    message: str
    verdict: Outcome
    evidence: str
    executions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
            "verdict": self.verdict.value,
            "evidence": self.evidence,
            "executions": self.executions,
        }


@dataclass
class NonfiniteOrigin:
    path: str | None
    line: int | None
    op: str
    phase: str
    step: int
    kind: str
    flagged: bool = False
    #: max |x| of each floating input (forward: the op's tensors; backward: the gradients flowing in)
    inputs_max_abs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "op": self.op, "phase": self.phase, "step": self.step,
                "kind": self.kind, "inputs_max_abs": json_safe(list(self.inputs_max_abs))}

    def inputs_text(self) -> str:
        if not self.inputs_max_abs:
            return ""
        return f"; inputs max |x| {', '.join(fmt(value) for value in self.inputs_max_abs)}"


@dataclass
class ScriptError:
    type: str
    message: str
    path: str | None
    line: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "path": self.path, "line": self.line}


@dataclass
class VerifyReport:
    script: str
    device: str
    emulated: bool
    steps_run: int
    findings: list[VerifiedFinding] = field(default_factory=list)
    nonfinite_origins: list[NonfiniteOrigin] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    script_error: ScriptError | None = None
    #: why the run ended early: "steps" (--steps reached), "timeout", or None (the script finished)
    stopped_by: str | None = None
    exit_status: int | str | None = None  # the script's sys.exit() value, if it called it
    #: why verify stopped measuring part-way (its own failure; the script ran on untouched), else None
    recorder_error: str | None = None

    @property
    def confirmed(self) -> list[VerifiedFinding]:
        return [f for f in self.findings if f.verdict is Outcome.CONFIRMED]

    @property
    def exit_code(self) -> int:
        """1 when any finding is confirmed, else 0 (the CLI's exit code)."""
        return 1 if self.confirmed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "device": self.device,
            "emulated": self.emulated,
            "steps_run": self.steps_run,
            "findings": [f.to_dict() for f in self.findings],
            "nonfinite_origins": [o.to_dict() for o in self.nonfinite_origins],
            "scaler": {"skipped_steps": list(self.skipped_steps), "scales": list(self.scales)},
            "script_error": self.script_error.to_dict() if self.script_error else None,
            "recorder_error": self.recorder_error,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        lines = []
        if self.emulated:
            lines.append("CUDA emulated on the CPU: the script saw one CUDA device, and autocast('cuda') cast each op "
                         "as CUDA autocast does (tensors themselves stayed on the CPU).")
        for finding in self.findings:
            lines.append(f"{_display(finding.path)}:{finding.line}:{finding.col}: {finding.code} {_what(finding.message)}")
            lines.append(f"  {_TEXT_VERDICT[finding.verdict]:<12} {finding.evidence}")
        if not self.findings:
            lines.append("no AMP findings to verify")
        for origin in self.nonfinite_origins:
            where = f"{_display(origin.path)}:{origin.line}" if origin.path else "outside the project's files"
            flagged = "a flagged line" if origin.flagged else "not a flagged line"
            first = "First non-finite value" if origin.phase == "forward" else "First non-finite gradient"
            lines.append(f"{first}: {where} {origin.op} ({origin.phase}, step {origin.step}, "
                         f"{'NaN' if origin.kind == 'nan' else 'Inf'}{origin.inputs_text()}) -- {flagged}")
        if self.scales:
            trajectory = f"scale {fmt(self.scales[0])} -> {fmt(self.scales[-1])}"
            if self.skipped_steps:
                lines.append(f"GradScaler: skipped steps {', '.join(map(str, self.skipped_steps[:20]))}"
                             f"{' ...' if len(self.skipped_steps) > 20 else ''} ({trajectory})")
            else:
                lines.append(f"GradScaler: no skipped steps ({trajectory})")
        stopped = {"steps": " (stopped at the step limit)", "timeout": " (stopped at the time limit)"}
        ran = f"{self.steps_run} optimizer step{'s' if self.steps_run != 1 else ''}"
        if self.script_error:
            error = self.script_error
            where = f" at {_display(error.path)}:{error.line}" if error.path else ""
            lines.append(f"Script raised {error.type}{where}: {error.message}")
        if self.recorder_error:
            lines.append(f"verify stopped measuring at {self.recorder_error} (the script ran on; verdicts after "
                         "that point are incomplete: please report it)")
        device = f"{self.device}{' (CUDA emulated)' if self.emulated else ''}"
        lines.append(f"Ran {ran} on {device}{stopped.get(self.stopped_by or '', '')}.")
        return "\n".join(lines)

    def to_sarif(self) -> dict[str, Any]:
        from ...rules import RULES_BY_CODE

        codes = sorted({f.code for f in self.findings})
        rules = []
        for code in codes:
            rule = RULES_BY_CODE.get(code)
            entry: dict[str, Any] = {"id": code}
            if rule is not None:
                entry.update(
                    name=rule.symbol,
                    shortDescription={"text": rule.summary},
                    fullDescription={"text": rule.why},
                    defaultConfiguration={"level": _SARIF_LEVEL[rule.severity.value]},
                    help={"text": f"flake8-amp explain {code}"},
                )
            rules.append(entry)
        results = []
        for finding in self.findings:
            rule = RULES_BY_CODE.get(finding.code)
            results.append({
                "ruleId": finding.code,
                "ruleIndex": codes.index(finding.code),
                "level": _SARIF_LEVEL[rule.severity.value] if rule else "warning",
                "message": {"text": f"{_what(finding.message)} [{finding.verdict.value}: {finding.evidence}]"},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": _uri(finding.path)},
                    "region": {"startLine": finding.line, "startColumn": finding.col},
                }}],
                "properties": {"verdict": finding.verdict.value, "evidence": finding.evidence,
                               "executions": finding.executions},
            })
        return {
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {"name": "flake8-amp verify", "version": __version__,
                                    "informationUri": "https://github.com/flake8-amp/flake8-amp", "rules": rules}},
                "results": results,
                "properties": {"steps_run": self.steps_run, "device": self.device, "emulated": self.emulated},
            }],
        }


def _what(message: str) -> str:
    """The finding's what-was-found part (the fix and the doc pointer are in the lint output)."""
    return message.split(" -> ", 1)[0]


def _display(path: str | None) -> str:
    if not path:
        return "?"
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _uri(path: str) -> str:
    shown = _display(path)
    return shown.replace(os.sep, "/") if not os.path.isabs(shown) else "file://" + shown
