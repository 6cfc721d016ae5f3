"""Faults in a real pipeline: a failing stage, SIGKILL mid-write, concurrent runs, a broken lock.

Each test works in its own copy of the session's reproduced repo.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import clone_reproduced, pipeline_env, run

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(reproduced, tmp_path) -> Path:
    return clone_reproduced(reproduced[0], tmp_path / "repo")


@pytest.fixture
def env(tmp_path) -> dict:
    # MLflow runs of these tests stay out of the shared repo's store.
    return pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")


def md5s(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def temp_files(repo: Path) -> list[Path]:
    skip = (repo / ".git", repo / ".dvc")
    return [p for p in repo.rglob("*.tmp") if not any(p.is_relative_to(s) for s in skip)]


def _entries(lock: Path | str) -> dict:
    text = lock.read_text() if isinstance(lock, Path) else lock
    stages = yaml.safe_load(text)["stages"]
    return {k: v for k, v in stages.items() if k != "validate"}


def lock_entry(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]


def dvc_status(repo: Path, env: dict, *targets: str) -> dict:
    return json.loads(run(["dvc", "status", "--json", *targets], repo, env).stdout)


def test_failing_stage_leaves_its_lock_entry_and_earlier_outputs_untouched(repo, env):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["regression"]["lr"] = 1e4  # diverges during training
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    lock = (repo / "dvc.lock").read_text()
    earlier = md5s(repo / "data/raw/line.npz") | md5s(repo / "data/prepared/line")

    res = run(["dvc", "repro", "evaluate@line"], repo, env, check=False)

    assert res.returncode != 0
    assert "linflow train: error: training diverged" in res.stdout + res.stderr
    assert "Running stage 'evaluate@line'" not in res.stdout  # stopped at the failure
    # No entry written, none changed -- but validate's, which checked the edited params.yaml
    assert _entries(repo / "dvc.lock") == _entries(lock)
    assert md5s(repo / "data/raw/line.npz") | md5s(repo / "data/prepared/line") == earlier
    assert temp_files(repo) == []
    # DVC cleared the stage's outputs before running it; it wrote none back
    assert not (repo / "models/line/model.safetensors").exists()
    assert "train@line" in dvc_status(repo, env, "train@line")


KILL_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path

target = sys.argv[1]
real = Path.write_bytes

def write_half_then_die(self, data):
    if Path(target).name in self.name:  # the temp file of the output we kill on
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, data)

Path.write_bytes = write_half_then_die
from linflow.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("stage", "out", "victim", "cmd"),
    [
        ("prepare@line", "data/raw/line.npz", "line.npz", "prepare line --out data/raw/line.npz"),
        (
            "split@line",
            "data/prepared/line",
            "val.npz",  # after train.npz is complete
            "split line --raw data/raw/line.npz --out data/prepared/line",
        ),
    ],
    ids=["file-output", "folder-output"],
)
def test_sigkill_mid_write_leaves_nothing_dvc_would_accept(repo, env, stage, out, victim, cmd):
    lock = lock_entry(repo, stage)
    run(["rm", "-rf", out], repo, env)  # what `dvc repro` does before running the stage
    res = run(
        [sys.executable, "-c", KILL_WHILE_WRITING, victim, *cmd.split()], repo, env, check=False
    )
    assert res.returncode == -9

    final = repo / out / victim if (repo / out).is_dir() else repo / out
    assert not final.exists()  # never a half-written file under the output's name
    leftovers = [p.name for p in temp_files(repo)]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{victim}.")
    assert stage in dvc_status(repo, env, stage)  # DVC sees the stage as not done

    run(["dvc", "repro", stage], repo, env)  # the next run repairs it
    assert lock_entry(repo, stage) == lock and dvc_status(repo, env, stage) == {}
    # A leftover temp file beside a file output is ignored by git and DVC alike
    # (.gitignore, .dvcignore); inside a folder output DVC removed it with the folder.
    for tmp in temp_files(repo):
        assert run(["git", "check-ignore", "-q", str(tmp)], repo, env, check=False).returncode == 0
        assert (repo / out).is_file()
    assert run(["git", "status", "--porcelain"], repo, env).stdout.strip() in ("", "M dvc.lock")


# A second `dvc repro` while one runs: see test_verify.py, whose forced re-run is
# the first one (and must stay bit-identical).


def test_wait_for_lock_waits_for_the_repository_lock(repo, env):
    from dvc.lock import make_lock

    def repro(*flags: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["dvc", *flags, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    lock = make_lock(str(repo / ".dvc/tmp/lock"), tmp_dir=str(repo / ".dvc/tmp"))
    lock.lock()  # what a running `dvc repro` holds between stage commands
    try:
        refused, waiting = repro(), repro("--wait-for-lock")
        refused_out, refused_err = refused.communicate(timeout=60)  # DVC retries ~3 s
        time.sleep(1)
        assert waiting.poll() is None  # still waiting, not failed
    finally:
        lock.unlock()
    out, err = waiting.communicate(timeout=120)
    assert refused.returncode != 0 and "Unable to acquire lock" in refused_err
    assert waiting.returncode == 0, err
    assert "Data and pipelines are up to date" in out


@pytest.mark.parametrize(
    "text",
    ["schema: '2.0'\nstages:\n  prepare@line: [unclosed\n", "schema: '2.0'\nstages: 5\n"],
    ids=["not-yaml", "wrong-shape"],
)
def test_corrupted_lock_fails_loudly(repo, env, text):
    (repo / "dvc.lock").write_text(text)
    for cmd in (["dvc", "status"], ["dvc", "repro"]):
        res = run(cmd, repo, env, check=False)
        assert res.returncode != 0, cmd
        assert "dvc.lock' is invalid" in res.stderr or "dvc.lock' validation failed" in res.stderr
        assert "Running stage" not in res.stdout
    res = run(["linflow", "verify"], repo, env, check=False)
    assert res.returncode == 1 and "Running stage" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("linflow verify: error: dvc.lock: not ")


def _workspace(repo: Path) -> dict[str, str]:
    """Every file DVC or git tracks outside .git/.dvc, with its md5."""
    skip = (repo / ".git", repo / ".dvc")
    return {
        str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and not any(p.is_relative_to(s) for s in skip)
    }


def test_a_misspelled_params_section_fails_any_repro_in_one_line(repo, env):
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text + "\nrefrence:\n  max_iter: 10\n")
    before = _workspace(repo)
    res = run(["dvc", "repro"], repo, env, check=False)
    assert res.returncode != 0
    assert "linflow validate: error: params.yaml: refrence is not a known key (misspelled?)" in (
        res.stdout + res.stderr
    )
    assert _workspace(repo) == before  # nothing ran, nothing was deleted


def test_a_bad_experiment_param_fails_before_any_output_is_deleted(repo, env):
    before = _workspace(repo)
    res = run(["dvc", "exp", "run", "-S", "train.classification.lr=abc"], repo, env, check=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "linflow validate: error: params.yaml: train.classification.lr" in out
    assert "Running stage 'validate'" in out and "Running stage 'train@digits'" not in out
    after = _workspace(repo)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == ["params.yaml"]  # the experiment's own edit, and nothing else
    assert (repo / "models/digits/model.safetensors").is_file()
    assert (repo / "reports/digits/history.csv").is_file()
