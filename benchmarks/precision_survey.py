"""Lint real repositories and list every finding, for reading them one by one.

    python benchmarks/precision_survey.py DIR [DIR ...] [--select AMP003,AMP010] [--preview] [--counts]

Each DIR is a checkout of a real project (not committed here), linted as flake8 lints it: file by file,
with the project index reading the rest of the checkout (the stable rules; ``--preview`` adds the preview
rules, as ``--amp-preview=on`` does). Prints ``path:line:col: message`` per finding,
then counts per repository and rule. The judgements (true hazard or not, and why) live in
benchmarks/precision.md.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

from flake8_amp.analysis.project_index import find_root
from flake8_amp.engine import LintOptions, lint_tree, mentions_torch


def survey(root: Path, codes: set[str] | None, options: LintOptions) -> tuple[list[str], Counter, int]:
    lines, counts, files = [], Counter(), 0
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8", errors="replace")
            files += 1
            if not mentions_torch(source.splitlines()):
                continue
            tree = ast.parse(source)
        except (SyntaxError, ValueError, OSError):
            continue  # flake8 reports E999 for these; the plugin never sees them
        for finding in lint_tree(tree, options, path=str(path)):  # with the project index, as flake8 runs it
            if codes and finding.code not in codes:
                continue
            counts[finding.code] += 1
            lines.append(f"{path}:{finding.line}:{finding.col + 1}: {finding.message}")
    return lines, counts, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--select", help="comma-separated codes (default: all)")
    parser.add_argument("--preview", action="store_true", help="run the preview rules too")
    parser.add_argument("--counts", action="store_true", help="only the counts")
    args = parser.parse_args()
    codes = set(args.select.split(",")) if args.select else None
    options = LintOptions(preview=args.preview)
    for root in args.dirs:
        if find_root(root / "__probe__.py") != root.resolve():
            # A checkout has .git at its root; a bare copy without it (or without pyproject.toml, setup.cfg,
            # setup.py) would be linted file by file, without the project index that flake8 would use.
            print(f"!! {root.name}: no project marker at its root (.git, pyproject.toml, setup.cfg, setup.py): "
                  "its files are linted alone, unlike in a checkout", file=sys.stderr)
        lines, counts, files = survey(root, codes, options)
        if not args.counts and lines:  # no blank line for a repository without findings: one line, one finding
            print("\n".join(lines))
        summary = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())) or "no findings"
        print(f"== {root.name}: {files} files, {summary}", file=sys.stderr if not args.counts else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
