"""Shared by the whole-pipeline tests: a fresh-clone copy of the repo, the env, a runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATASETS = ("line", "synthetic", "diabetes", "digits", "fashion_mnist")


def run(
    cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    res = subprocess.run(
        cmd, cwd=cwd, env=env or pipeline_env(), capture_output=True, text=True, **kw
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def copy_repo(dest: Path) -> Path:
    """What a fresh clone holds: tracked + untracked-but-not-ignored files, as a new git repo."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = pipeline_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, dest, env)
    return dest


def clone_reproduced(src: Path, dest: Path) -> Path:
    """A private copy of an already reproduced repo (outputs, DVC cache, git, mlflow.db)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def pipeline_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.setdefault("GIT_AUTHOR_NAME", "t")
    env.setdefault("GIT_AUTHOR_EMAIL", "t@example.com")
    env.setdefault("GIT_COMMITTER_NAME", "t")
    env.setdefault("GIT_COMMITTER_EMAIL", "t@example.com")
    env.update(extra)
    return env
