"""Throwaway servers for the team tests: a PostgreSQL cluster and an `mlflow server` on it.

Both listen on free 127.0.0.1 ports and are stopped (then their files removed) when
their ``with`` block ends, also on failure. PostgreSQL refuses to run as root: as
root the cluster belongs to the ``postgres`` user (Debian's package creates it; else
``nobody``), its commands run through ``runuser``, and its folder lies outside
pytest's root-only tmp folders.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _as_owner(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@contextlib.contextmanager
def postgres_cluster(database: str = "mlflow") -> Iterator[str]:
    """A fresh cluster with `database`; yields its URI (postgresql://mlflow@127.0.0.1:<port>/...)."""
    bindir = postgres_bin()
    assert bindir is not None, "PostgreSQL's initdb was not found"
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            user = "nobody"
    home = Path(tempfile.mkdtemp(prefix="linflow-pg-"))
    data, port = home / "data", free_port()
    if user:
        entry = pwd.getpwnam(user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        subprocess.run(
            _as_owner(
                [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow",
                 "-E", "UTF8", "--no-sync"],
                user,
            ),
            check=True, capture_output=True, cwd=home,
        )  # fmt: skip
        opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_owner(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w",
                 "-t", "60", "-o", opts, "start"],
                user,
            ),
            check=True, capture_output=True, cwd=home,
        )  # fmt: skip
        started = True
        import psycopg

        with psycopg.connect(
            f"postgresql://mlflow@127.0.0.1:{port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql://mlflow@127.0.0.1:{port}/{database}"
    finally:
        if started:
            res = subprocess.run(
                _as_owner(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    user,
                ),
                capture_output=True, cwd=home,
            )  # fmt: skip
            pidfile = data / "postmaster.pid"
            if res.returncode != 0 and pidfile.exists():  # pg_ctl could not: end it ourselves
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    """Until `url`/health answers; an AssertionError with the log's tail if `proc`
    exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise AssertionError(f"{what} did not start ({url}):\n{tail}") from None
            time.sleep(0.5)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout: float = 180) -> Iterator[str]:
    """`mlflow server` on `backend_uri`, serving `artifacts`; yields its http:// URL."""
    port = free_port()
    log = artifacts.parent / f"mlflow-server-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout, "mlflow server")
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
