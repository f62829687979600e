"""The pylint front end: ``pylint --load-plugins pylint_amp train.py``.

Same rules, same findings as ``flake8 --select AMP``: the module's text is parsed once with ``ast`` and
handed to flake8-amp's engine; no rule logic lives here. Message ids are ``<category>51NN`` for rule
AMP0NN (51 is the checker id, in pylint's range for external checkers); symbols are ``amp-<name>``; each
message text starts with the AMP code, so one code can be searched across both linters.
Severity maps to pylint's categories: HIGH -> error (E), MEDIUM -> warning (W), LOW -> refactor (R).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from pylint.checkers import BaseRawFileChecker

from flake8_amp.engine import PRECISIONS, LintOptions, lint_tree, mentions_torch
from flake8_amp.rule_docs import doc_path
from flake8_amp.rules import ALL_RULES, Rule, Severity

if TYPE_CHECKING:
    from astroid import nodes
    from pylint.lint import PyLinter

CHECKER_ID = 51
_CATEGORY = {Severity.HIGH: "E", Severity.MEDIUM: "W", Severity.LOW: "R"}


def message_id(rule: Rule) -> str:
    return f"{_CATEGORY[rule.severity]}{CHECKER_ID}{int(rule.code[3:]):02d}"


def _description(rule: Rule) -> str:
    return (
        f"{rule.code} ({rule.severity.value}): {rule.summary}. {rule.why[0].upper()}{rule.why[1:]}. "
        f"Fix: {rule.fix}. Full doc: `flake8-amp explain {rule.code}` ({doc_path(rule.code)})."
    )


class AmpChecker(BaseRawFileChecker):
    name = "amp"
    msgs = {
        message_id(rule): ("%s", rule.symbol, _description(rule), {"default_enabled": rule.default_enabled})
        for rule in ALL_RULES
    }
    options = (
        (
            "amp-precision",
            {
                "default": "auto",
                "type": "choice",
                "choices": ["auto", *PRECISIONS],
                "metavar": "<auto|fp16|bf16>",
                "help": "The low-precision format the code trains in; auto infers it per module from its "
                "autocast dtypes and casts. In bf16 code the float16-range rules (AMP007, AMP008, AMP016) "
                "stay quiet.",
            },
        ),
    )

    def process_module(self, node: nodes.Module) -> None:
        with node.stream() as stream:
            source = stream.read().decode(node.file_encoding or "utf-8", errors="replace")
        if not mentions_torch(source.splitlines()):
            return
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return  # pylint reports syntax errors itself
        precision = self.linter.config.amp_precision
        options = LintOptions(precision=None if precision == "auto" else precision)
        symbols = {rule.code: rule.symbol for rule in ALL_RULES}
        for finding in lint_tree(tree, options):
            symbol = symbols.get(finding.code)
            if symbol is not None:
                self.add_message(symbol, line=finding.line, col_offset=finding.col, args=(finding.message,))


def register(linter: PyLinter) -> None:
    linter.register_checker(AmpChecker(linter))
