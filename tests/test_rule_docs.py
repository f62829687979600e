"""Every rule has a doc with the standard headings, and its examples behave as the doc says:
the "Example" block raises exactly that rule, the "Use instead" block raises nothing."""

from __future__ import annotations

import re

import pytest

from flake8_amp.engine import lint_source
from flake8_amp.rule_docs import docs_directory, read_doc
from flake8_amp.rules import ALL_RULES

HEADINGS = [
    "## What it does",
    "## Why is this bad?",
    "## Example",
    "## Use instead",
    "## When it stays quiet",
    "## How to confirm it at runtime",
    "## References",
]
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
TOPIC_LINK = re.compile(r"\]\(([A-Za-z0-9-]+\.md)(?:#[^)]*)?\)")
RULES = [rule.code for rule in ALL_RULES]


def section(doc: str, heading: str) -> str:
    start = doc.index(heading) + len(heading)
    end = doc.find("\n## ", start)
    return doc[start : end if end != -1 else None]


@pytest.mark.parametrize("code", RULES)
def test_doc_has_every_heading_in_order(code):
    doc = read_doc(code)
    assert doc.startswith(f"# {code}")
    positions = [doc.find(heading) for heading in HEADINGS]
    assert -1 not in positions, f"missing: {[h for h, p in zip(HEADINGS, positions) if p == -1]}"
    assert positions == sorted(positions)


@pytest.mark.parametrize("code", RULES)
def test_example_raises_exactly_its_rule(code):
    blocks = CODE_BLOCK.findall(section(read_doc(code), "## Example"))
    assert blocks
    for block in blocks:
        assert {f.code for f in lint_source(block)} == {code}, block


@pytest.mark.parametrize("code", RULES)
def test_use_instead_raises_nothing(code):
    blocks = CODE_BLOCK.findall(section(read_doc(code), "## Use instead"))
    assert blocks
    for block in blocks:
        assert [f.message for f in lint_source(block)] == [], block


@pytest.mark.parametrize("code", RULES)
def test_doc_cites_evidence_and_links_resolve(code):
    doc = read_doc(code)
    assert "https://" in section(doc, "## References")
    for target in TOPIC_LINK.findall(doc):
        assert (docs_directory() / target).is_file(), f"{code} links to missing {target}"


@pytest.mark.parametrize("page", sorted(p.name for p in docs_directory().glob("*.md")))
def test_every_doc_page_links_only_to_pages_that_exist(page):
    text = (docs_directory() / page).read_text()
    for target in TOPIC_LINK.findall(text):
        assert (docs_directory() / target).is_file(), f"{page} links to missing {target}"
