"""The pre-commit hook, installed by pre-commit from this checkout as a hook repository (no network
beyond the package index pre-commit's pip uses to build the hook's environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
_IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "build", "dist", "*.png")

pytestmark = pytest.mark.skipif(shutil.which("pre-commit") is None, reason="pre-commit is not installed")


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


def test_the_hook_fails_on_a_hazard_and_passes_on_clean_code(hook_repository, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(
        "import torch\n\nscaler = torch.amp.GradScaler('cuda')\nold = torch.cuda.amp.GradScaler()\n"
    )
    git(project, "init", "-q")
    git(project, "add", "-A")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "PIP_NO_INPUT": "1"}

    def try_repo() -> subprocess.CompletedProcess:
        command = ["pre-commit", "try-repo", str(hook_repository), "flake8-amp", "--all-files"]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, env=env, timeout=600)

    run = try_repo()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "train.py:4:7: AMP013" in run.stdout

    (project / "train.py").write_text("import torch\n\nscaler = torch.amp.GradScaler('cuda')\n")
    git(project, "add", "-A")
    clean = try_repo()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout
