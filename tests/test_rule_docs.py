"""Every rule has a doc with the standard headings, and its examples behave as the doc says:
the "Example" block raises exactly that rule, the "Use instead" block raises nothing. The parts of the docs
that restate a rule's metadata (header line, the shared-exemption bullet, the README's rule table, the
table in exemptions.md) match the rules, and what they say about test code is what the engine does."""

from __future__ import annotations

import re

import pytest

from flake8_amp.engine import LintOptions, lint_source
from flake8_amp.rule_docs import (
    QUIET_HEADING,
    cuda_op_table,
    doc_header,
    docs_directory,
    exemptions_table,
    policy_bullet,
    read_doc,
    rules_table,
    synced_doc,
    with_table,
)
from flake8_amp.rules import ALL_RULES, RULES_BY_CODE

README = docs_directory().parent / "README.md"
STALE = "stale: run `python -m flake8_amp.rule_docs` and commit what it rewrites"

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
#: every rule runs on the docs' code, preview rules included
EVERY_RULE = LintOptions(preview=True)


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
        assert {f.code for f in lint_source(block, EVERY_RULE)} == {code}, block


@pytest.mark.parametrize("code", RULES)
def test_use_instead_raises_nothing(code):
    blocks = CODE_BLOCK.findall(section(read_doc(code), "## Use instead"))
    assert blocks
    for block in blocks:
        assert [f.message for f in lint_source(block, EVERY_RULE)] == [], block


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


@pytest.mark.parametrize("code", RULES)
def test_header_and_policy_bullet_are_generated_from_the_rule(code):
    rule, doc = RULES_BY_CODE[code], read_doc(code)
    assert doc.split("\n")[2] == doc_header(rule), STALE
    assert section(doc, QUIET_HEADING).lstrip("\n").startswith(policy_bullet(rule) + "\n- "), STALE
    assert synced_doc(doc, rule) == doc, STALE


def test_header_names_severity_status_pylint_symbol_id_and_fix():
    assert doc_header(RULES_BY_CODE["AMP001"]) == (
        "**Severity:** HIGH · **Status:** preview (reported with `--amp-preview=on`) · "
        "**pylint:** `amp-manual-half-cast` (E5101) · **Fix:** " + RULES_BY_CODE["AMP001"].fix
    )
    assert doc_header(RULES_BY_CODE["AMP013"]).startswith("**Severity:** LOW · **Status:** stable · **pylint:** ")


def test_policy_bullet_lists_what_applies_to_the_rule():
    casts = policy_bullet(RULES_BY_CODE["AMP001"]).replace("\n  ", " ")
    for part in ("test code", "older torch", "evaluation-only code", "float32 arm", "precision setting"):
        assert part in casts
    assert "bfloat16" not in casts
    assert "bfloat16" in policy_bullet(RULES_BY_CODE["AMP007"])
    deprecated = policy_bullet(RULES_BY_CODE["AMP013"]).replace("\n  ", " ")
    assert deprecated == (
        "- The [shared exemptions](exemptions.md): fallbacks that keep an older torch working. "
        "Test code is not exempt: it breaks on this too."
    )


def test_readme_rule_table_is_generated_from_the_rules():
    readme = README.read_text(encoding="utf-8")
    table = rules_table(ALL_RULES, "rule_docs/")
    assert with_table(readme, "rule table", table) == readme, STALE
    assert (
        "| [AMP007](rule_docs/AMP007.md) | HIGH | preview | `amp-fp16-overflow-literal` (E5107) | "
        "A literal beyond float16's range (\\|x\\|"
    ) in table
    assert "| [AMP013](rule_docs/AMP013.md) | LOW | stable | `amp-deprecated-amp-api` (C5113) |" in table
    assert table.count("\n") == len(ALL_RULES) + 1


def test_the_cuda_op_table_is_generated_from_the_table_emulation_applies():
    page = (docs_directory() / "autocast-op-lists.md").read_text(encoding="utf-8")
    assert with_table(page, "cuda op table", cuda_op_table()) == page, STALE
    assert "| raises | `binary_cross_entropy` |" in page
    assert "`softmax.int`" in page.split("| float32, unless a `dtype=` is given |", 1)[1].split("\n", 1)[0]


def test_exemption_table_is_generated_from_the_rules():
    page = (docs_directory() / "exemptions.md").read_text(encoding="utf-8")
    assert with_table(page, "exemption table", exemptions_table(ALL_RULES)) == page, STALE
    assert "| [AMP013](AMP013.md) | reports | quiet | reports | reports | reports | reports |" in page


@pytest.mark.parametrize("code", RULES)
def test_what_the_docs_say_about_test_code_is_what_the_engine_does(code, tmp_path):
    """The Example block, saved as a test module, is quiet exactly for the rules that exempt test code."""
    rule = RULES_BY_CODE[code]
    block = CODE_BLOCK.findall(section(read_doc(code), "## Example"))[0]
    (tmp_path / "pyproject.toml").write_text("")
    for name in ("test_example.py", "tests/helpers.py"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(block)
        found = {f.code for f in lint_source(block, EVERY_RULE, path=str(path))}
        assert found == (set() if rule.exempt_in_tests else {code}), name


def test_a_stale_table_is_named_not_silently_skipped():
    with pytest.raises(LookupError, match="rule table"):
        with_table("no markers here", "rule table", "| x |")
