"""The oldest torch a project supports, which decides the spelling a fix may write.

``torch.autocast(device_type)`` exists from torch 1.10, ``torch.amp.GradScaler(device)`` from 2.3 and
``torch.amp.custom_fwd(device_type=)`` from 2.4: rewriting a deprecated spelling into one of these breaks
a project that still supports an older release, which is the first thing maintainers ask about such a
change. So the floor is read from what the project declares, nearest the file first: its
``pyproject.toml`` (``[project] dependencies``, optional dependencies, Poetry's ``torch = "^2.1"``),
``setup.cfg`` (``install_requires``), ``setup.py`` and ``requirements*.txt`` (and ``requirements/*.txt``)
files, in the first folder at or above the file whose files declare a lower bound for torch, up to the
project's root (the first folder with a pyproject.toml, setup.cfg, setup.py or .git). The lowest lower
bound found there wins (``torch>=1.8`` in setup.py and ``torch==2.3`` in a CI requirements file: the
project supports 1.8). ``--min-torch`` overrides it.

Where nothing declares a lower bound, :data:`ASSUMED` (2.4) is taken, and ``fix`` says so: every finding
being fixed is a spelling torch 2.4 deprecated, which only warns on 2.4 and later; a project that keeps
an older torch working has, in practice, written that floor where a tool can read it, and one that
declares a bare ``torch`` installs the newest release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

Version = tuple[int, int]

#: the floor taken where the project declares none: the release that deprecated torch.cuda.amp
ASSUMED: Version = (2, 4)

_PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py")
# "torch" as a distribution name (not torchvision, pytorch-lightning or torch.cuda), optional extras, then
# a requirement's version clauses, Poetry's `torch = "^2.1"` and `torch = { version = ">=2.0" }` included.
_OPERATOR = r"(?:\^|~=|===|==|>=|<=|!=|~|>|<)"
_VERSION_CLAUSE = _OPERATOR + r"""\s*\d[^"',;\s\]}]*"""
_REQUIREMENT = re.compile(
    r"""(?<![\w.-])torch(?:\[[^\]]*\])?\s*(?:=\s*\{?\s*(?:version\s*=\s*)?["'])?\s*\(?\s*"""
    rf"(?P<clauses>{_VERSION_CLAUSE}(?:\s*,\s*{_VERSION_CLAUSE})*)"
)
_CLAUSE = re.compile(rf"(?P<op>{_OPERATOR})\s*(?P<version>\d+(?:\.\d+)?)")
_LOWER_BOUNDS = frozenset({"^", "~=", "~", "===", "==", ">=", ">"})


@dataclass(frozen=True)
class TorchFloor:
    """The oldest torch release (major, minor) the fixed code must keep working on."""

    version: Version
    #: where it was read ("setup.py: torch>=1.8", "--min-torch 2.1"); "" where it was assumed
    source: str = ""

    def at_least(self, version: Version) -> bool:
        """Every torch the project supports has ``version`` or later."""
        return self.version >= version

    @property
    def assumed(self) -> bool:
        return not self.source

    def __str__(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def parse_version(text: str) -> Version | None:
    """``2.1`` / ``2.1.0+cu118`` / ``1.10`` as (major, minor); None for anything else."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?(?:[+.-]?\w*)*\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def requirement_floor(text: str) -> Version | None:
    """The lowest lower bound that the torch requirements in ``text`` (a requirements file, setup.py,
    setup.cfg or pyproject.toml) declare, or None where they declare none."""
    floors = []
    for requirement in _REQUIREMENT.finditer(text):
        bounds = [
            version
            for clause in _CLAUSE.finditer(requirement.group("clauses"))
            if clause.group("op") in _LOWER_BOUNDS and (version := _bound_version(clause.group("version")))
        ]
        if bounds:
            floors.append(max(bounds))  # `torch>=1.8,>=2.0` holds from 2.0
    return min(floors) if floors else None


def _bound_version(text: str) -> Version | None:
    """A requirement's version: ``2.1``, or a major alone (``torch>=2``, ``torch==2.*``, ``^2``) as ``2.0``."""
    return parse_version(text) or ((int(text), 0) if text.isdigit() else None)


class TorchFloors:
    """The floor of each file's project, read once per project folder."""

    def __init__(self, override: TorchFloor | None = None) -> None:
        self.override = override
        self._by_folder: dict[Path, TorchFloor] = {}

    def for_file(self, path: str | None) -> TorchFloor:
        if self.override is not None:
            return self.override
        if not path:
            return TorchFloor(ASSUMED)
        folder = Path(path).resolve().parent
        if folder not in self._by_folder:
            self._by_folder[folder] = _declared_floor(folder)
        return self._by_folder[folder]


def _declared_floor(folder: Path) -> TorchFloor:
    """The lowest torch lower bound declared in the nearest folder at or above ``folder`` that declares
    one, looking no higher than the project's root (a folder with a pyproject.toml, setup.cfg, setup.py or
    .git): a recipe's own requirements.txt first, the project's after it."""
    for candidate in (folder, *folder.parents):
        files = [candidate / name for name in _PROJECT_FILES if (candidate / name).is_file()]
        root = bool(files) or (candidate / ".git").exists()
        files += sorted(candidate.glob("requirements*.txt")) + sorted(candidate.glob("requirements/*.txt"))
        found = []
        for path in files:
            try:
                floor = requirement_floor(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
            if floor is not None:
                found.append((floor, path.relative_to(candidate).as_posix()))
        if found:
            floor, name = min(found)
            return TorchFloor(floor, f"{name}: torch>={floor[0]}.{floor[1]}")
        if root:
            break
    return TorchFloor(ASSUMED)
