"""``python -m flake8_amp``: the ``flake8-amp`` command, where the console script is not on PATH."""

import sys

from .cli import main

sys.exit(main())
