"""The project index: facts from the project's other modules, cached on disk, never a failure of the
file being linted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flake8_amp.analysis import project_index
from flake8_amp.analysis.project_index import CACHE_DIRECTORY, ProjectIndex, find_root
from flake8_amp.engine import LintOptions, lint_source

PROJECTS = Path(__file__).resolve().parent.parent / "fixtures" / "projects"
HELPER_PROJECT = PROJECTS / "amp007_helper_in_another_module"


@pytest.fixture
def project(tmp_path):
    """A copy of the AMP007 helper project: attention_utils.py has a -1e30 fill that is float16 only
    because train.py runs it under autocast, two modules away."""
    target = tmp_path / "project"
    shutil.copytree(HELPER_PROJECT, target, ignore=shutil.ignore_patterns(CACHE_DIRECTORY))
    ProjectIndex.forget()
    yield target
    ProjectIndex.forget()


def lint(path: Path, **options) -> list[str]:
    """The findings with every rule running: the facts here are AMP007's, a preview rule."""
    findings = lint_source(path.read_text(), LintOptions(preview=True, **options), path=str(path))
    return [f"{f.line}:{f.col + 1} {f.code}" for f in findings]


def test_the_root_is_the_nearest_folder_with_a_marker(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "m.py").write_text("")
    assert find_root(tmp_path / "a" / "b" / "m.py") is None or find_root(tmp_path / "a" / "b" / "m.py") != tmp_path / "a"
    for marker in ("pyproject.toml", "setup.cfg", "setup.py", ".git"):
        (tmp_path / "a" / marker).mkdir() if marker == ".git" else (tmp_path / "a" / marker).write_text("")
        assert find_root(tmp_path / "a" / "b" / "m.py") == (tmp_path / "a").resolve()
        shutil.rmtree(tmp_path / "a" / marker) if marker == ".git" else (tmp_path / "a" / marker).unlink()


def test_a_fact_two_modules_away_makes_the_finding(project):
    assert lint(project / "attention_utils.py") == ["8:31 AMP007"]


def test_with_the_index_off_the_file_is_linted_alone_and_nothing_is_written(project):
    assert lint(project / "attention_utils.py", project_index=False) == []
    assert not (project / CACHE_DIRECTORY).exists()


def test_a_second_run_parses_nothing_that_did_not_change(project, monkeypatch):
    summarised = []
    original = project_index._summarise
    monkeypatch.setattr(project_index, "_summarise", lambda path: summarised.append(path.name) or original(path))
    assert lint(project / "attention_utils.py") == ["8:31 AMP007"]
    assert sorted(summarised) == ["attention_utils.py", "model.py", "train.py"]
    ignore = project / CACHE_DIRECTORY / ".gitignore"
    assert ignore.read_text().splitlines()[-1] == "*"  # the cache keeps itself out of version control

    ProjectIndex.forget()  # a new process
    summarised.clear()
    assert lint(project / "attention_utils.py") == ["8:31 AMP007"]
    assert summarised == []

    ProjectIndex.forget()
    train = project / "train.py"
    train.write_text(train.read_text().replace("dtype=torch.float16", "dtype=torch.bfloat16"))
    assert lint(project / "attention_utils.py") == []  # bfloat16 has float32's range
    assert summarised == ["train.py"]


@pytest.mark.parametrize(
    "source, may_open",
    [
        (b"with torch.autocast('cuda'):\n    y = model(x)\n", True),
        (b"with (\n    torch.cuda.device(d),\n    torch.amp.autocast(d, enabled=e),\n):\n    pass\n", True),
        (b"@torch.autocast('cuda')\ndef step(x): ...\n", True),
        (b"from torch.cuda.amp import autocast as ac\nwith ac():\n    pass\n", True),
        (b"ctx = partial(torch.autocast, device_type='cuda')\n", True),
        (b"with amp_autocast():\n    pass\n", True),
        (b"if torch.is_autocast_enabled():\n    dtype = torch.get_autocast_dtype('cuda')\n", False),
        (b'"""Runs the model; autocast is the caller\'s business."""\n', False),
    ],
)
def test_only_modules_whose_text_can_open_a_region_are_read_for_autocast_uses(source, may_open):
    assert project_index._may_open_autocast(source) is may_open


def test_a_module_that_does_not_name_a_reference_is_not_summarised_for_it(project, monkeypatch):
    (project / "big.py").write_text("import torch\n\n\ndef unrelated():\n    return torch.ones(1)\n")
    summarised = []
    original = project_index._summarise
    monkeypatch.setattr(project_index, "_summarise", lambda path: summarised.append(path.name) or original(path))
    index = ProjectIndex.for_file(project / "train.py")
    assert index.function_facts(str(project / "train.py"), "big.matmul") is None
    assert "big.py" not in summarised
    assert index.function_facts(str(project / "train.py"), "big.unrelated") is not None
    assert "big.py" in summarised


def test_files_that_cannot_be_read_or_parsed_are_skipped(project, monkeypatch):
    (project / "broken.py").write_text("import torch\nwith torch.autocast('cuda'):\n    def (:\n")
    (project / "latin1.py").write_bytes(b"# \xe9\nimport torch\n")
    original = Path.read_bytes

    def unreadable(path):
        if path.name == "model.py":
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    # model.py cannot be read: the chain train.py -> model.py -> attention_utils.py is cut, quietly
    assert lint(project / "attention_utils.py") == []
    assert lint(project / "train.py") == []


def test_an_index_that_fails_never_fails_the_file_being_linted(project, monkeypatch):
    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ProjectIndex, "_compute_autocast_uses", broken)
    assert lint(project / "attention_utils.py") == []  # no fact from elsewhere, no AMP000 either


def test_a_read_only_project_is_linted_without_a_disk_cache(project):
    (project / CACHE_DIRECTORY).write_text("not a folder")  # every write into the cache fails
    assert lint(project / "attention_utils.py") == ["8:31 AMP007"]


def test_module_names_resolve_like_python_imports(tmp_path):
    root = tmp_path / "repo"
    for name, text in {
        "pyproject.toml": "",
        "src/pkg/__init__.py": "from .trainer import Trainer\n",
        "src/pkg/trainer.py": "class Trainer:\n    pass\n",
        "src/pkg/sub/mod.py": "",
        "scripts/train.py": "",
        "scripts/helpers.py": "",
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    index = ProjectIndex(root.resolve(), cache=False)
    mod = (root / "src/pkg/sub/mod.py").resolve()
    script = (root / "scripts/train.py").resolve()
    assert index._module_path(mod, "..trainer") == (root / "src/pkg/trainer.py").resolve()
    assert index._module_path(mod, "pkg.trainer") == (root / "src/pkg/trainer.py").resolve()  # src layout
    assert index._module_path(script, "helpers") == (root / "scripts/helpers.py").resolve()  # the script's folder
    assert index._module_path(script, "missing") is None
    # `from pkg import Trainer` reaches the class through the package's re-export
    assert index.class_facts(str(script), "pkg.Trainer") == {
        "owns_scaler": False, "state_dict": None, "inherits_state_dict": False, "bases": [], "autograd_function": False
    }


def test_nested_projects_and_virtual_environments_are_not_part_of_the_project(tmp_path):
    root = tmp_path / "repo"
    for name in ("setup.cfg", "a.py", "sub/setup.py", "sub/b.py", ".venv/lib/c.py", "env/pyvenv.cfg", "env/d.py"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    names = sorted(path.name for path in ProjectIndex(root.resolve(), cache=False).python_files())
    assert names == ["a.py"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_flake8_finds_the_same_with_one_or_two_jobs(project, jobs):
    result = subprocess.run(
        [sys.executable, "-m", "flake8", "--select", "AMP", "--amp-preview=on", f"--jobs={jobs}", "."],
        capture_output=True, text=True, cwd=project,
    )
    assert result.stderr == ""
    assert [line.split(" AMP007")[0] for line in result.stdout.splitlines()] == ["./attention_utils.py:8:31:"]


def test_pylint_finds_it_too_and_honours_its_option(project):
    from linter_runs import pylint_findings, run_pylint

    paths = sorted(project.glob("*.py"))
    assert {(name, line, code) for name, line, _, code in pylint_findings(run_pylint(paths, "--amp-preview=y"))} == {
        ("attention_utils.py", 8, "AMP007")
    }
    assert pylint_findings(run_pylint(paths, "--amp-preview=y", "--amp-project-index=n")) == set()


def test_whether_the_project_mentions_a_low_precision_anywhere(tmp_path):
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "model.py").write_text("import torch\n\nscores = torch.zeros(2).masked_fill(torch.ones(2).bool(), -1e9)\n")
    ProjectIndex.forget()
    assert ProjectIndex(root).may_run_low_precision() is False
    # a comment is no code that runs anything in low precision (Deformable-DETR's "With Amp, it isn't
    # necessary to manually convert data to half")
    (root / "tests" / "test_model.py").write_text("# runs the model in fp16 too\nimport torch\n")
    ProjectIndex.forget()
    assert ProjectIndex(root).may_run_low_precision() is False
    # a mention in code anywhere counts, a test's included
    (root / "tests" / "test_model.py").write_text("import torch\nmodel = torch.nn.Linear(2, 2).half()  # fp16\n")
    ProjectIndex.forget()
    assert ProjectIndex(root).may_run_low_precision() is True
    ProjectIndex.forget()


def test_a_project_stops_running_low_precision_only_when_no_module_says_it_any_more(tmp_path):
    # once one module says it, the others are not searched; the cache must not keep that shortcut when
    # the module that said it changes
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    for name in ("a", "b", "c", "d"):
        (root / f"{name}.py").write_text("import torch\n")
    (root / "b.py").write_text("import torch\nDTYPE = torch.float16\n")
    (root / "c.py").write_text("import torch\nDTYPE = torch.bfloat16\n")

    def mentions() -> bool:
        ProjectIndex.forget()
        return ProjectIndex(root).may_run_low_precision()

    assert mentions() is True
    (root / "b.py").write_text("import torch\n\nDTYPE = torch.float32\n")
    assert mentions() is True  # c.py still says it, searched or not the first time
    (root / "c.py").write_text("import torch\n\nDTYPE = torch.float32\n")
    assert mentions() is False
    (root / "d.py").write_text("import torch\nx = torch.ones(2).half()\n")
    assert mentions() is True
    ProjectIndex.forget()


def test_which_modules_a_module_opening_autocast_imports(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "setup.cfg").write_text("")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "kernels.py").write_text("import torch\n")
    (root / "pkg" / "model.py").write_text("import torch\nfrom .kernels import *\nfrom pkg import layers\n")
    (root / "pkg" / "layers.py").write_text("import torch\n")
    (root / "pkg" / "fused.py").write_text("import torch\n")
    (root / "train.py").write_text('import torch\nimport pkg.model\n\nwith torch.autocast("cuda"):\n    pass\n')
    (root / "bf16_train.py").write_text("import torch\nfrom pkg.fused import op\n")
    # a test opens autocast to exercise code on purpose: what it imports is no evidence
    (root / "tests" / "test_fused.py").write_text('import torch\nfrom pkg.fused import op\n\nwith torch.autocast("cuda"):\n    op()\n')
    ProjectIndex.forget()
    index = ProjectIndex(root)
    reached = {path.name for path in root.rglob("*.py") if index.reached_from_autocast(str(path))}
    # through `import pkg.model`, then its relative and `from pkg import` imports (which load the package)
    assert reached == {"train.py", "model.py", "kernels.py", "layers.py", "__init__.py"}
    ProjectIndex.forget()
