"""``flake8-amp``: the rules without flake8, rule docs and the rule table; the runtime's format tools.

``flake8-amp check src/ [--format default|amp|json|sarif] [flake8's options]``   lint as ``flake8 --select AMP``
                                does, without flake8: its output, noqa, configuration and exit codes
``flake8-amp fix src/ [--diff] [--check] [--unsafe-fixes] [--min-torch 2.1]``   apply the rules' automatic
                                fixes to what ``check`` reports (noqa and configuration included)
``flake8-amp explain AMP003``   print a rule's doc (or a topic page: ``explain numerical-issues``)
``flake8-amp rules [--json]``   the rule table
``flake8-amp formats [--json]`` float-format limits; ``flake8-amp bits 12345.67 --format fp16``
``flake8-amp verify train.py --steps 20 -- --lr 3e-4``   run a script and verify its findings
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__
from .rule_docs import fix_mark, read_doc, status
from .rules import ALL_RULES


def explain(args: argparse.Namespace) -> int:
    try:
        print(read_doc(args.code))
    except LookupError:
        known = ", ".join(rule.code for rule in ALL_RULES)
        print(f"flake8-amp: unknown rule or topic {args.code!r}; rules are {known}", file=sys.stderr)
        return 2
    return 0


def list_rules(args: argparse.Namespace) -> int:
    rows = [
        {
            "code": rule.code,
            "severity": rule.severity.value,
            "status": status(rule),
            "name": rule.name,
            "symbol": rule.symbol,
            "summary": rule.summary,
            "default_enabled": rule.default_enabled,
            "fix": fix_mark(rule) or None,
        }
        for rule in ALL_RULES
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ("code", "severity", "status", "name", "summary")
    widths = [max(len(headers[i]), *(len(str(row[h])) for row in rows)) for i, h in enumerate(headers[:-1])]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths + [0])).rstrip())
    for row in rows:
        cells = [str(row[h]).ljust(w) for h, w in zip(headers, widths)]
        note = "" if row["default_enabled"] else " (off by default)"
        print("  ".join(cells + [str(row["summary"]) + note]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flake8-amp", description="Mixed-precision (autocast / GradScaler) hazards in PyTorch code."
    )
    parser.add_argument("--version", action="version", version=f"flake8-amp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Listed for --help only: main() hands everything after "check" to flake8_amp.check and after "fix" to
    # flake8_amp.fixes.command, whose parsers are flake8's (every flake8 option, and their own --help).
    subparsers.add_parser(
        "check",
        add_help=False,
        help="lint files as `flake8 --select AMP` does, without flake8: same output, noqa, config, exit codes; "
        "--format default|amp|json|sarif (see check --help)",
    )

    subparsers.add_parser(
        "fix",
        add_help=False,
        help="apply the rules' automatic fixes in place to what `check` reports (noqa, config and flake8's "
        "options included); --diff, --check, --unsafe-fixes, --min-torch (see fix --help)",
    )

    explain_parser = subparsers.add_parser("explain", help="print a rule's doc (e.g. AMP003)")
    explain_parser.add_argument("code", help="a rule code such as AMP003, or a topic page name")
    explain_parser.set_defaults(func=explain)

    rules_parser = subparsers.add_parser("rules", help="list every rule")
    rules_parser.add_argument("--json", action="store_true", help="machine-readable output")
    rules_parser.set_defaults(func=list_rules)

    from .runtime import commands as runtime_commands  # pure Python: imports no torch

    runtime_commands.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        from .check import main as check  # flake8's machinery, loaded only for this command

        return check(argv[1:])
    if argv[:1] == ["fix"]:
        from .fixes.command import main as fix  # flake8's machinery too, and ast-grep

        return fix(argv[1:])
    # Everything after "--" belongs to the script that `verify` runs, flags included.
    script_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, script_args = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if script_args:
        if not hasattr(args, "script_args"):
            parser.error(f"unrecognized arguments: -- {' '.join(script_args)}")
        args.script_args = script_args
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
