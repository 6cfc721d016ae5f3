"""The warm worker (preload.py): same bytes, same exit codes, same signal handling as
running a stage in its own process; and it never outlives its usefulness."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from linflow.launch import worker as preload

ROOT = Path(__file__).resolve().parents[1]
LINFLOW = [sys.executable, "-m", "linflow"]


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    """An environment whose `linflow` stages go to a private worker, and its paths."""
    folder = tmp_path_factory.mktemp("preload")
    folder.chmod(0o700)
    extra = {
        "LINFLOW_PRELOAD": "1",
        "LINFLOW_PRELOAD_DIR": str(folder),
        "LINFLOW_PRELOAD_IDLE": "60",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in extra.items():
            mp.setenv(k, v)
        sock, _, log = preload._paths()  # the key of this very environment
        env = dict(os.environ)
    yield env, Path(sock), Path(log)
    for pid in worker_pids(Path(log)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _private_worker(folder: Path, **extra: str) -> tuple[dict, Path, Path, Path]:
    """An environment whose stages go to a worker in the private `folder` (made here):
    (env, its socket, lock and log paths)."""
    folder.mkdir(mode=0o700)
    env = dict(os.environ, LINFLOW_PRELOAD="1", LINFLOW_PRELOAD_DIR=str(folder), **extra)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("LINFLOW_PRELOAD", "LINFLOW_PRELOAD_DIR", *extra):
            mp.setenv(k, env[k])
        sock, lock, log = map(Path, preload._paths())
    return env, sock, lock, log


def worker_pids(log: Path) -> set[int]:
    text = log.read_text() if log.exists() else ""
    return {int(p) for p in re.findall(r"preload: pid (\d+): group", text)}


def start_worker(env: dict, sock: Path, log: Path) -> None:
    """The first stage starts the worker (and runs itself); wait until it has it all."""
    if sock.exists() and "group 3/3" in (log.read_text() if log.exists() else ""):
        return
    subprocess.run([*LINFLOW, "--help"], env=env, capture_output=True, check=True)
    for _ in range(2):  # the second stage of one parent starts the worker
        res = subprocess.run(
            [*LINFLOW, "report", "x", "--reports", "/nonexistent", "--out", "/nonexistent/s.md"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1  # ran here, failing cleanly
    deadline = time.time() + 60
    while time.time() < deadline:
        if sock.exists() and log.exists() and "group 3/3" in log.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"the worker did not get ready: {log.read_text() if log.exists() else ''}")


def served(log: Path, *argv: str) -> bool:
    return f"linflow {' '.join(argv)}" in log.read_text()


def md5s(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_used_only_under_dvc_unless_asked(monkeypatch):
    monkeypatch.delenv("LINFLOW_PRELOAD", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert not preload.wanted(["train", "line"])
    monkeypatch.setenv("DVC_STAGE", "train@line")
    assert preload.wanted(["train", "line", "--data", "d"])
    assert preload.wanted(["--params", "p.yaml", "train", "line"])
    assert not preload.wanted(["train", "--help"])
    assert not preload.wanted(["verify"])
    monkeypatch.setenv("LINFLOW_PRELOAD", "0")
    assert not preload.wanted(["train", "line"])
    monkeypatch.delenv("DVC_STAGE")
    monkeypatch.setenv("LINFLOW_PRELOAD", "1")
    assert preload.wanted(["train", "line"])


def test_a_folder_other_users_can_write_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("LINFLOW_PRELOAD_DIR", str(shared))
    assert preload._paths() is None
    assert preload.run(["train", "line"]) is None  # runs in its own process instead


def test_a_folder_that_cannot_be_made_is_no_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LINFLOW_PRELOAD_DIR", str(tmp_path / "file" / "sub"))
    assert preload._paths() is None
    assert preload.run(["train", "line"]) is None


@pytest.mark.ci  # ~30 s of stages with and without the worker: make test-ci (CI) runs it,
# keeping make test under 10 minutes; the e2e tests run every stage through the worker
def test_outputs_are_byte_identical_with_and_without_the_worker(tmp_path, worker_env):
    env, sock, log = worker_env
    start_worker(env, sock, log)
    here = dict(env, LINFLOW_PRELOAD="0")
    for name, e in (("here", here), ("worker", env)):
        out = tmp_path / name
        model_io = ["--data", str(out / "prepared"), "--model", str(out / "model")]
        model_io += ["--reports", str(out / "reports")]
        stages = [
            ["prepare", "line", "--out", str(out / "raw.npz")],
            ["split", "line", "--raw", str(out / "raw.npz"), "--out", str(out / "prepared")],
            ["train", "line", *model_io],
            ["evaluate", "line", *model_io],
        ]
        for argv in stages:
            res = subprocess.run([*LINFLOW, *argv], env=e, cwd=ROOT, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
            assert f"{argv[0]} line" in res.stderr  # the stage's log reached our stderr
            assert served(log, *argv) == (name == "worker"), argv
    assert md5s(tmp_path / "here") == md5s(tmp_path / "worker")
    assert len(md5s(tmp_path / "here")) >= 10


def test_a_stage_error_is_one_line_and_exit_1_through_the_worker(tmp_path, worker_env):
    env, sock, log = worker_env
    start_worker(env, sock, log)
    params = tmp_path / "params.yaml"
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"]["regression"]["lr"] = -0.1
    params.write_text(yaml.safe_dump(p))
    argv = ["--params", str(params), "prepare", "line", "--out", str(tmp_path / "raw.npz")]
    res = subprocess.run([*LINFLOW, *argv], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert served(log, *argv)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"linflow prepare: error: {params}: train.regression.lr must be a finite float > 0, "
        "got -0.1"
    ]
    assert not (tmp_path / "raw.npz").exists()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits")
    env = dict(os.environ, LINFLOW_PRELOAD="0")
    for argv in (
        ["prepare", "digits", "--out", str(base / "raw.npz")],
        ["split", "digits", "--raw", str(base / "raw.npz"), "--out", str(base / "prepared")],
    ):
        subprocess.run([*LINFLOW, *argv], env=env, cwd=ROOT, check=True, capture_output=True)
    return base / "prepared"


def _runs(alias: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(f"linflow-{alias}")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def _long_training(tmp_path: Path, digits: Path, alias: str, env: dict) -> subprocess.Popen:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"]["classification"].update(epochs=100000, batch_size=8)
    p["datasets"][alias] = p["datasets"]["digits"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p))
    argv = ["--params", str(params), "train", alias, "--data", str(digits)]
    argv += ["--model", str(tmp_path / "m"), "--reports", str(tmp_path / "r")]
    _runs(alias)  # the store exists (migrated) before the stage and our polls meet it
    proc = subprocess.Popen([*LINFLOW, *argv], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        client, runs = _runs(alias)
        if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
            return proc
        time.sleep(0.3)
    proc.kill()
    pytest.fail("training never started logging")


def test_sigterm_to_the_client_reaches_the_stage(tmp_path, worker_env, digits):
    env, sock, log = worker_env
    start_worker(env, sock, log)
    proc = _long_training(tmp_path, digits, "digits_wterm", env)
    assert served(log, "--params", str(tmp_path / "params.yaml"), "train", "digits_wterm")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "linflow train: interrupted"
    (run,) = _runs("digits_wterm")[1]
    assert run.info.status == "KILLED"
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_a_killed_client_takes_its_stage_with_it(tmp_path, worker_env, digits):
    """SIGKILL cannot be forwarded: the worker sees the client go and stops the stage."""
    env, sock, log = worker_env
    start_worker(env, sock, log)
    proc = _long_training(tmp_path, digits, "digits_wkill", env)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        (run,) = _runs("digits_wkill")[1]
        if run.info.status != "RUNNING":
            break
        time.sleep(0.3)
    assert run.info.status == "KILLED"
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_stale_socket_falls_back_and_an_idle_worker_exits(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    extra = {"LINFLOW_PRELOAD": "1", "LINFLOW_PRELOAD_DIR": str(folder)}
    extra["LINFLOW_PRELOAD_IDLE"] = "1"
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    sock, _, log = map(Path, preload._paths())
    import socket

    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))  # a socket file nobody listens on: a worker that died
    dead.close()
    argv = ["prepare", "line", "--out", str(tmp_path / "raw.npz")]
    res = subprocess.run([*LINFLOW, *argv], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "raw.npz").is_file()  # ran here
    time.sleep(2)
    assert not log.exists()  # the first stage of a parent starts no worker
    res = subprocess.run([*LINFLOW, *argv], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0  # the second ran here too, and started one
    deadline = time.time() + 60
    while time.time() < deadline and "group 3/3" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    pids = worker_pids(log)
    assert pids, "no worker was started"
    deadline = time.time() + 30  # idle for 1 s: it leaves, and takes its socket along
    while time.time() < deadline and (sock.exists() or any(_alive(p) for p in pids)):
        time.sleep(0.2)
    assert not sock.exists()
    assert not any(_alive(p) for p in pids)
    assert not log.exists()  # housekeeping: a worker that leaves takes its log along


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _stage_pids(log: Path) -> set[int]:
    return {int(p) for p in re.findall(r"preload: stage pid (\d+):", log.read_text())}


def test_a_killed_worker_takes_its_stage_with_it(tmp_path, digits):
    """kill -9 of the worker mid-stage: the stage gets SIGTERM (parent-death signal),
    ends its run KILLED and writes nothing; no process of it survives."""
    env, sock, _, log = _private_worker(tmp_path / "w", LINFLOW_PRELOAD_IDLE="60")
    start_worker(env, sock, log)
    proc = _long_training(tmp_path, digits, "digits_worker_kill", env)
    (stage,) = _stage_pids(log)
    for pid in worker_pids(log):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "the preload worker went away during the stage" in stderr
    deadline = time.time() + 30
    while time.time() < deadline and _alive(stage):
        time.sleep(0.2)
    assert not _alive(stage)
    (run,) = _runs("digits_worker_kill")[1]
    assert run.info.status == "KILLED", stderr
    assert run.data.tags["linflow.failure"] == "interrupted (Ctrl-C or SIGTERM)"
    time.sleep(2)  # the old behaviour wrote the model seconds later
    assert not (tmp_path / "m").exists()


def _worker_off_lines(env: dict, out: Path, stages: int) -> list[str]:
    """`stages` prepare stages started by one parent (as by one `dvc repro`); the lines
    of their stderr that say the warm worker is off."""
    argv = ["prepare", "line", "--out", str(out)]
    code = (
        "import subprocess, sys\n"
        f"for _ in range({stages}): subprocess.run([sys.executable, '-m', 'linflow', *{argv!r}])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    return [ln for ln in res.stderr.splitlines() if "warm worker is off" in ln]


def test_a_folder_that_is_not_private_turns_the_worker_off_saying_so_once(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # as another user's pre-created folder would be: not private
    env = dict(os.environ, LINFLOW_PRELOAD="1", LINFLOW_PRELOAD_DIR=str(folder))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # Two stages of one parent (as of one `dvc repro`): one line, from the first.
    lines = _worker_off_lines(env, tmp_path / "raw.npz", stages=2)
    assert lines == [
        f"linflow: the warm worker is off: {folder} is not a private folder of this user "
        f"(owner uid {os.getuid()}, mode 755); every stage pays its imports (~5 s). "
        "Remove it, or set LINFLOW_PRELOAD_DIR to a folder of your own."
    ]
    assert (tmp_path / "raw.npz").is_file()  # the stage ran, here
    assert list(folder.iterdir()) == []  # and nothing went into the folder


@pytest.mark.parametrize("what", ["sock", "lock"])
def test_a_folder_blocking_the_socket_path_turns_the_worker_off_saying_so_once(tmp_path, what):
    """A folder where the worker's socket (or lock) should be: no worker can start there;
    the stages run here, and the first says so once, with the path and the fix."""
    env, sock, lock, log = _private_worker(
        tmp_path / "preload", XDG_CACHE_HOME=str(tmp_path / "cache")
    )
    blocked = sock if what == "sock" else lock
    (blocked / "something").mkdir(parents=True)
    lines = _worker_off_lines(env, tmp_path / "raw.npz", stages=3)
    kind = "socket" if what == "sock" else "lock file"
    assert lines == [
        f"linflow: the warm worker is off: {blocked} is a folder where its {kind} should be; "
        f"every stage pays its imports (~5 s). Remove it (rm -r {blocked}), or set "
        "LINFLOW_PRELOAD_DIR to a folder of your own."
    ]
    assert (tmp_path / "raw.npz").is_file()  # the stages ran, here
    assert not log.exists()  # no worker was started to fail


def test_a_file_where_the_socket_should_be_is_replaced_by_the_worker(tmp_path):
    env, sock, _, log = _private_worker(tmp_path / "preload", LINFLOW_PRELOAD_IDLE="5")
    sock.write_text("not a socket")
    try:
        start_worker(env, sock, log)
        assert sock.is_socket()
    finally:
        for pid in worker_pids(log):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
