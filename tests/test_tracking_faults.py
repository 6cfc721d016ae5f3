"""Tracking under faults, each made real: a full disk under the store, a stage
killed with SIGKILL, a tracking server that answers runs/create too slowly.

After each: no run of the test's store is left RUNNING, no stage process survives.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from tests.test_robustness import tiny_filesystem

ROOT = Path(__file__).resolve().parents[1]
LINFLOW = [sys.executable, "-m", "linflow"]


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    base = tmp_path_factory.mktemp("line")
    env = dict(os.environ, LINFLOW_PRELOAD="0")
    for argv in (
        ["prepare", "line", "--out", str(base / "raw.npz")],
        ["split", "line", "--raw", str(base / "raw.npz"), "--out", str(base / "prepared")],
    ):
        subprocess.run([*LINFLOW, *argv], env=env, cwd=ROOT, check=True, capture_output=True)
    return base / "prepared"


def _train(line: Path, out: Path, uri: str, params: Path | None = None, **popen):
    env = dict(os.environ, LINFLOW_PRELOAD="0", MLFLOW_TRACKING_URI=uri)
    env.update(popen.pop("env", {}))
    argv = [*LINFLOW] + (["--params", str(params)] if params else [])
    argv += ["train", "line", "--data", str(line)]
    argv += ["--model", str(out / "m"), "--reports", str(out / "r")]
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def _wait_for_logging(uri: str, *pids: int) -> None:
    """Until the store's one run has metrics (training is under way); else kill `pids`."""
    deadline = time.time() + 60
    while time.time() < deadline:
        _, runs = _all_runs(uri)
        if runs and runs[0].data.metrics:
            return
        time.sleep(0.3)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    pytest.fail("training never started logging")


def _all_runs(uri: str):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments(view_type=ViewType.ALL)
    if not exps:
        return client, []
    runs = client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)
    return client, runs


def test_a_full_disk_under_the_store_is_one_line_with_the_cause(tmp_path, line):
    with tiny_filesystem("3m") as mnt:
        uri = f"sqlite:///{mnt}/mlflow.db"
        first = _train(line, tmp_path / "a", uri)
        assert first.wait(60) == 0, first.stderr.read()  # the store exists, then the disk fills
        with open(mnt / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        proc = _train(line, tmp_path / "b", uri)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert stderr.strip().splitlines()[-1] == (
            f"linflow train: error: MLflow store {uri} failed: database or disk is full"
        )
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 3
        assert not (tmp_path / "b" / "m").exists()
        (mnt / "filler").unlink()
        import sqlite3

        with contextlib.closing(sqlite3.connect(mnt / "mlflow.db")) as db:  # no cached engine:
            statuses = [s for (s,) in db.execute("SELECT status FROM runs")]  # the mount must go
        assert statuses == ["FINISHED"]


def _long_training(tmp_path: Path, line: Path, uri: str, base_params: dict):
    p = copy.deepcopy(base_params)
    p["train"]["regression"].update(epochs=10**7, batch_size=1)
    params = tmp_path / "long.yaml"
    params.write_text(yaml.safe_dump(p))
    # A terminal's Ctrl-C reaches a process with the default SIGINT handler; a shell
    # running the tests in the background may have left it ignored.
    victim = _train(
        line,
        tmp_path / "a",
        uri,
        params,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_logging(uri, victim.pid)
    return victim, params


def _validate(tmp_path: Path, params: Path, uri: str) -> subprocess.CompletedProcess:
    """`linflow validate`: the first stage of any repro after a params change."""
    out = tmp_path / "validate"
    return subprocess.run(
        [*LINFLOW, "--params", str(params), "validate", "--out", str(out / "marker"),
         "--names", str(out / "names"), "--lock", str(out / "dvc.lock")],
        env=dict(os.environ, LINFLOW_PRELOAD="0", MLFLOW_TRACKING_URI=uri),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_killed_stages_run_is_closed_by_the_next_command_that_opens_the_store(
    tmp_path, line, base_params
):
    """kill -9 mid-training, then a repro whose train DVC restores from its run cache:
    no training starts, yet validate (first stage of every repro after a params change)
    closes the run; so does any other command opening the store (_client reconciles)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    victim, params = _long_training(tmp_path, line, uri, base_params)
    try:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        victim.kill()
    (run,) = _all_runs(uri)[1]
    assert run.info.status == "RUNNING"  # nothing could close it
    assert run.data.tags["linflow.pid"] == str(victim.pid)
    res = _validate(tmp_path, params, uri)
    assert res.returncode == 0, res.stderr
    assert f"of process {victim.pid} was left RUNNING: marked KILLED" in res.stderr
    assert "validate: 1 MLflow run(s) of killed processes marked KILLED" in res.stderr
    client, runs = _all_runs(uri)
    assert [r.info.status for r in runs] == ["KILLED"]
    reason = client.get_run(run.info.run_id).data.tags["linflow.failure"]
    assert reason.startswith(f"process {victim.pid} on ") and "ended without closing" in reason
    assert not (tmp_path / "a" / "m").exists()
    # With no dead run, validate does not import mlflow (it stays a sub-second stage).
    probe = "import sys, linflow.cli as c\ntry:\n    c.main(sys.argv[1:])\nfinally:\n"
    probe += "    print('mlflow' in sys.modules)"
    out = tmp_path / "v2"
    res = subprocess.run(
        [sys.executable, "-c", probe, "--params", str(params), "validate", "--out",
         str(out / "m"), "--names", str(out / "n"), "--lock", str(out / "l")],
        env=dict(os.environ, LINFLOW_PRELOAD="0", MLFLOW_TRACKING_URI=uri),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "False", res


def test_ctrl_c_while_another_process_locks_the_store_stops_within_seconds(
    tmp_path, line, base_params
):
    """Another process holds the sqlite store's write lock (a mlflow.db-journal exists)
    when Ctrl-C comes: MLflow waits up to 20 s per statement, the stage must not. It
    exits within 10 s saying the run stays RUNNING, and the next command that opens
    the store (validate here) marks it KILLED."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    victim, params = _long_training(tmp_path, line, uri, base_params)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE experiments SET name = name")  # a real write: the journal
        assert (tmp_path / "mlflow.db-journal").exists()
        time.sleep(3)  # the stage's next flush (every 2 s) now waits on the lock
        t0 = time.monotonic()
        victim.send_signal(signal.SIGINT)
        _, stderr = victim.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        victim.kill()
        holder.execute("ROLLBACK")
        holder.close()
    assert victim.returncode == 130 and took < 10, (took, stderr)
    assert stderr.strip().splitlines()[-1] == "linflow train: interrupted", stderr
    assert "stays RUNNING until the next linflow command that opens the store" in stderr
    assert "Traceback" not in stderr
    (run,) = _all_runs(uri)[1]
    assert run.info.status == "RUNNING"
    res = _validate(tmp_path, params, uri)
    assert res.returncode == 0, res.stderr
    assert _all_runs(uri)[0].get_run(run.info.run_id).info.status == "KILLED"
    assert not (tmp_path / "a" / "m").exists()


def test_reconcile_leaves_live_processes_and_other_hosts_alone(tmp_path):
    from mlflow import MlflowClient

    from linflow.core import tracking

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("linflow-x")
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    try:
        runs = {
            name: client.create_run(
                exp, tags={tracking.PID_TAG: str(pid), tracking.HOST_TAG: h}
            ).info.run_id
            for name, pid, h in (
                ("dead", dead.pid, host),
                ("alive", alive.pid, host),
                ("elsewhere", dead.pid, "another-host"),
            )
        }
        assert tracking.reconcile(client) == [runs["dead"]]
        status = {k: client.get_run(v).info.status for k, v in runs.items()}
        assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    finally:
        alive.kill()
        alive.wait()
    assert tracking.reconcile(client) == [runs["alive"]]
    for run_id in runs.values():  # leave nothing RUNNING behind
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


class _SlowCreate(http.server.BaseHTTPRequestHandler):
    """A proxy in front of a real MLflow server that answers the first runs/create
    only after the client has given up waiting (the server has made the run)."""

    upstream: int = 0
    delay: float = 0.0
    delayed = threading.Event()

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if self.path.endswith("/runs/create") and not self.delayed.is_set():
            self.delayed.set()
            time.sleep(self.delay)
        try:
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client timed out and left

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ci  # a real mlflow server: make test-ci
def test_a_create_retried_against_a_slow_server_leaves_one_run(tmp_path, line):
    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
            "--default-artifact-root", (tmp_path / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    proxy = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        handler = type("H", (_SlowCreate,), {"upstream": port, "delay": 4.0})
        handler.delayed = threading.Event()
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{proxy.server_address[1]}"
        env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
        proc = _train(line, tmp_path / "a", uri, env=env)
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert handler.delayed.is_set()  # the slow answer really happened
        assert "a duplicate made by a retried request" in stderr
        _, runs = _all_runs(f"http://127.0.0.1:{port}")
        active = [r for r in runs if r.info.lifecycle_stage == "active"]
        assert [r.info.status for r in active] == ["FINISHED"]
        assert all(r.info.status != "RUNNING" for r in runs)
        assert "train_seconds" in active[0].data.metrics
    finally:
        if proxy is not None:
            proxy.shutdown()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_a_stage_whose_dvc_is_killed_stops_instead_of_training_on(tmp_path, line, base_params):
    """kill -9 of `dvc` (here a stand-in parent process) mid-stage: the stage gets
    SIGTERM (parent-death signal), ends its run KILLED and writes nothing."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = copy.deepcopy(base_params)
    p["train"]["regression"].update(epochs=10**7, batch_size=1)
    params = tmp_path / "long.yaml"
    params.write_text(yaml.safe_dump(p))
    argv = [*LINFLOW, "--params", str(params), "train", "line", "--data", str(line)]
    argv += ["--model", str(tmp_path / "m"), "--reports", str(tmp_path / "r")]
    env = dict(os.environ, LINFLOW_PRELOAD="0", MLFLOW_TRACKING_URI=uri, DVC_STAGE="train@line")
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({argv!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    dvc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    stage = int(dvc.stdout.readline())
    _wait_for_logging(uri, stage, dvc.pid)
    dvc.send_signal(signal.SIGKILL)
    dvc.wait(30)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(stage):
        time.sleep(0.2)
    assert not _alive(stage)
    (run,) = _all_runs(uri)[1]
    assert run.info.status == "KILLED"
    assert run.data.tags["linflow.failure"] == "interrupted (Ctrl-C or SIGTERM)"
    assert not (tmp_path / "m").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_closing_a_run_waits_out_a_locked_database(tmp_path, monkeypatch, caplog):
    """Another process holds the store's write lock (6.5 s) while a run is being closed:
    the close waits it out and the run ends KILLED, not RUNNING. (MLflow's sqlite store
    itself waits: a 20 s lock was waited out too; linflow's retries in _end are for a
    store that gives up, and reconcile() for one that stays locked.)"""
    import sqlite3
    import threading

    from linflow.core import tracking

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    run = tracking.TrainingRun("locked", "locked-torch", {"a": 1}, {}).__enter__()
    released = threading.Event()

    def hold_lock() -> None:
        con = sqlite3.connect(db)
        con.execute("BEGIN EXCLUSIVE")
        released.wait(6.5)  # longer than pysqlite's default busy timeout (5 s)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    time.sleep(0.3)
    try:
        with caplog.at_level("WARNING"):
            run._end("KILLED", "interrupted (Ctrl-C or SIGTERM)")
    finally:
        released.set()
        holder.join()
    from mlflow import MlflowClient

    got = MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(run.run_id)
    assert got.info.status == "KILLED"
    assert not [r for r in caplog.records if "could not mark" in r.getMessage()]


_FIRST_RUN = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
from linflow.core import tracking
client = tracking._client()
exp = client.create_experiment(sys.argv[2])
client.set_terminated(client.create_run(exp).info.run_id)
"""


def test_processes_creating_a_fresh_store_at_once_leave_it_working(tmp_path):
    """`dvc queue start -j 2` in a fresh clone: two stages create the sqlite store at
    the same moment. Unserialised, their schema migrations left it broken for good
    ("table _alembic_tmp_latest_metrics already exists")."""
    db = tmp_path / "mlflow.db"
    go = tmp_path / "go"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_RUN, str(go), f"linflow-race{i}"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    time.sleep(3)  # all three have imported and wait at the line
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(e[-800:] for e in errors)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    names = {e.name for e in client.search_experiments()}
    assert {f"linflow-race{i}" for i in range(3)} <= names
