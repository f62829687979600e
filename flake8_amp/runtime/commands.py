"""The runtime's commands for the ``flake8-amp`` CLI: ``formats``, ``bits`` and ``verify``.

Importing this module imports no torch: ``verify`` loads it when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from .formats import FORMATS, bits, get_format, limits_table


def register(subparsers: Any) -> None:
    formats = subparsers.add_parser("formats", help="limits of fp32, fp16, bf16 and the fp8 formats")
    formats.add_argument("--json", action="store_true", help="machine-readable output")
    formats.set_defaults(func=show_formats)

    bits_parser = subparsers.add_parser("bits", help="the bits and stored value of a number in a format")
    bits_parser.add_argument("value", help="a number, e.g. 12345.67, -1e9, inf, nan")
    bits_parser.add_argument("--format", "-f", default="fp16", help="fp32, fp16, bf16, fp8_e4m3fn, fp8_e5m2 (default: fp16)")
    bits_parser.set_defaults(func=show_bits)

    verify_parser = subparsers.add_parser(
        "verify",
        help="lint a training script, run it, and say what happened at each flagged line",
        description="Lint SCRIPT and the project modules it imports with flake8 (your configuration), run it "
        "in this interpreter as __main__ with the arguments after --, and give each AMP finding a verdict: "
        "confirmed, not_observed, not_reached or not_checkable. Exit code 1 when a finding is confirmed, "
        "0 otherwise, 2 for a usage error.",
        usage="flake8-amp verify SCRIPT [--steps N] [--timeout S] [--device {auto,cuda,emulated,cpu}] "
        "[--format {text,json,sarif}] [-- SCRIPT_ARGS...]",
    )
    verify_parser.add_argument("script", help="the training script, e.g. train.py")
    verify_parser.add_argument("--steps", type=int, default=None,
                               help="stop cleanly after N optimizer steps (default: run to the end)")
    verify_parser.add_argument("--timeout", type=float, default=None,
                               help="stop cleanly after S seconds of wall time (default: no limit)")
    verify_parser.add_argument("--device", choices=("auto", "cuda", "emulated", "cpu"), default="auto",
                               help="auto: the GPU when there is one, else CUDA emulated on the CPU (CUDA's "
                               "autocast op lists, one emulated device); cuda: the GPU; emulated: CUDA "
                               "emulated even beside a GPU; cpu: no emulation (default: auto)")
    verify_parser.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                               help="the report's format; with json and sarif the script's own output goes to "
                               "stderr (default: text)")
    verify_parser.set_defaults(func=run_verify, script_args=[])


def show_formats(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([fmt.limits() for fmt in FORMATS.values()], indent=2))
    else:
        print(limits_table())
    return 0


def show_bits(args: argparse.Namespace) -> int:
    try:
        value = float(args.value)
    except ValueError:
        print(f"flake8-amp bits: {args.value!r} is not a number", file=sys.stderr)
        return 2
    try:
        fmt = get_format(args.format)
    except ValueError as exc:
        print(f"flake8-amp bits: {exc}", file=sys.stderr)
        return 2
    print(bits(value, fmt))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    script_args = list(args.script_args)
    for name in ("steps", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"flake8-amp verify: --{name} must be positive, not {value}", file=sys.stderr)
            return 2
    try:
        from .verification import LintError, verify
    except ImportError as exc:
        print(f"flake8-amp verify needs PyTorch: pip install 'flake8-amp[runtime]' ({exc})", file=sys.stderr)
        return 2
    # A machine-readable report owns stdout: the script's prints go to stderr.
    script_output = contextlib.redirect_stdout(sys.stderr) if args.format != "text" else contextlib.nullcontext()
    try:
        with script_output:
            report = verify(args.script, args=script_args, steps=args.steps, timeout=args.timeout,
                            device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except LintError as exc:
        print(f"flake8-amp verify: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # this torch cannot be instrumented: nothing ran
        print(exc, file=sys.stderr)
        return 2
    if args.format == "json":
        print(report.to_json())
    elif args.format == "sarif":
        print(json.dumps(report.to_sarif(), indent=2))
    else:
        print(report)
    return report.exit_code
