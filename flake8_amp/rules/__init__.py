"""The rule registry: every AMP rule, in code order.

Each ``ampNNN_<name>.py`` module in this package defines one :class:`Rule` subclass; the registry is
read off the modules so that a rule is added by adding its module, and nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

from .base import Finding, Rule, Severity

_RULE_MODULE = re.compile(r"amp\d{3}_\w+$")


def _discover() -> tuple[Rule, ...]:
    rules = []
    for module_info in pkgutil.iter_modules(__path__):
        if not _RULE_MODULE.match(module_info.name):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        rules.extend(
            cls()
            for cls in vars(module).values()
            if inspect.isclass(cls) and issubclass(cls, Rule) and cls is not Rule and cls.__module__ == module.__name__
        )
    codes = [rule.code for rule in rules]
    duplicates = sorted({code for code in codes if codes.count(code) > 1})
    if duplicates:
        raise RuntimeError(f"flake8-amp: several rule modules define {', '.join(duplicates)}")
    return tuple(sorted(rules, key=lambda rule: rule.code))


ALL_RULES: tuple[Rule, ...] = _discover()
RULES_BY_CODE: dict[str, Rule] = {rule.code: rule for rule in ALL_RULES}

__all__ = ["ALL_RULES", "RULES_BY_CODE", "Finding", "Rule", "Severity"]
