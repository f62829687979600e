"""Facts about the rest of the project, for the file being linted.

flake8 and pylint hand the plugin one file at a time, but a hazard is often one step away: the model
whose ``forward`` runs under autocast is defined in ``models.py`` and called under autocast in
``train.py``; the loss is scaled by a ``NativeScaler`` from ``utils.py``; a checkpoint spreads
``**trainer.state_dict()`` of a class defined elsewhere. The project index answers those questions from
the summaries (:mod:`.summaries`) of the project's other modules:

* what a function or class of another module does (``function_facts``, ``class_facts``);
* which functions of this file are called inside an autocast region somewhere in the project
  (``autocast_uses``): every call inside an enabled region, in any module but a test module (tests
  exercise code under autocast on purpose), followed through the calls of the functions it reaches,
  across modules;
* which names a star import brings in (``star_bindings``).

The project is the nearest folder above the file holding ``pyproject.toml``, ``setup.cfg``, ``setup.py``
or ``.git``; a file outside any project is linted alone. The index is built lazily, once per process
(``flake8 -j`` workers each keep their own), reading only the modules a question needs, plus, for
``autocast_uses``, every module whose text can open an autocast region (a ``with`` or decorator naming
autocast, a call of it, an import of it). Each module's summary is cached on disk in
``<project>/.flake8_amp_cache/`` (self-ignoring, like ``.ruff_cache``), keyed by the file's size and
modification time, so a second run parses nothing that did not change. A file that cannot be read or
parsed is skipped, and no failure here ever reaches the file being linted: a question the index cannot
answer gets "not known". ``--amp-project-index=off`` (pylint: ``amp-project-index=no``) lints every file
alone and touches no other file.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from .. import __version__

ROOT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", ".git")
CACHE_DIRECTORY = ".flake8_amp_cache"
_SCHEMA = 15
_SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", "site-packages", "build", "dist", "venv", "env"})
#: beyond this many modules, the project-wide question (autocast_uses) is not asked of the whole tree
_MAX_FILES = 20_000
#: a cap on the functions the autocast closure visits, and on re-export and base-class chains
_MAX_CLOSURE = 20_000
_MAX_CHAIN = 4
_FLAGS = ("trains", "scales_loss", "steps_scaler", "computes_loss", "returns_half", "steps")


_TEST_MODULE = re.compile(r"^(test_.*|.*_test|tests?|conftest)\.py$")
_TEST_FOLDERS = frozenset({"tests", "test"})


def is_test_module(path: str | os.PathLike, root: Path | None) -> bool:
    """A test module by its name (``test_*.py``, ``*_test.py``, ``test.py``, ``tests.py``,
    ``conftest.py``), or by a ``tests``/``test`` folder between the project's ``root`` and it (outside
    a project only the name counts: a folder above the project says nothing about it)."""
    path = Path(path)
    if _TEST_MODULE.match(path.name):
        return True
    if root is None:
        return False
    try:
        folders = path.resolve().relative_to(root).parts[:-1]
    except (ValueError, OSError):
        return False
    return any(folder in _TEST_FOLDERS for folder in folders)


def find_root(path: str | os.PathLike) -> Path | None:
    """The nearest folder above ``path`` holding a project marker, or None."""
    try:
        current = Path(path).resolve().parent
    except (OSError, RuntimeError):
        return None
    for folder in (current, *current.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return None


class ProjectIndex:
    """One project's index. Use :meth:`for_file`; instances live as long as the process."""

    _instances: dict[Path, "ProjectIndex"] = {}
    #: each linted file's folder -> its project root: a flake8 run asks once per file
    _roots: dict[Path, Path | None] = {}

    @classmethod
    def forget(cls) -> None:
        """Drop every index and remembered root, as a new process would start (for tests)."""
        cls._instances.clear()
        cls._roots.clear()

    @classmethod
    def for_file(cls, path: str | os.PathLike | None) -> "ProjectIndex | None":
        if not path or str(path) in ("-", "stdin") or not Path(path).is_file():
            return None
        folder = Path(os.path.abspath(path)).parent  # absolute: a later chdir must not reuse it
        if folder in cls._roots:
            root = cls._roots[folder]
        else:
            root = cls._roots[folder] = find_root(path)
        if root is None:
            return None
        index = cls._instances.get(root)
        if index is None:
            index = cls._instances[root] = cls(root)
        return index

    def __init__(self, root: Path, cache: bool = True) -> None:
        self.root = root
        self._facts: dict[Path, dict | None] = {}
        self._modules: dict[tuple[Path, str], Path | None] = {}
        self._files: list[Path] | None = None
        self._suffixes: dict[tuple[str, ...], list[Path]] | None = None
        self._uses: dict[Path, dict[str, object]] | None = None
        self._any_autocast = False
        self._autocast_modules: set[Path] = set()
        self._may_train: list[Path] = []
        self._reached_from_autocast: set[Path] | None = None
        self._any_low_precision = False
        self._mentions: dict[tuple[Path, str], bool] = {}
        self.cache = _DiskCache(root / CACHE_DIRECTORY) if cache else None

    # ---------------------------------------------------------------- the questions
    def function_facts(self, from_path: str, reference: str) -> dict | None:
        """The facts of the function (or instance call, ``X.__call__``) a reference names, as seen
        from ``from_path``; flags are followed through the function's calls into other modules."""
        try:
            return self._function_facts(Path(from_path).resolve(), reference, depth=0)
        except Exception:  # noqa: BLE001 - the index never fails the file being linted
            return None

    def class_facts(self, from_path: str, reference: str) -> dict | None:
        try:
            found = self._lookup(Path(from_path).resolve(), reference, "classes")
            return found[0] if found else None
        except Exception:  # noqa: BLE001
            return None

    def derives_from(self, from_path: str, reference: str, is_wanted) -> bool:
        """Whether the project's class ``reference`` (as ``from_path`` names it) has, among its bases and
        theirs, across modules, one whose qualified name ``is_wanted`` (``torch.nn.Module``)."""
        try:
            found = self._lookup(Path(from_path).resolve(), reference, "classes")
            pending = [(found[0], found[1])] if found else []
            seen = 0
            while pending and seen < _MAX_CHAIN * 4:
                seen += 1
                entry, path = pending.pop()
                facts = self.module_facts(path)
                for base in entry.get("bases", ()):
                    if is_wanted(base):
                        return True
                    if base.startswith("@"):
                        local = facts["classes"].get(base[1:]) if facts else None
                        if local is not None:
                            pending.append((local, path))
                    elif (inherited := self._lookup(path, base, "classes")) is not None:
                        pending.append((inherited[0], inherited[1]))
            return False
        except Exception:  # noqa: BLE001
            return False

    def autocast_uses(self, path: str) -> dict[str, object]:
        """Qualified names (within ``path``) of the functions some call in an enabled autocast region
        reaches, anywhere in the project, with that region's settings (a ``RegionInfo``)."""
        try:
            if self._uses is None:
                self._uses = self._compute_autocast_uses()
            return self._uses.get(Path(path).resolve(), {})
        except Exception:  # noqa: BLE001
            self._uses = {}
            return {}

    def uses_autocast(self) -> bool:
        """Some module of the project opens an autocast region."""
        self.autocast_uses("")  # reads every module that says "autocast"
        return self._any_autocast

    def reached_from_autocast(self, path: str) -> bool:
        """Whether a module of the project that opens an autocast region (tests aside: they open one
        to exercise code on purpose) is ``path``'s module or imports it, directly or through other
        modules of the project. Code no such module can reach is not run under autocast here."""
        try:
            self.autocast_uses("")
            if self._reached_from_autocast is None:
                self._reached_from_autocast = self._modules_imported_from(self._autocast_modules)
            return Path(path).resolve() in self._reached_from_autocast
        except Exception:  # noqa: BLE001 - an index that cannot answer must not hide a finding
            return True

    def trained_only_without_autocast(self, path: str) -> bool:
        """No module that opens autocast reaches ``path``'s module, and a module of the project that trains
        (its own trainer, which never opens autocast) imports it: the project runs this code, and runs
        it without autocast. A library module whose users are outside the project is not."""
        try:
            target = Path(path).resolve()
            if not any((self.module_facts(importer) or {}).get("trains") for importer in self._training_importers(target)):
                return False  # a library's module: whoever runs it is outside the project
            return not self.reached_from_autocast(path)
        except Exception:  # noqa: BLE001 - an index that cannot answer must not hide a finding
            return False

    def _training_importers(self, target: Path) -> Iterator[Path]:
        """The project's modules (tests aside) whose text can run a training step and that import
        ``target``, found by its name in their text."""
        self.autocast_uses("")  # the manifest pass notes which modules may train
        name = (target.parent.name if target.name == "__init__.py" else target.stem).encode()
        for path in self._may_train:
            if path == target:
                continue
            try:
                if name not in path.read_bytes():
                    continue
            except OSError:
                continue
            modules = (self.module_facts(path) or {}).get("imported_modules", ())
            if any(self._module_path(path, module) == target for module in modules):
                yield path

    def _modules_imported_from(self, roots: set[Path]) -> set[Path]:
        reached = set(roots)
        work = list(roots)
        visited = 0
        while work and visited < _MAX_CLOSURE:
            visited += 1
            path = work.pop()
            for module in (self.module_facts(path) or {}).get("imported_modules", ()):
                target = self._module_path(path, module)
                if target is not None and target not in reached:
                    reached.add(target)
                    work.append(target)
        return reached

    def may_run_low_precision(self) -> bool:
        """Some module of the project, tests included, so much as mentions a low precision (float16,
        bfloat16, ``.half()``, fp16/bf16 options, autocast, apex's amp). A project that never does runs
        its models in float32 only."""
        self.autocast_uses("")  # reads every module once
        return self._any_low_precision or not self.python_files()  # a tree too large to read: unknown

    def star_bindings(self, from_path: str, module: str) -> dict[str, str]:
        """The names ``from <module> import *`` binds, with what they are (``torch`` -> ``torch``)."""
        try:
            target = self._module_path(Path(from_path).resolve(), module)
            facts = self.module_facts(target) if target else None
            if not facts:
                return {}
            names = dict(facts["imports"])
            prefix = module if module.endswith(".") else module + "."
            for name in [*facts["functions"], *facts["classes"]]:
                if "." not in name:
                    names.setdefault(name, prefix + name)
            return {name: value for name, value in names.items() if not name.startswith("_")}
        except Exception:  # noqa: BLE001
            return {}

    # ---------------------------------------------------------------- module summaries
    def module_facts(self, path: Path) -> dict | None:
        if path in self._facts:
            return self._facts[path]
        facts = None
        try:
            stat = path.stat()
            key = self._relative(path)
            facts = self.cache.get(key, stat.st_size, stat.st_mtime_ns) if self.cache else None
            if facts is None:
                facts = _summarise(path)
                if facts is not None and self.cache:
                    self.cache.put(key, stat.st_size, stat.st_mtime_ns, facts)
        except OSError:
            facts = None
        self._facts[path] = facts
        return facts

    def _may_define(self, path: Path, qualname: str) -> bool:
        """Whether the module's text names ``qualname``'s first part at all (a definition, an import that
        re-exports it): summarising a large module to learn that ``torch.matmul`` is not defined in
        Python there is the costliest thing a cold index does, and its bytes say so first."""
        if path in self._facts:
            return True
        head = qualname.partition(".")[0]
        key = (path, head)
        found = self._mentions.get(key)
        if found is None:
            try:
                found = self._mentions[key] = head.encode() in path.read_bytes()
            except OSError:
                found = self._mentions[key] = False
        return found

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    # ---------------------------------------------------------------- resolving references
    def _module_path(self, from_path: Path, module: str) -> Path | None:
        """The file a module name means, imported from ``from_path`` (one leading dot per level)."""
        key = (from_path.parent, module)
        if key in self._modules:
            return self._modules[key]
        found = None
        level = len(module) - len(module.lstrip("."))
        parts = [part for part in module[level:].split(".") if part]
        if level:
            base = from_path.parent
            for _ in range(level - 1):
                base = base.parent
            bases = [base]
        else:
            bases = [folder for folder in (from_path.parent, *from_path.parent.parents) if self._within(folder)]
            bases.append(self.root / "src")
        for base in bases:
            candidate = base.joinpath(*parts) if parts else base
            for path in (candidate.with_suffix(".py") if parts else None, candidate / "__init__.py"):
                if path is not None and path.is_file() and self._within(path):
                    found = path.resolve()
                    break
            if found:
                break
        if found is None and not level and len(parts) > 1:
            found = self._only_module_ending_with(parts)
        self._modules[key] = found
        return found

    def _only_module_ending_with(self, parts: list[str]) -> Path | None:
        """The one module of the project whose path ends with ``parts`` (``lib/utils/utils.py`` for
        ``utils.utils``), for a dotted import the folders above the importer do not resolve: the project
        puts a folder on ``sys.path`` itself (``_init_paths.py``, ``sys.path.insert(0, "../lib")``).
        None when no module, or more than one, ends so: then the import means something else."""
        if self._suffixes is None:
            suffixes: dict[tuple[str, ...], list[Path]] = {}
            for path in self.python_files():
                names = path.relative_to(self.root).with_suffix("").parts
                if names and names[-1] == "__init__":
                    names = names[:-1]
                for start in range(len(names) - 1):
                    suffixes.setdefault(tuple(names[start:]), []).append(path)
            self._suffixes = suffixes
        matches = self._suffixes.get(tuple(parts), [])
        return matches[0].resolve() if len(matches) == 1 else None

    def _within(self, path: Path) -> bool:
        try:
            path.relative_to(self.root)
            return True
        except ValueError:
            return False

    def _split(self, from_path: Path, qualified: str) -> tuple[Path, str] | None:
        """``models.yolo.Model`` -> (models/yolo.py, ``Model``): the longest module prefix that is a file."""
        level = len(qualified) - len(qualified.lstrip("."))
        parts = qualified[level:].split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = "." * level + ".".join(parts[:cut])
            path = self._module_path(from_path, module)
            if path is not None:
                return path, ".".join(parts[cut:])
        if level and len(parts) == 1:  # `from . import helper`: the package's own __init__
            path = self._module_path(from_path, "." * level)
            if path is not None:
                return path, parts[0]
        return None

    def _lookup(self, from_path: Path, reference: str, kind: str, depth: int = 0) -> tuple[dict, Path, str] | None:
        """The entry of ``kind`` ("functions" or "classes") a reference names, following re-exports
        (``from .trainer import Trainer`` in a package's ``__init__``)."""
        if depth > _MAX_CHAIN or reference.startswith("@"):
            return None
        split = self._split(from_path, reference)
        if split is None:
            return None
        path, qualname = split
        if not self._may_define(path, qualname):
            return None
        facts = self.module_facts(path)
        if not facts:
            return None
        entry = facts[kind].get(qualname)
        if entry is not None:
            return entry, path, qualname
        head, _, rest = qualname.partition(".")
        exported = facts["imports"].get(head)
        if exported:
            return self._lookup(path, exported + ("." + rest if rest else ""), kind, depth + 1)
        return None

    def _function_facts(self, from_path: Path, reference: str, depth: int) -> dict | None:
        if depth > _MAX_CHAIN:
            return None
        owner, _, member = reference.rpartition(".")
        found = self._lookup(from_path, reference, "functions")
        if found is None and member == "__call__":
            cls = self._lookup(from_path, owner, "classes")
            if cls is None:
                return None
            _, path, qualname = cls
            facts = self.module_facts(path) or {}
            methods = [facts["functions"].get(f"{qualname}.{name}") for name in ("__call__", "forward")]
            entries = [(entry, path) for entry in methods if entry is not None]
        elif found is not None:
            entries = [(found[0], found[1])]
        else:
            return None
        merged: dict = {flag: False for flag in _FLAGS}
        # the function's own facts; for an instance call, `__call__` and `forward` must both agree
        positions = [set(entry.get("float32_parameters") or ()) for entry, _ in entries]
        merged["float32_parameters"] = sorted(set.intersection(*positions)) if positions else []
        merged["autocast_float32_ops"] = any(entry.get("autocast_float32_ops", True) for entry, _ in entries)
        merged["saves_optimizer_without_scaler"] = any(entry.get("saves_optimizer_without_scaler") for entry, _ in entries)
        merged["saved_parameters"] = sorted({i for entry, _ in entries for i in entry.get("saved_parameters") or ()})
        for entry, path in entries:
            for flag in _FLAGS:
                merged[flag] = merged[flag] or bool(entry.get(flag))
            if "returns_states" in entry:
                merged["returns_states"] = entry["returns_states"]
            if not all(merged[flag] for flag in ("trains", "scales_loss", "steps")):
                for callee in entry.get("calls", ()):
                    if callee.startswith("@"):
                        continue
                    chased = self._function_facts(path, callee, depth + 1)
                    for flag in ("trains", "scales_loss", "steps_scaler", "steps"):
                        merged[flag] = merged[flag] or bool(chased and chased.get(flag))
                    merged["autocast_float32_ops"] = merged["autocast_float32_ops"] or bool(
                        chased is None or chased.get("autocast_float32_ops", True)
                    )
        return merged

    # ---------------------------------------------------------------- autocast, project-wide
    def python_files(self) -> list[Path]:
        """The project's modules: every .py file under the root, less hidden folders, virtual
        environments, build output and nested projects (folders with their own marker)."""
        if self._files is None:
            files: list[Path] = []
            for folder, subfolders, names in os.walk(self.root):
                current = Path(folder)
                subfolders[:] = [
                    name
                    for name in subfolders
                    if not name.startswith(".")
                    and name not in _SKIPPED_DIRECTORIES
                    and not (current / name / "pyvenv.cfg").exists()
                    and not any((current / name / marker).exists() for marker in ROOT_MARKERS)
                ]
                files += [current / name for name in names if name.endswith(".py")]
                if len(files) > _MAX_FILES:
                    files = []
                    break
            self._files = files
        return self._files

    def _compute_autocast_uses(self) -> dict[Path, dict[str, object]]:
        from .summaries import RegionInfo, merged_region_info

        uses: dict[Path, dict[str, RegionInfo]] = defaultdict(dict)
        work: list[tuple[Path, str]] = []

        def add(path: Path, qualname: str, info: RegionInfo) -> None:
            kept = merged_region_info(uses[path].get(qualname), info)
            if kept is not None:
                uses[path][qualname] = kept
                work.append((path, qualname))

        manifest = self.cache.manifest() if self.cache else {}
        changed = False
        unsearched: list[tuple[Path, str]] = []
        for path in self.python_files():
            path = path.resolve()
            key = self._relative(path)
            try:
                stat = path.stat()
            except OSError:
                continue
            known = manifest.get(key)
            if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
                mentions, low_precision, may_train = known[2], known[3], known[4]
            else:
                try:
                    source = path.read_bytes()
                except OSError:
                    continue
                mentions = _may_open_autocast(source)
                # once one module says it, the project runs in low precision: the rest need not be
                # searched (None: not searched), unless that module changes (see below)
                low_precision = None if self._any_low_precision else _says_low_precision(source)
                may_train = _TRAINING_TEXT.search(source) is not None
                manifest[key] = [stat.st_size, stat.st_mtime_ns, mentions, low_precision, may_train]
                changed = True
            self._any_low_precision = self._any_low_precision or bool(low_precision)
            if low_precision is None:
                unsearched.append((path, key))
            if may_train and not is_test_module(path, self.root):
                self._may_train.append(path)
            if not mentions:
                continue
            if is_test_module(path, self.root):
                # Tests open autocast to exercise code on purpose, as they exercise hazards: what they
                # call is no evidence of what runs under autocast. That the project uses autocast at all,
                # they do say, and their text is enough to say it.
                self._any_autocast = True
                continue
            facts = self.module_facts(path)
            if (facts or {}).get("has_autocast"):
                self._any_autocast = True
                self._autocast_modules.add(path)
            for reference, device, dtype, line, steps in (facts or {}).get("autocast_calls", ()):
                info = RegionInfo(device, dtype, f"{key}:{line}", steps)
                for target, qualname in self._targets(path, reference):
                    add(target, qualname, info)
        for path, key in unsearched if not self._any_low_precision else ():
            # the module that said it has changed and no longer does: ask the others after all
            try:
                found = _says_low_precision(path.read_bytes())
            except OSError:
                continue
            manifest[key][3] = found
            changed = True
            if found:
                self._any_low_precision = True
                break
        if changed and self.cache:
            self.cache.save_manifest(manifest)
        visited = 0
        while work and visited < _MAX_CLOSURE:
            visited += 1
            path, qualname = work.pop()
            facts = self.module_facts(path) or {}
            info = uses[path][qualname]
            for reference in facts.get("functions", {}).get(qualname, {}).get("calls", ()):
                for target, target_name in self._targets(path, reference):
                    add(target, target_name, info)
        return uses

    def _targets(self, from_path: Path, reference: str) -> list[tuple[Path, str]]:
        """The (file, qualified name) of each function a reference runs."""
        if reference.startswith("@"):
            path, qualname = from_path, reference[1:]
        else:
            split = self._split(from_path, reference)
            if split is None:
                return []
            path, qualname = split
            if not self._may_define(path, qualname):
                return []
        facts = self.module_facts(path)
        if not facts:
            return []
        owner, _, member = qualname.rpartition(".")
        if member == "__call__":
            return [(path, f"{owner}.{name}") for name in ("__call__", "forward") if f"{owner}.{name}" in facts["functions"]]
        if qualname in facts["functions"]:
            return [(path, qualname)]
        head, _, rest = qualname.partition(".")
        exported = facts["imports"].get(head)
        if exported and not reference.startswith("@"):
            return self._targets(path, exported + ("." + rest if rest else "")) if exported != reference else []
        return []


# A module can open an autocast region only if its text shows one of these: a `with` or a decorator that
# names autocast (also `with amp_autocast():`, a `partial` of it), a call of autocast itself (`ctx =
# torch.autocast(...)`, a helper returning one, `partial(torch.autocast, ...)`), or an import of it under
# another name. Mentions such as
# `torch.is_autocast_enabled()` or a docstring do not; reading only these keeps a cold index cheap (in
# torch's own source, 26 of the 68 modules that say "autocast").
_MAY_OPEN_AUTOCAST = re.compile(
    rb"^[ \t]*(?:async[ \t]+)?with\b[^\n]*autocast|^[ \t]*@[^\n]*autocast|(?<![\w])autocast[ \t]*[(,)]"
    rb"|^[ \t]*(?:from|import)\b[^\n]*\bautocast\b",
    re.M,
)


# A module whose text can run a training step: its functions may train what it imports.
_TRAINING_TEXT = re.compile(rb"\.backward\(|\.step\(")
_LOW_PRECISION_TEXT = re.compile(rb"float16|bfloat16|\.half\(|torch\.half\b|\b[fb]p16\b|16-mixed|autocast|\bamp\b|HalfTensor", re.I)


def _says_low_precision(source: bytes) -> bool:
    """The module's code (not a comment: ``# With Amp, it isn't necessary to convert data to half``)
    mentions a low-precision format, autocast, an fp16/bf16 option or apex's amp."""
    position = 0
    while (match := _LOW_PRECISION_TEXT.search(source, position)) is not None:
        line_start = source.rfind(b"\n", 0, match.start()) + 1
        if b"#" not in source[line_start : match.start()]:
            return True
        position = source.find(b"\n", match.end())
        if position < 0:
            return False
    return False


def _may_open_autocast(source: bytes) -> bool:
    return b"autocast" in source and _MAY_OPEN_AUTOCAST.search(source) is not None


def _summarise(path: Path) -> dict | None:
    """The module's facts, from its own analysis alone (other modules are asked at query time)."""
    from .module_analysis import ModuleAnalysis
    from .summaries import Summaries

    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
        analysis = ModuleAnalysis(tree, path=str(path))
        try:
            return analysis.derived(Summaries).module_facts()
        finally:
            analysis.release()
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return None
    except Exception:  # noqa: BLE001 - a module the summaries cannot read is skipped, never fatal
        return None


class _DiskCache:
    """Per-module facts on disk, keyed by path, size and modification time; failures only disable it."""

    def __init__(self, directory: Path) -> None:
        self.base = directory
        self.directory = directory / f"v{_SCHEMA}-{__version__}"
        self.enabled = True

    def _entry(self, key: str) -> Path:
        return self.directory / "modules" / (hashlib.sha1(key.encode()).hexdigest() + ".json")

    def get(self, key: str, size: int, mtime: int) -> dict | None:
        if not self.enabled:
            return None
        try:
            data = json.loads(self._entry(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("path") == key and data.get("size") == size and data.get("mtime_ns") == mtime:
            return data.get("facts")
        return None

    def put(self, key: str, size: int, mtime: int, facts: dict) -> None:
        self._write(self._entry(key), {"path": key, "size": size, "mtime_ns": mtime, "facts": facts})

    def manifest(self) -> dict:
        if not self.enabled:
            return {}
        try:
            data = json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_manifest(self, manifest: dict) -> None:
        self._write(self.directory / "manifest.json", manifest)

    def _write(self, target: Path, data: dict) -> None:
        if not self.enabled:
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            ignore = self.base / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# created by flake8-amp: its project index cache\n*\n", encoding="utf-8")
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
            os.replace(temporary, target)
        except OSError:
            self.enabled = False  # a read-only checkout: lint on, without a disk cache
