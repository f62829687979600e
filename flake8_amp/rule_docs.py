"""Finding the rule docs, installed (inside the wheel) or in a source checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def docs_directory() -> Path:
    """``flake8_amp/rule_docs`` in an installed wheel; the repository's ``rule_docs/`` in a checkout."""
    packaged = Path(str(resources.files("flake8_amp"))) / "rule_docs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "rule_docs"


def doc_path(code: str) -> Path:
    return docs_directory() / f"{code.upper()}.md"


def read_doc(code: str) -> str:
    """The markdown doc of a rule (``AMP001``) or topic page (``numerical-issues``)."""
    path = doc_path(code) if code.upper().startswith("AMP") else docs_directory() / f"{code}.md"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LookupError(f"no doc for {code!r} (looked for {path})") from None
