"""The pre-commit hooks, installed by pre-commit from this checkout as a hook repository. pre-commit's pip
builds the package (hatchling, flake8 and pylint come from the package index, as in any pre-commit use)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
_IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "build", "dist", "*.png")
BUGGY = "import torch\n\nscaler = torch.amp.GradScaler('cuda')\nold = torch.cuda.amp.GradScaler()\n"
CLEAN = "import torch\n\nscaler = torch.amp.GradScaler('cuda')\n"
# What each hook prints for BUGGY's line 4 (flake8 columns are 1-based, pylint's 0-based).
EXPECTED_OUTPUT = {
    "flake8-amp": "train.py:4:7: AMP013 deprecated torch.cuda.amp.GradScaler",
    "pylint-amp": "train.py:4:6: C5113: AMP013 deprecated torch.cuda.amp.GradScaler",
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def hook_repository(tmp_path_factory) -> Path:
    """This checkout as committed files (the working tree may hold uncommitted changes)."""
    hook_repo = tmp_path_factory.mktemp("hook") / "flake8-amp"
    shutil.copytree(REPOSITORY, hook_repo, ignore=_IGNORED)
    git(hook_repo, "init", "-q")
    git(hook_repo, "add", "-A")
    git(hook_repo, "commit", "-q", "-m", "snapshot")
    return hook_repo


def test_the_repository_declares_both_hooks():
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((REPOSITORY / ".pre-commit-hooks.yaml").read_text())
    assert {hook["id"]: hook["entry"] for hook in hooks} == {
        "flake8-amp": "flake8 --select AMP",
        "pylint-amp": "pylint --load-plugins pylint_amp --disable=all --enable=amp --score=n",
    }
    assert all(hook["language"] == "python" and hook["types"] == ["python"] for hook in hooks)


@pytest.mark.skipif(shutil.which("pre-commit") is None, reason="pre-commit is not installed")
@pytest.mark.parametrize("hook_id", sorted(EXPECTED_OUTPUT))
def test_the_hook_fails_on_a_hazard_and_passes_on_clean_code(hook_repository, tmp_path_factory, hook_id):
    project = tmp_path_factory.mktemp("project")
    (project / "train.py").write_text(BUGGY)
    git(project, "init", "-q")
    git(project, "add", "-A")
    cache = hook_repository.parent / "pre-commit-home"  # one per session: the hooks' environments are reused
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache), "PIP_NO_INPUT": "1", "PIP_DEFAULT_TIMEOUT": "100"}

    def try_repo() -> subprocess.CompletedProcess:
        command = ["pre-commit", "try-repo", str(hook_repository), hook_id, "--all-files"]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, env=env, timeout=600)

    buggy = try_repo()
    assert buggy.returncode == 1, buggy.stdout + buggy.stderr
    assert EXPECTED_OUTPUT[hook_id] in buggy.stdout

    (project / "train.py").write_text(CLEAN)
    git(project, "add", "-A")
    clean = try_repo()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout
