"""The runtime's commands for the ``flake8-amp`` CLI: ``formats`` and ``bits``. Pure Python: no torch."""

from __future__ import annotations

import argparse
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
