"""flake8-amp: static and runtime checks for PyTorch mixed-precision hazards.

Importing this package never imports torch; only :mod:`flake8_amp.runtime` does.
"""

__version__ = "0.1.0"
