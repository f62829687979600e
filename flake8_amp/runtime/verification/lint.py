"""Which lines verify must check: flake8's AMP findings on the script and the project modules it imports.

flake8 itself does the linting, in a subprocess from the caller's working directory, so the findings are
the ones ``flake8`` prints there: the same configuration files, amp-precision, ignores,
per-file-ignores and noqa comments. The subprocess never imports torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SEPARATOR = "\x1f"
_FORMAT = _SEPARATOR.join(["%(path)s", "%(row)d", "%(col)d", "%(code)s", "%(text)s"])


@dataclass(frozen=True)
class LintedFinding:
    path: str  # absolute
    line: int
    col: int  # 1-based, as flake8 prints it
    code: str
    message: str  # "<what> -> <fix> (flake8-amp explain CODE)", without the code


class LintError(RuntimeError):
    """flake8 could not lint the files (a bad configuration, a missing flake8)."""


def project_files(script: Path) -> list[Path]:
    """The script and the modules it imports, directly or through each other, that live in its folder
    (the first entry of ``sys.path`` when Python runs a script), found without importing anything."""
    root = script.parent
    seen: dict[Path, None] = {script: None}
    queue = [script]
    while queue:
        current = queue.pop()
        try:
            tree = ast.parse(current.read_bytes(), filename=str(current))
        except (SyntaxError, ValueError, OSError):
            continue
        for name in _imported_names(tree, current, root):
            found = _module_file(root, name)
            if found is not None and found not in seen:
                seen[found] = None
                queue.append(found)
    return list(seen)


def _imported_names(tree: ast.Module, current: Path, root: Path) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = current.parent
                for _ in range(node.level - 1):
                    package = package.parent
                try:
                    prefix = ".".join(package.relative_to(root).parts)
                except ValueError:
                    continue
                base = ".".join(part for part in (prefix, node.module or "") if part)
            else:
                base = node.module or ""
            if base:
                names.append(base)
            names.extend(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return names


def _module_file(root: Path, dotted: str) -> Path | None:
    parts = dotted.split(".")
    found = None
    for depth in range(1, len(parts) + 1):  # a package's __init__ runs on the way to its submodule
        base = root.joinpath(*parts[:depth])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                found = candidate.resolve()
                break
        else:
            return found
    return found


def lint_for_verify(files: list[Path]) -> list[LintedFinding]:
    """Run ``flake8`` over the files, preview rules included, and keep its AMP findings (AMP000 included: a
    rule that failed)."""
    # Preview rules too: a finding that needs the program as it runs is what verify can confirm or clear.
    command = [sys.executable, "-m", "flake8", f"--format={_FORMAT}", "--exit-zero", "--amp-preview=on"]
    command += map(str, files)
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LintError(f"could not run flake8: {exc}") from exc
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise LintError(f"flake8 failed: {detail[-1] if detail else f'exit code {completed.returncode}'}")
    findings = []
    for row in completed.stdout.splitlines():
        fields = row.split(_SEPARATOR)
        if len(fields) != 5 or not fields[3].startswith("AMP"):
            continue
        path, line, col, code, text = fields
        findings.append(LintedFinding(str(Path(path).resolve()), int(line), int(col), code, text))
    findings.sort(key=lambda f: (f.path, f.line, f.col, f.code))
    return findings
