"""The linter's options (``--amp-precision``, ``--amp-project-index``, ``--amp-preview``): declared on flake8's
option manager and read back into :class:`~flake8_amp.engine.LintOptions`.

One implementation for both front ends that read flake8's configuration: the flake8 plugin
(:class:`~flake8_amp.plugin.AmpChecker`) and ``flake8-amp check``, so that a value means the same, and a bad
one fails the same way, whichever of them reads it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .engine import PRECISIONS, LintOptions
from .rules import ALL_RULES

AUTO = "auto"
ON, OFF = "on", "off"

#: what a yes/no setting may say, on the command line or in a configuration file
_SWITCH_VALUES = {
    **dict.fromkeys(("on", "true", "yes", "1"), True),
    **dict.fromkeys(("off", "false", "no", "0"), False),
}


def register_options(parser: Any) -> None:
    """Declare the options on a flake8 ``OptionManager`` (flake8's own, or the one ``check`` builds)."""
    parser.add_option(
        "--amp-precision",
        default=AUTO,
        choices=(AUTO, *PRECISIONS),
        parse_from_config=True,
        help="the low-precision format the code trains in: fp16, bf16, or auto (infer it per module from "
        "its autocast dtypes and casts). In bf16 code the float16-range rules (AMP007, AMP008, "
        "AMP016) stay quiet. (Default: %(default)s)",
    )
    parser.add_option(
        "--amp-project-index",
        default=ON,
        choices=(ON, OFF),
        parse_from_config=True,
        help="read the project's other modules for facts one step away (a model called under autocast "
        "in another file, a loss scaled by a helper class), with a cache in <project>/.flake8_amp_cache; "
        "off lints every file alone and reads no other file. (Default: %(default)s)",
    )
    parser.add_option(
        "--amp-preview",
        default=OFF,
        metavar="on|off",
        parse_from_config=True,
        help="on runs the preview rules too ("
        + ", ".join(rule.code for rule in ALL_RULES if rule.preview)
        + "): rules whose findings on code nobody tuned them to were right less than 75%% of the time. "
        "`flake8-amp verify` always runs them and says which held. (Default: %(default)s)",
    )
    # Opinionated rules are reported only when selected explicitly (--extend-select AMP0NN).
    off_by_default = [rule.code for rule in ALL_RULES if not rule.default_enabled]
    if off_by_default:
        parser.extend_default_ignore(off_by_default)


def lint_options(options: argparse.Namespace, prog: str = "flake8") -> LintOptions:
    """The engine's options from flake8's parsed namespace; a bad value exits 2 with one line naming it.

    ``prog`` names the command in that line (``flake8`` or ``flake8-amp check``)."""
    precision = _checked(options, "amp_precision", AUTO, (AUTO, *PRECISIONS), prog)
    project_index = _checked(options, "amp_project_index", ON, (ON, OFF), prog)
    return LintOptions(
        precision=None if precision == AUTO else precision,
        project_index=project_index == ON,
        preview=_switch(options, "amp_preview", OFF, prog),
    )


def may_select_amp(options: argparse.Namespace) -> bool:
    """flake8 runs every plugin whatever --select says; skip the work when no AMP code can be reported."""
    select = getattr(options, "select", None)
    if select is None:
        return True  # flake8's default selection reports every installed plugin's codes
    chosen = list(select) + list(getattr(options, "extend_select", None) or ())
    return any("AMP000".startswith(code) or code.startswith("AMP") for code in chosen if code)


def _checked(options: argparse.Namespace, name: str, default: str, choices: tuple[str, ...], prog: str) -> str:
    """argparse checks the command line's choices, but flake8 hands config-file values over unchecked."""
    value = getattr(options, name, default)
    if value not in choices:
        sys.stderr.write(
            f"{prog}: error: {name.replace('_', '-')} = {value!r} in the flake8 configuration is not one of: "
            f"{', '.join(choices)}\n"
        )
        raise SystemExit(2)
    return value


def _switch(options: argparse.Namespace, name: str, default: str, prog: str) -> bool:
    value = getattr(options, name, default)
    if isinstance(value, bool):
        return value
    try:
        return _SWITCH_VALUES[str(value).strip().lower()]
    except KeyError:
        sys.stderr.write(f"{prog}: error: {name.replace('_', '-')} = {value!r} is not one of: on, off\n")
        raise SystemExit(2) from None
