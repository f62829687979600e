"""The tests' shared helpers (expectations, linter_runs) live in this folder; tests in sub-folders import
them too."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
