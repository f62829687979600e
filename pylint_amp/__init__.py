"""The pylint front end: ``pylint --load-plugins pylint_amp train.py``.

Same rules, same findings as ``flake8 --select AMP``: the module's bytes are parsed once with ``ast`` and
handed to flake8-amp's engine; no rule logic lives here. Message ids are ``<category>51NN`` for rule
AMP0NN (51 is the checker id, in pylint's range for external checkers); symbols are ``amp-<name>``; each
message text starts with the AMP code, so one code can be searched across both linters.
Severity maps to pylint's categories as :data:`flake8_amp.rules.base.PYLINT_CATEGORY` says: HIGH -> error
(E), MEDIUM -> warning (W), LOW -> convention (C). Convention rather than refactor because IDEs show
pylint's refactor messages only as hints, outside the problems list (VS Code's pylint extension maps
refactor to Hint, convention to Information).
A rule that crashes on a file is reported as F5100 ``amp-internal-error`` (flake8's AMP000), as pylint
reports its own internal failures as fatal messages.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any, Iterable

from pylint.checkers import BaseRawFileChecker

from flake8_amp.engine import INTERNAL_ERROR_CODE, PRECISIONS, LintOptions, lint_tree, mentions_torch
from flake8_amp.rule_docs import doc_path
from flake8_amp.rules import ALL_RULES, Rule
from flake8_amp.rules.base import PYLINT_CHECKER_ID

if TYPE_CHECKING:
    from astroid import nodes
    from pylint.lint import PyLinter

AUTO = "auto"
INTERNAL_ERROR_MESSAGE = (f"F{PYLINT_CHECKER_ID}00", "amp-internal-error")


def _description(rule: Rule) -> str:
    return (
        f"{rule.code} ({rule.severity.value}): {rule.summary}. {rule.why[0].upper()}{rule.why[1:]}. "
        f"Fix: {rule.fix}. Full doc: `flake8-amp explain {rule.code}` ({doc_path(rule.code)})."
    )


def pylint_messages(rules: Iterable[Rule]) -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """pylint's ``msgs`` table: one message per rule; opinionated rules are disabled by default."""
    messages: dict[str, tuple[str, str, str, dict[str, Any]]] = {
        rule.pylint_id: ("%s", rule.symbol, _description(rule), {"default_enabled": rule.default_enabled})
        for rule in rules
    }
    msgid, symbol = INTERNAL_ERROR_MESSAGE
    messages[msgid] = (
        "%s",
        symbol,
        f"{INTERNAL_ERROR_CODE}: a flake8-amp rule failed on this module; the other rules ran. "
        "Please report it with the file.",
        {},
    )
    return messages


class AmpChecker(BaseRawFileChecker):
    name = "amp"
    msgs = pylint_messages(ALL_RULES)
    options = (
        (
            "amp-precision",
            {
                "default": AUTO,
                "type": "choice",
                "choices": [AUTO, *PRECISIONS],
                "metavar": "<auto|fp16|bf16>",
                "help": "The low-precision format the code trains in; auto infers it per module from its "
                "autocast dtypes and casts. In bf16 code the float16-range rules (AMP007, AMP008, AMP016) "
                "stay quiet.",
            },
        ),
        (
            "amp-project-index",
            {
                "default": True,
                "type": "yn",
                "metavar": "<y or n>",
                "help": "Read the project's other modules for facts one step away (a model called under "
                "autocast in another file, a loss scaled by a helper class), with a cache in "
                "<project>/.flake8_amp_cache; no lints every module alone and reads no other file.",
            },
        ),
        (
            "amp-preview",
            {
                "default": False,
                "type": "yn",
                "metavar": "<y or n>",
                "help": "Run the preview rules too ("
                + ", ".join(rule.code for rule in ALL_RULES if rule.preview)
                + "): rules whose findings on code nobody tuned them to were right less than 75% of the time.",
            },
        ),
    )

    def process_module(self, node: nodes.Module) -> None:
        stream = node.stream()
        if stream is None:
            return
        with stream:
            source = stream.read()
        # The cheap pre-check on text; ast then parses the bytes itself (encoding cookie, BOM).
        if not mentions_torch([source.decode("utf-8", errors="replace")]):
            return
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return  # pylint reports syntax errors itself
        precision = self.linter.config.amp_precision
        options = LintOptions(
            precision=None if precision == AUTO else precision,
            project_index=bool(self.linter.config.amp_project_index),
            preview=bool(self.linter.config.amp_preview),
        )
        symbols = {rule.code: rule.symbol for rule in ALL_RULES}
        symbols[INTERNAL_ERROR_CODE] = INTERNAL_ERROR_MESSAGE[1]
        for finding in lint_tree(tree, options, path=node.file):
            symbol = symbols.get(finding.code)
            if symbol is not None:
                self.add_message(symbol, line=finding.line, col_offset=finding.col, args=(finding.message,))


def register(linter: PyLinter) -> None:
    linter.register_checker(AmpChecker(linter))
