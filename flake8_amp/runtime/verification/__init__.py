"""``runtime.verify(script)``: lint the script, run it under instrumentation, and say for each flagged line
what actually happened there.

verify is a front end like flake8 and pylint: flake8 finds the lines (:mod:`.lint`), the recorder
measures what ran at them (:mod:`.recorder`, :mod:`.attribution`), and each finding's rule judges
(``Rule.verify``, torch-free). The script runs in this interpreter as ``__main__``, and everything it
could change is put back afterwards (:mod:`.isolation`).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from ...rules import RULES_BY_CODE
from ..evidence import LineEvidence, Outcome, Verdict
from .deadline import Deadline
from ..cuda_emulation import CudaEmulation
from .attribution import ProjectFrames, Span, statement_spans
from .isolation import ScriptIsolation
from .lint import LintedFinding, LintError, lint_for_verify, project_files
from .recorder import Recorder, StopScript
from .report import NonfiniteOrigin, ScriptError, VerifiedFinding, VerifyReport

__all__ = ["DEVICES", "LintError", "VerifyReport", "verify"]

#: where verify runs the script: auto (the GPU when there is one, else CUDA emulated on the CPU), cuda (the
#: GPU; an error without one), emulated (CUDA emulated on the CPU, even beside a GPU), cpu (no emulation)
DEVICES = ("auto", "cuda", "emulated", "cpu")

# exceptions that are control flow, not errors
_NOT_ERRORS = (StopIteration, StopAsyncIteration, GeneratorExit, StopScript)


def verify(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    steps: int | None = None,
    timeout: float | None = None,
    device: str = "auto",
) -> VerifyReport:
    """Run ``script`` with ``sys.argv = [script, *args]`` and verify the AMP findings on it and on the
    project modules it imports. ``steps`` stops the run cleanly after that many optimizer steps,
    ``timeout`` after that many seconds. ``device`` is one of :data:`DEVICES`: by default the script runs
    on the GPU when there is one and with CUDA emulated on the CPU otherwise (``report.emulated``), so
    that a script written for CUDA meets CUDA's autocast there too. A script that raises is a result: its
    error is in ``report.script_error``. Raises FileNotFoundError for a missing script, ValueError for bad
    limits or device, LintError when flake8 cannot lint the files, and RuntimeError when this torch cannot
    be instrumented (the script does not run then)."""
    path = Path(script)
    if device not in DEVICES:
        raise ValueError(f"flake8-amp verify: device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("flake8-amp verify: device='cuda' needs a GPU and this machine has none; "
                         "device='auto' emulates CUDA on the CPU")
    emulate = device == "emulated" or (device == "auto" and not torch.cuda.is_available())
    if not path.is_file():
        raise FileNotFoundError(f"flake8-amp verify: no such script: {script}")
    if steps is not None and steps < 1:
        raise ValueError(f"flake8-amp verify: steps must be at least 1, not {steps}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"flake8-amp verify: timeout must be positive, not {timeout}")
    path = path.resolve()
    findings = lint_for_verify(project_files(path))

    watched: dict[tuple[str, int], LineEvidence] = {}
    probes: dict[tuple[str, int], set] = {}
    for finding in findings:
        site = (finding.path, finding.line)
        watched.setdefault(site, LineEvidence(finding.path, finding.line))
        rule = RULES_BY_CODE.get(finding.code)
        if rule is not None:
            probes.setdefault(site, set()).update(rule.probes)
    spans = _spans(findings)
    frames = ProjectFrames(path.parent)
    recorder = Recorder(frames, watched, probes, spans, steps)
    tracer = _LineTracer(recorder, watched, spans)

    script_error = None
    exit_status = None
    emulation = CudaEmulation(path.parent) if emulate else contextlib.nullcontext()
    with ScriptIsolation(str(path.parent)), emulation:
        sys.argv[:] = [str(path), *args]
        sys.path.insert(0, str(path.parent))
        try:
            recorder.install()
        except Exception as exc:  # a torch whose internals differ from what the recorder patches
            recorder.uninstall()
            raise RuntimeError(f"flake8-amp verify cannot instrument torch {torch.__version__}: "
                               f"{type(exc).__name__}: {exc}") from exc
        deadline = Deadline(timeout, recorder.time_is_up) if timeout else contextlib.nullcontext()
        try:
            sys.settrace(tracer)
            with deadline:
                runpy.run_path(str(path), run_name="__main__")
        except StopScript:
            pass
        except SystemExit as exc:
            exit_status = exc.code
        except BaseException as exc:  # noqa: BLE001 - a crash (or Ctrl-C) is the script's result
            script_error = _script_error(exc, frames, recorder)
        finally:
            sys.settrace(None)
            recorder.uninstall()
        try:
            recorder.flush()
        except Exception:  # noqa: BLE001 - values left by a crash mid-op
            pass

    report = VerifyReport(
        script=str(path),
        device=_device(recorder.devices),
        emulated=emulate,
        steps_run=recorder.step,
        skipped_steps=list(recorder.run.skipped_steps),
        scales=list(recorder.run.scales),
        script_error=script_error,
        stopped_by=recorder.stop_reason,
        exit_status=exit_status,
        recorder_error=recorder.failure,
    )
    flagged = set(watched)
    for origin in sorted(recorder.first_nonfinite.values(), key=lambda origin: origin["order"]):
        site = origin["site"]
        report.nonfinite_origins.append(NonfiniteOrigin(
            site[0] if site else None, site[1] if site else None, origin["op"], origin["phase"], origin["step"],
            origin["kind"], flagged=site in flagged, inputs_max_abs=origin["inputs"]))
    for finding in findings:
        evidence = watched[(finding.path, finding.line)]
        verdict = _judge(finding, evidence, recorder)
        report.findings.append(VerifiedFinding(finding.path, finding.line, finding.col, finding.code,
                                               finding.message, verdict.outcome, verdict.evidence,
                                               evidence.executions))
    return report


def _judge(finding: LintedFinding, evidence: LineEvidence, recorder: Recorder) -> Verdict:
    rule = RULES_BY_CODE.get(finding.code)
    if rule is None or rule.not_checkable:
        reason = rule.not_checkable if rule is not None else "a rule failure (AMP000) is not a runtime hazard"
        return Verdict(Outcome.NOT_CHECKABLE, reason or "")
    if not evidence.reached:
        return Verdict(Outcome.NOT_REACHED, "the line did not run")
    try:
        return rule.verify(evidence, recorder.run)
    except Exception as exc:  # noqa: BLE001 - one rule's judgement must not lose the others'
        return Verdict(Outcome.NOT_CHECKABLE, f"flake8-amp: {finding.code}'s verifier failed ({type(exc).__name__}: {exc})")


def _spans(findings: list[LintedFinding]) -> list[Span]:
    by_file: dict[str, list[tuple[int, int]]] = {}
    for finding in findings:
        by_file.setdefault(finding.path, []).append((finding.line, finding.col))
    spans = []
    for path, sites in by_file.items():
        spans.extend(statement_spans(path, sites).values())
    return spans


def _script_error(exc: BaseException, frames: ProjectFrames, recorder: Recorder) -> ScriptError:
    path = line = None
    for frame_summary in reversed(traceback.extract_tb(exc.__traceback__)):
        filename = os.path.realpath(frame_summary.filename)
        if filename.startswith(frames.root):
            path, line = filename, frame_summary.lineno
            break
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    site = (path, line)
    if path is not None and site in recorder.watched:
        recorder.record_error_at(exc, site)
    for evidence in recorder.watched.values():
        for error in evidence.errors:
            if error.type == type(exc).__name__ and error.message == message:
                error.caused_crash = True
    return ScriptError(type(exc).__name__, message, path, line)


def _device(used: set[str]) -> str:
    """Where the script's ops ran: the accelerator if any op ran on one (named), else the CPU."""
    if "cuda" in used:
        return f"cuda ({torch.cuda.get_device_name()})"
    accelerators = sorted(used - {"cpu", "meta"})
    return accelerators[0] if accelerators else "cpu"


class _LineTracer:
    """Counts how often each flagged line runs, and sees exceptions pass through flagged frames.

    Installed with ``sys.settrace``; a frame gets a local tracer only when its code object holds a
    flagged line (or is a flagged function), so the rest of the program runs untraced."""

    def __init__(self, recorder: Recorder, watched: dict[tuple[str, int], LineEvidence], spans: list[Span]) -> None:
        self.recorder = recorder
        functions = {span.site for span in spans if span.code_starts}  # they run when called, not defined
        self.lines_by_file: dict[str, set[int]] = {}
        for path, line in watched:
            if (path, line) not in functions:
                self.lines_by_file.setdefault(path, set()).add(line)
        # a flagged def runs when its function is called: keyed by the code's first line
        self.function_sites = {(span.path, first): span.site for span in spans for first in span.code_starts}
        self.code_lines: dict = {}

    def __call__(self, frame, event, arg):
        code = frame.f_code
        known = self.code_lines.get(code)
        if known is None:
            path = os.path.realpath(code.co_filename)
            wanted = self.lines_by_file.get(path, ())
            lines = {line for _start, _end, line in code.co_lines() if line in wanted} if wanted else set()
            called = self.function_sites.get((path, code.co_firstlineno))
            known = self.code_lines[code] = (path, lines, called)
        path, lines, called = known
        if called is not None and event == "call":
            evidence = self.recorder.watched[called]
            evidence.executions += 1
            self.recorder._touch(evidence)
        if not lines and called is None:
            return None
        return self._local

    def _local(self, frame, event, arg):
        if event == "line":
            path, lines, _called = self.code_lines[frame.f_code]
            if frame.f_lineno in lines:
                evidence = self.recorder.watched[(path, frame.f_lineno)]
                evidence.executions += 1
                self.recorder._touch(evidence)
        elif event == "exception" and not isinstance(arg[1], _NOT_ERRORS):
            path, lines, _called = self.code_lines[frame.f_code]
            if frame.f_lineno in lines:
                self.recorder.record_error_at(arg[1], (path, frame.f_lineno))
        return self._local
