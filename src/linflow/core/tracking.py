"""MLflow tracking: the ONLY module that imports mlflow.

Store: ``sqlite:///<repo root>/mlflow.db`` with artifacts in
``<repo root>/mlartifacts``, the same for ``dvc repro``, ``dvc exp run`` and
``--temp``/queued experiments (which run in ``<repo>/.dvc/tmp/exps/...``);
``MLFLOW_TRACKING_URI`` overrides it. One run per dataset per training, in
experiment ``linflow-<dataset>``. Later stages find the run by the tag
``linflow.weights_md5`` (the hash of the weights it produced), never through a
run id stored in a DVC output.

A run ends FINISHED only when its block completed; an exception leaves it
FAILED with tag ``linflow.failure`` holding the one-line reason;
KeyboardInterrupt / SIGTERM leave it KILLED.

Every call to the store runs on one thread of its own (``_on_store``) while the
stage's thread waits for it, interruptibly: a store that another process holds
locked (MLflow's sqlite store waits up to 20 s per statement) never keeps Ctrl-C
from stopping a stage. An interrupted run gets ``INTERRUPT_GRACE_S`` to be closed
KILLED; a store still busy then leaves it RUNNING, and the next linflow command
that opens the store closes it (``reconcile``, run once per process by
``_client``; ``close_dead_runs`` for commands that do not otherwise open it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from linflow.core.errors import Interrupted, TrackingError

log = logging.getLogger(__name__)

__all__ = [
    "TrackingError",
    "Interrupted",
    "repo_root",
    "tracking_uri",
    "redact",
    "version",
    "TrainingRun",
    "log_to_training_run",
]

WEIGHTS_TAG = "linflow.weights_md5"
FAILURE_TAG = "linflow.failure"
KIND_TAG = "linflow.kind"  # 'training' or 'reference'
ADOPTED_TAG = "linflow.results_from"  # run (or outputs) whose test/compare results this one holds
REFERENCE_TAG = "linflow.reference_md5"  # a reference run's key: the md5 of its reference.json
PUBLISHED_TAG = "linflow.published"  # what `linflow publish` made or added to a run
PID_TAG, HOST_TAG = "linflow.pid", "linflow.host"  # the process that owns a RUNNING run
RUN_KEY_TAG = "linflow.run_key"  # one per create_run call: finds the copies a retry made
EPOCH_BATCH = 900  # metrics per log_batch call (MLflow accepts at most 1000)
EPOCH_FLUSH_S = 2.0
INTERRUPT_GRACE_S = 3.0  # how long an interrupted stage tries to close its run


class _StoreThread:
    """The one thread that talks to the store; callers wait for it interruptibly
    (a lock acquisition is interrupted by signals on POSIX, a blocked sqlite call is not)."""

    def __init__(self) -> None:
        import queue

        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="linflow-store", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._calls.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller, raised there
                box.append((False, exc))
            done.set()

    def call(self, fn, timeout: float | None = None):
        """fn() on the store thread; TimeoutError when it has not returned by `timeout`."""
        if threading.current_thread() is self.thread:
            return fn()
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        if not done.wait(timeout):
            raise TimeoutError(f"the MLflow store did not answer within {timeout} s")
        ok, value = box[0]
        if ok:
            return value
        raise value


_STORE: _StoreThread | None = None
_STORE_LOCK = threading.Lock()


def _on_store(fn, *args, timeout: float | None = None, **kwargs):
    """fn(*args, **kwargs) on the store thread (started on first use)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = _StoreThread()
    return _STORE.call(lambda: fn(*args, **kwargs), timeout)


def _store_call(fn):
    """Decorator: the function runs on the store thread."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _on_store(fn, *args, **kwargs)

    return wrapper


def repo_root(cwd: Path | None = None) -> Path:
    """The user's repository root, also from inside a DVC temp/queued experiment."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp" and parts[i + 2] == "exps":
            return Path(*parts[:i])
    for d in (cwd, *cwd.parents):
        if (d / "dvc.yaml").is_file() or (d / ".dvc").is_dir():
            return d
    return cwd


def version(dist: str) -> str:
    """An installed distribution's version for a run's tags ('unknown' if absent)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(dist)
    except PackageNotFoundError:
        return "unknown"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """The URI without credentials (user:password@ or token query values)."""
    uri = re.sub(r"//[^/@]*@", "//***@", uri)
    return re.sub(r"(?i)((?:token|password|secret|key)=)[^&]*", r"\1***", uri)


def check_driver(uri: str) -> None:
    """A one-line TrackingError when a database URI's driver is not installed.

    SQLAlchemy picks the driver of a bare ``postgresql://`` itself (psycopg 3 from
    SQLAlchemy 2.1 on, psycopg2 before); ``postgresql+<driver>://`` names it.
    MLflow would otherwise fail deep inside SQLAlchemy with ``No module named ...``.
    """
    import importlib.util

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "postgres":
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {redact(uri)}: scheme 'postgres://' is not understood by "
            "SQLAlchemy; write postgresql:// (or postgresql+psycopg2://)"
        )
    if not scheme.startswith("postgresql"):
        return
    try:
        from sqlalchemy.engine import make_url

        driver = make_url(uri).get_dialect().driver
    except Exception as exc:
        raise TrackingError(f"MLFLOW_TRACKING_URI {redact(uri)}: {_one_line(exc)}") from None
    pip = _PG_DRIVERS.get(driver, driver)
    if importlib.util.find_spec(driver) is None:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {redact(uri)} needs the PostgreSQL driver '{driver}', which "
            f"is not installed: pip install 'linflow[server]' (or {pip!r})"
            if driver == "psycopg"
            else f"MLFLOW_TRACKING_URI {redact(uri)} needs the PostgreSQL driver '{driver}', "
            f"which is not installed: pip install {pip!r}, or use postgresql:// with "
            "pip install 'linflow[server]'"
        )


# SQLAlchemy's driver name -> the package that brings it.
_PG_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}


def _client():
    check_driver(tracking_uri())
    # Fail fast against a dead server instead of MLflow's default ~minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A pipeline stage makes no network calls of its own: no usage telemetry (MLflow 3
    # sends it by default; set MLFLOW_DISABLE_TELEMETRY=false to allow it).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    # The store's own error logs repeat, with tracebacks, what _wrap says in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        client = _create_sqlite_store(uri, _sqlite_path(uri))
    else:
        client = MlflowClient(tracking_uri=uri)
    if uri not in _RECONCILED:  # any command that opens the store closes dead runs
        _RECONCILED.add(uri)
        try:
            reconcile(client)
        except Exception as exc:  # the command's own first call says what is wrong
            log.debug("reconcile: %s", _one_line(exc))
    return client


_RECONCILED: set[str] = set()  # the stores this process has reconciled


def _sqlite_path(uri: str) -> Path:
    """The database file of a sqlite:/// URI."""
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def _dead_runs_in_sqlite(db: Path) -> int:
    """How many runs the sqlite store `db` holds RUNNING for processes of this host that
    are gone: read-only, without importing mlflow (milliseconds)."""
    import sqlite3

    if not db.is_file():
        return 0
    host = socket.gethostname().replace("'", "")
    query = (
        "select p.value from runs r join tags p on p.run_uuid = r.run_uuid and p.key = ? "
        "join tags h on h.run_uuid = r.run_uuid and h.key = ? "
        "where r.status = 'RUNNING' and h.value = ?"
    )
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            pids = [row[0] for row in con.execute(query, (PID_TAG, HOST_TAG, host))]
        finally:
            con.close()
    except sqlite3.Error:
        return 0  # no store yet, another schema, locked: nothing to do cheaply
    return sum(1 for pid in pids if pid.isdigit() and not _alive(int(pid)))


def close_dead_runs() -> list[str]:
    """Mark KILLED the runs left RUNNING by processes of this host that are gone, for a
    command that does not otherwise open the store (``linflow validate``, ``make ui``).
    Against the local sqlite store it imports mlflow only when there is such a run; a
    server is asked. Returns the run ids it ended; a store it cannot reach is no error."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not _dead_runs_in_sqlite(_sqlite_path(uri)):
        return []

    def reconciled() -> list[str]:
        _RECONCILED.add(uri)  # here, keeping the ids (_client would do it again otherwise)
        return reconcile(_client())

    try:
        return _on_store(reconciled, timeout=30)
    except Exception as exc:
        log.debug("close_dead_runs: %s", _one_line(exc))
        return []


def _create_sqlite_store(uri: str, db: Path):
    """A client of the sqlite store `db`, created (or migrated) one process at a time.


    MLflow builds a new store's schema with alembic migrations, which two processes
    must not run at once: two stages of `dvc queue start -j 2` in a fresh clone
    both did, and the store was left broken for good ("table
    _alembic_tmp_latest_metrics already exists" on every later run). An exclusive
    lock on <db>-init.lock (ignored by git like mlflow.db-*) makes the second wait
    for the first, then find the schema at its head.
    """
    import fcntl

    from mlflow import MlflowClient

    if not db.parent.is_dir():
        return MlflowClient(tracking_uri=uri)  # MLflow's own error says so, through _wrap
    with open(db.parent / f"{db.name}-init.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri)
            try:
                client.search_experiments(max_results=1)  # the store exists from here on
            except Exception as exc:  # a broken store: the caller's first call says why
                log.debug("creating the store %s: %s", db, _one_line(exc))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:  # a zombie has ended its work
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reconcile(client) -> list[str]:
    """End the runs left RUNNING by linflow processes of this host that are gone.

    A stage killed by SIGKILL, a machine that lost power, or a KILLED write that
    met a locked database leaves its run RUNNING. Runs carry the pid and host
    that created them (tags PID_TAG, HOST_TAG); every new run first marks those
    whose process no longer exists KILLED, with the reason in FAILURE_TAG.
    Runs of other hosts (a team server) are left to their own host.
    Returns the run ids it ended.
    """
    exps = client.search_experiments(filter_string="name LIKE 'linflow-%'")
    if not exps:
        return []
    host = socket.gethostname().replace("'", "")
    stale = client.search_runs(
        [e.experiment_id for e in exps],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=200,
    )
    ended = []
    for run in stale:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or _alive(int(pid)) or int(pid) == os.getpid():
            continue
        client.set_tag(
            run.info.run_id,
            FAILURE_TAG,
            f"process {pid} on {host} ended without closing this run (killed?); "
            "reconciled when a later linflow command opened the store",
        )
        client.set_terminated(run.info.run_id, status="KILLED")
        ended.append(run.info.run_id)
        log.warning(
            "MLflow run %s of process %s was left RUNNING: marked KILLED", run.info.run_id, pid
        )
    return ended


# A database driver's own message inside SQLAlchemy's text: "(sqlite3.OperationalError)
# database or disk is full" -- the cause a user can act on.
_DRIVER_LINE = re.compile(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)[\w.]*\) (.+)")


def _one_line(exc: BaseException) -> str:
    """The one line that says why `exc` happened.

    Looks through the exception and its causes for a database driver's message
    (MLflow and SQLAlchemy wrap it in lines about autoflush and SQL), else takes
    the exception's first line.
    """
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(seen):  # the innermost cause first
        for line in str(e).splitlines():
            m = _DRIVER_LINE.search(line)
            if m:
                return m.group(1).strip()[:500]
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _experiment_id(client, dataset: str) -> str:
    name = f"linflow-{dataset}"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # A sqlite store keeps its artifacts beside the database file, a database server
    # named directly (postgresql://) in the repo's mlartifacts/ -- not in ./mlruns of
    # whatever folder the stage ran in (a `dvc exp run --temp` copy is deleted after);
    # an mlflow server decides itself.
    artifact_location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        artifact_location = (db.parent / "mlartifacts" / name).as_uri()
    elif uri.split(":", 1)[0].startswith(("postgresql", "mysql", "mssql")):
        artifact_location = (repo_root() / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif value is not None:  # a knob that does not apply (an unset override) is not a param
        out[prefix] = str(value)


def changed_from_committed(params_path: str | Path, dataset: str, current: Mapping) -> dict:
    """What differs, for `dataset`, between `current` (flat, as logged) and the same
    view of the params file committed at HEAD: {key: value now}. {} when there is
    no committed version (or it no longer parses). A `dvc exp run -S ...` thus
    names its runs after what it changed (digits lr=0.4), not a random word pair.
    """
    from linflow.core.config import parse_params

    path = Path(params_path).resolve()
    root = repo_root(path.parent)
    try:
        rel = path.relative_to(root)
        res = subprocess.run(
            ["git", "show", f"HEAD:{rel.as_posix()}"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if res.returncode != 0:
            return {}
        from linflow.core.storage import load_yaml

        before = parse_params(load_yaml(res.stdout), str(rel))
        old = flatten(run_view(before, dataset))
    except Exception:  # no git, not committed, an older schema: nothing to name
        return {}
    return {k: v for k, v in current.items() if old.get(k) != v}


def run_view(params, dataset: str) -> dict:
    """The params of one dataset's training run, as logged (nested, flattened later)."""
    ds = params.dataset(dataset)
    cfg = params.train_config(dataset)
    return {
        "seed": params.seed,
        # where the rows come from, then the source's own knobs (n, noise, ...)
        "data": {
            **ds.model_dump(include={"source", "task", "standardize"}),
            **ds.data.model_dump(),
        },
        "split": params.split_config(dataset).model_dump(),
        "train": {
            "threads": params.train.threads,
            "device": params.train.device,
            **cfg.model_dump(),
        },
    }


def run_name(dataset: str, impl: str, changed: Mapping[str, str]) -> str:
    """'digits lr=0.4 batch_size=8' for a run whose params differ from the committed
    ones (the last part of each key), else 'digits-torch'."""
    if not changed:
        return f"{dataset}-{impl}"
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(changed.items())]
    return " ".join([dataset, *parts])[:250]


def flatten(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    _flatten("", params, out)
    return out


def git_tags(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            res = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit or "unknown",
        "linflow.git_dirty": str(bool(dirty)).lower(),
    }


def _wrap(exc: Exception) -> TrackingError:
    return TrackingError(f"MLflow store {redact(tracking_uri())} failed: {redact(_one_line(exc))}")


class TrainingRun:
    """Context manager around one MLflow training run.

    >>> with TrainingRun("digits", "digits-torch", params, tags) as run:
    ...     run.log_epoch({"epoch": 1, "train_loss": 0.5, ...})
    """

    def __init__(
        self,
        dataset: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
    ):
        self.dataset = dataset
        self.run_name = run_name
        self.params = flatten(params)
        self.tags = dict(tags)
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        # Per-epoch metrics are buffered and sent in batches: one store round trip per
        # epoch (~6 ms on sqlite) would dominate full-batch training of thousands of epochs.
        self._pending: list = []
        self._last_flush = time.monotonic()

    @_store_call
    def __enter__(self) -> TrainingRun:
        from mlflow.entities import Param

        try:
            self.client = _client()
            exp_id = self.experiment_id = _experiment_id(self.client, self.dataset)
            tags = {**git_tags(repo_root()), **self.tags}
            if os.environ.get("DVC_EXP_NAME"):
                tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
            tags.update(_owner_tags())
            self.run_id = _create_run(self.client, exp_id, tags, self.run_name)
            items = [Param(k, v[:6000]) for k, v in sorted(self.params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])
        except Exception as exc:
            if self.run_id is not None:
                self._end("FAILED", f"could not log params: {_one_line(exc)}")
            raise _wrap(exc) from None
        return self

    def log_epoch(self, row: Mapping[str, float]) -> None:
        """One call per epoch: every value of `row` at step = row['epoch'].

        Buffered: sent when EPOCH_BATCH metrics are pending or EPOCH_FLUSH_S seconds
        have passed (so the UI still follows a long run), and when the run ends.
        """
        from mlflow.entities import Metric

        step = int(row["epoch"])
        ts = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), ts, step) for k, v in row.items() if k != "epoch"]
        if (
            len(self._pending) >= EPOCH_BATCH
            or time.monotonic() - self._last_flush >= EPOCH_FLUSH_S
        ):
            self.flush()

    @_store_call
    def flush(self) -> None:
        """Send the buffered per-epoch metrics."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        try:
            for i in range(0, len(pending), EPOCH_BATCH):
                self.client.log_batch(self.run_id, metrics=pending[i : i + EPOCH_BATCH])
        except Exception as exc:
            raise _wrap(exc) from None

    @_store_call
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        try:
            self.client.log_batch(self.run_id, metrics=items)
        except Exception as exc:
            raise _wrap(exc) from None

    @_store_call
    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception as exc:
            raise _wrap(exc) from None

    @_store_call
    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        try:
            for p in paths:
                self.client.log_artifact(self.run_id, str(p), artifact_path)
        except Exception as exc:
            raise _wrap(exc) from None

    @_store_call
    def log_model(
        self, model_dir: Path, task: str, example: Mapping | None, tags: Mapping[str, str]
    ) -> tuple[str, bool]:
        """The run's MLflow Model and its registry version (core/registry.py):
        (version number, whether it was added now)."""
        import hashlib

        from linflow.core import registry

        tags = {
            **git_tags(repo_root()),
            "linflow.params_md5": hashlib.md5(
                json.dumps(self.params, sort_keys=True).encode()
            ).hexdigest(),
            **(
                {"dvc.exp_name": os.environ["DVC_EXP_NAME"]}
                if os.environ.get("DVC_EXP_NAME")
                else {}
            ),  # fmt: skip
            **tags,
        }
        try:
            info = registry.log_model(
                self.client, self.run_id, self.experiment_id, model_dir, task, example
            )
            version, added = registry.register(self.client, self.dataset, info, self.run_id, tags)
        except Exception as exc:
            raise _wrap(exc) from None
        return version.version, added

    @_store_call
    def adopt_results(self, weights_md5: str) -> str | None:
        """Copy evaluate's and compare's results from an earlier run with these weights.

        DVC re-runs train when any of its params changes, also where the effective
        config -- and so the weights -- did not (a dataset whose own override wins).
        evaluate then sees unchanged deps and is skipped, so without this the new run
        would never get its test metrics. Same weights, same numbers: the latest
        FINISHED run that produced them and has test metrics lends its ``test_*`` /
        ``ref_*`` metrics, compare tags and non-training artifacts; tag
        ``linflow.results_from`` names it. Returns its run id, or None.
        """
        from mlflow.entities import Metric, RunTag

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{WEIGHTS_TAG}` = '{weights_md5}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        src = next(
            (
                r
                for r in runs
                if r.info.run_id != self.run_id
                and any(k.startswith("test_") for k in r.data.metrics)
            ),
            None,
        )
        if src is None:
            return None
        ts = int(time.time() * 1000)
        metrics = [
            Metric(k, v, ts, 0)
            for k, v in sorted(src.data.metrics.items())
            if k.startswith(("test_", "ref_"))
        ]
        tags = [RunTag(k, v) for k, v in src.data.tags.items() if k == "linflow.compare"]
        tags.append(RunTag(ADOPTED_TAG, src.info.run_id))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        mine = {a.path for a in self.client.list_artifacts(self.run_id)}
        with tempfile.TemporaryDirectory() as tmp:
            for art in self.client.list_artifacts(src.info.run_id):
                if art.is_dir or art.path in mine:
                    continue
                local = self.client.download_artifacts(src.info.run_id, art.path, tmp)
                self.client.log_artifact(self.run_id, local)
        return src.info.run_id

    def log_results(self, metrics, tags, artifacts) -> None:
        """Metrics, tags and root-level artifacts in one go (results of later stages)."""
        self.log_metrics(metrics)
        self.set_tags(tags)
        self.log_artifacts(artifacts)

    @_store_call
    def _end(self, status: str, reason: str | None = None) -> None:
        """Close the run; a busy (locked) database gets a few tries over ~3 s, and a run
        still left RUNNING is ended by the next run's reconcile()."""
        for attempt in range(4):
            try:
                if reason:
                    self.set_tags({FAILURE_TAG: reason})
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as exc:  # the store went away: say so, keep the original error
                if "locked" in _one_line(exc) and attempt < 3:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                log.warning(
                    "could not mark MLflow run %s as %s: %s (the next run will)",
                    self.run_id,
                    status,
                    _one_line(exc),
                )
                return

    def _close_interrupted(self) -> None:
        try:
            self.flush()
        except Exception as flush_exc:
            log.warning("could not log the last epochs to MLflow: %s", _one_line(flush_exc))
        self._end("KILLED", "interrupted (Ctrl-C or SIGTERM)")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.run_id is None:
            return False
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            # Stop within seconds whatever the store is doing (another process may
            # hold it locked): the run is closed now, or by the next command.
            try:
                _on_store(self._close_interrupted, timeout=INTERRUPT_GRACE_S)
            except TimeoutError:
                log.warning(
                    "the MLflow store did not answer within %.0f s (locked by another "
                    "process?): run %s stays RUNNING until the next linflow command that "
                    "opens the store marks it KILLED",
                    INTERRUPT_GRACE_S,
                    self.run_id,
                )
            return False
        try:
            self.flush()  # the curves up to a failure are worth keeping too
        except Exception as flush_exc:
            if exc is None:
                self._end("FAILED", f"could not log metrics: {_one_line(flush_exc)}")
                if isinstance(flush_exc, TrackingError):
                    raise flush_exc from None
                raise _wrap(flush_exc) from None
            log.warning("could not log the last epochs to MLflow: %s", _one_line(flush_exc))
        if exc is None:
            self._end("FINISHED")
        else:
            self._end("FAILED", _one_line(exc))
        return False


def _owner_tags() -> dict[str, str]:
    import uuid

    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname().replace("'", ""),
        RUN_KEY_TAG: uuid.uuid4().hex,
    }


def _create_run(client, exp_id: str, tags: Mapping[str, str], run_name: str) -> str:
    """Create a run and drop the copies a retried request made.

    Against a slow server the HTTP client times out and sends runs/create again:
    the server may then hold two runs of one request. Both carry this call's
    RUN_KEY_TAG; the one we were answered with stays, the others are deleted.
    """
    run = client.create_run(exp_id, tags=dict(tags), run_name=run_name)
    key = tags[RUN_KEY_TAG]
    twins = client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=10
    )
    for twin in twins:
        if twin.info.run_id != run.info.run_id:
            client.set_terminated(twin.info.run_id, status="KILLED")
            client.delete_run(twin.info.run_id)
            log.warning(
                "deleted MLflow run %s: a duplicate made by a retried request", twin.info.run_id
            )
    return run.info.run_id


def _runs_of_weights(client, dataset: str, weights_md5: str) -> list:
    """The newest training run in linflow-<dataset> that produced these weights ([] if none)."""
    exp = client.get_experiment_by_name(f"linflow-{dataset}")
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{WEIGHTS_TAG}` = '{weights_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )


@_store_call
def log_to_training_run(
    dataset: str,
    weights_md5: str,
    metrics: Mapping[str, float] | None = None,
    artifacts: Iterable[str | Path] = (),
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """Add metrics/artifacts to the training run that produced these weights.

    Returns the run id, or None (with a warning) when no such run exists, e.g.
    after mlflow.db was deleted while DVC still had the outputs.
    """
    from mlflow.entities import Metric, RunTag

    try:
        client = _client()
        runs = _runs_of_weights(client, dataset, weights_md5)
        if not runs:
            log.warning(
                "no MLflow run in linflow-%s produced these weights (md5 %s); "
                "not logging (re-run train to create one)",
                dataset,
                weights_md5,
            )
            return None
        run_id = runs[0].info.run_id
        ts = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
        for p in artifacts:
            client.log_artifact(run_id, str(p))
        return run_id
    except Exception as exc:
        raise _wrap(exc) from None


@_store_call
def download_model(uri: str, dest: Path) -> Path:
    """The artifacts of an MLflow model (models:/..., runs:/...) in a local folder."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line, not 12
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri()
        )
        return Path(local)
    except Exception as exc:
        raise TrackingError(f"{uri}: cannot fetch the model ({_one_line(exc)})") from None


@_store_call
def publish_model(
    dataset: str, run_id: str, model_dir: Path, task: str, example, tags: Mapping[str, str]
) -> tuple[str | None, bool]:
    """The registered version of these weights (tags[WEIGHTS_TAG]) for `linflow publish`:
    when none exists, the run's MLflow Model is logged and registered. Returns (what was
    done, or None when the store had the version already -- never a duplicate; whether
    the version still lacks compare's verdict)."""
    from linflow.core import registry

    try:
        client = _client()
        found = registry.find_version(client, dataset, tags[WEIGHTS_TAG])
        if found is not None:
            return None, registry.GATE_TAG not in (found.tags or {})
        exp_id = client.get_run(run_id).info.experiment_id
        info = registry.log_model(client, run_id, exp_id, model_dir, task, example)
        version, _ = registry.register(client, dataset, info, run_id, dict(tags))
    except Exception as exc:
        raise _wrap(exc) from None
    name = registry.model_name(dataset)
    return f"model logged, {name} version {version.version} registered", True


@_store_call
def record_gate(dataset: str, weights_md5: str, passed: bool, card: str) -> str | None:
    """compare's verdict on the registered version with these weights: its model card,
    its gate tag and its alias -- ``champion`` when it passed on the committed pipeline
    (no DVC experiment, params as committed when it was trained), ``challenger`` when
    it passed anywhere else (never champion by itself), none when it failed. Returns
    a line saying what was set, or None when no version holds these weights."""
    from linflow.core import registry

    try:
        client = _client()
        runs = _runs_of_weights(client, dataset, weights_md5)
        trained = runs[0].data.tags if runs else {}
        committed = not (
            os.environ.get("DVC_EXP_NAME")
            or "dvc.exp_name" in trained
            or "linflow.changed" in trained
        )
        alias = None if not passed else ("champion" if committed else "challenger")
        version = registry.record_gate(client, dataset, weights_md5, passed, alias, card)
    except Exception as exc:
        raise _wrap(exc) from None
    if version is None:
        return None
    name = registry.model_name(dataset)
    return f"{name} version {version}: gate {'pass' if passed else 'fail'}" + (
        f", alias {alias}" if alias else ""
    )


@_store_call
def publish_run(
    dataset: str,
    kind: str,
    key: tuple[str, str],
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    *,
    history: Iterable[Mapping[str, float]] = (),
    metrics: Mapping[str, float] | None = None,
    artifacts: Mapping[str | None, Iterable[str | Path]] | None = None,
) -> list[tuple[str, str]]:
    """Make the store hold a FINISHED run of `kind` whose tag ``key[0]`` is ``key[1]``
    (the weights' md5 for training runs), holding all of these.

    No such run: one is created (the key tag set last, so a failed attempt is never
    taken for it). Such runs exist: each gets what it lacks -- metrics never logged
    (the per-epoch ``history`` included), tags, params, artifacts -- and nothing it
    has is logged again, so a second call adds nothing. Returns (run id, what was
    done) per run: 'created', 'completed: <what>' or 'complete'.
    """
    from mlflow.entities import Metric, Param, RunTag

    metrics = dict(metrics or {})
    artifacts = {k: [Path(p) for p in v] for k, v in (artifacts or {}).items()}
    history = list(history)
    tag_name, tag_value = key
    try:
        client = _client()
        exp_id = _experiment_id(client, dataset)
        runs = client.search_runs(
            [exp_id],
            filter_string=(
                f"tags.`{tag_name}` = '{tag_value}' and tags.`{KIND_TAG}` = '{kind}' "
                "and attributes.status = 'FINISHED'"
            ),
            max_results=100,
        )
    except TrackingError:
        raise
    except Exception as exc:
        raise _wrap(exc) from None
    if not runs:
        with TrainingRun(dataset, run_name, params, {**tags, KIND_TAG: kind}) as run:
            for row in history:
                run.log_epoch(row)
            run.flush()
            run.log_metrics(metrics)
            for where, paths in artifacts.items():
                run.log_artifacts(paths, where)
            run.set_tags({tag_name: tag_value, PUBLISHED_TAG: "created"})
        return [(run.run_id, "created")]

    done = []
    ts = int(time.time() * 1000)
    for found in runs:
        run_id, have = found.info.run_id, found.data
        added: list[str] = []
        try:
            curves = sorted({k for row in history for k in row if k != "epoch"} - set(have.metrics))
            items = [
                Metric(k, float(row[k]), ts, int(row["epoch"]))
                for row in history
                for k in curves
                if k in row
            ]
            items += [
                Metric(k, float(v), ts, 0) for k, v in metrics.items() if k not in have.metrics
            ]
            for i in range(0, len(items), EPOCH_BATCH):
                client.log_batch(run_id, metrics=items[i : i + EPOCH_BATCH])
            added += [f"{k} per epoch" for k in curves]
            added += [k for k in metrics if k not in have.metrics]
            new_params = [
                Param(k, v[:6000])
                for k, v in sorted(flatten(params).items())
                if k not in have.params
            ]
            for i in range(0, len(new_params), 100):
                client.log_batch(run_id, params=new_params[i : i + 100])
            if new_params:
                added.append(f"{len(new_params)} params")
            new_tags = [RunTag(k, str(v)) for k, v in tags.items() if k not in have.tags]
            if new_tags:
                client.log_batch(run_id, tags=new_tags)
            added += [f"tag {t.key}" for t in new_tags]
            for where, paths in artifacts.items():
                there = {a.path for a in client.list_artifacts(run_id, where)}
                for p in paths:
                    name = f"{where}/{p.name}" if where else p.name
                    if name not in there:
                        client.log_artifact(run_id, str(p), where)
                        added.append(name)
            if added:
                client.set_tag(run_id, PUBLISHED_TAG, "completed")
        except Exception as exc:
            raise _wrap(exc) from None
        done.append((run_id, f"completed: {', '.join(added)}" if added else "complete"))
    return done
