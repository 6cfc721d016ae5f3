"""Streamed tables as processes: bounded memory, torchrun ranks, a rank that dies or hangs.

CI (make test-ci): each test starts linflow stages as their own processes, and the
torchrun ones start three processes per training.

- Every stage's peak RSS on a table of 1.2 M rows x 32 columns (154 MB as float32,
  more than the 128 MiB budget) exceeds the same stage's on a 2,000-row table by
  less than the budget, and the reference comparison passes.
- Two ranks with per-rank batch B/2 end on the same weights as one process replaying
  them with batch B (to 1e-6 relative), with one MLflow run.
- A rank killed with SIGKILL, or stopped (a hang), fails the stage within bounded
  time with one line naming the rank; no model is written and no run stays RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .helpers import ROOT, pipeline_env, run

pytestmark = pytest.mark.ci

BUDGET_MB = 128
WRAP = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(r.returncode)"
)


def _workspace(root: Path, entries: dict, train: dict | None = None) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = entries
    for key, value in (train or {}).items():
        params["train"][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", LINFLOW_PRELOAD="0")


def _entry(path: str, task: str, **train) -> dict:
    return {
        "source": "table", "path": path, "task": task, "standardize": True,
        "data": {"target": "y", "stream": True, "budget_mb": BUDGET_MB},
        "train": train,
    }  # fmt: skip


def _peak_mib(cmd: list[str], cwd: Path, env: dict) -> float:
    res = run([sys.executable, "-c", WRAP, *cmd], cwd, env)
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("maxrss ")][-1]
    return int(line.split()[1]) / 1024


def test_every_stage_stays_within_the_budget(tmp_path):
    from linflow.datasets.examples import write_large

    write_large(tmp_path / "big.parquet", 1_200_000, 32, "regression", group_rows=1 << 15)
    write_large(tmp_path / "tiny.parquet", 2_000, 32, "regression", group_rows=1 << 15)
    # Full batch at lr 0.45: the standardised columns are independent (Hessian ~2 I).
    train = {"lr": 0.45, "epochs": 25}
    env = _workspace(tmp_path, {"big": _entry("big.parquet", "regression", **train),
                                "tiny": _entry("tiny.parquet", "regression", **train)})  # fmt: skip
    extra = {}
    for stage in ("prepare", "split", "train", "evaluate", "reference", "compare"):
        tiny = _peak_mib(["linflow", stage, "tiny"], tmp_path, env)
        big = _peak_mib(["linflow", stage, "big"], tmp_path, env)
        extra[stage] = big - tiny
    print("peak RSS over the 2,000-row table's, MiB:", {k: round(v) for k, v in extra.items()})
    assert max(extra.values()) < BUDGET_MB, extra  # the table: 154 MB as float32
    compare = json.loads((tmp_path / "reports" / "big" / "compare.json").read_text())
    assert compare["passed"], compare["checks"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from linflow.datasets.examples import write_large

    root = tmp_path_factory.mktemp("ranks")
    write_large(root / "t.parquet", 24_000, 6, "classification", classes=3, group_rows=2_000)
    entry = _entry("t.parquet", "classification", processes=2, batch_size=128, epochs=3, lr=0.1)
    entry["data"]["budget_mb"] = 1  # a buffer of ~4,700 rows: several fills an epoch
    long = dict(entry, train=dict(entry["train"], epochs=400))
    env = _workspace(root, {"t": entry, "slow": dict(long, path="t.parquet")}, {"timeout_s": 5.0})
    for name in ("t", "slow"):
        run(["linflow", "prepare", name], root, env)
        run(["linflow", "split", name], root, env)
    return root, env


def test_two_ranks_equal_one_process_on_the_same_global_order(two_ranks):
    import torch

    from linflow.core.chunks import StreamSplit
    from linflow.core.config import load_params
    from linflow.core.storage import load_weights
    from linflow.reference import relative_l2
    from linflow.training import fit, make_engine
    from linflow.training.stream import StreamBatches

    root, env = two_ranks
    res = run(["linflow", "train", "t"], root, env)
    assert "2 processes under torchrun" in res.stderr
    W2 = load_weights(root / "models" / "t" / "model.safetensors")[0]["weight"]

    params = load_params(root / "params.yaml")
    cfg = params.train_config("t")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        split = StreamSplit(root / "data" / "prepared" / "t")
        Xv, yv = split.cache("val", 10**9)
        stream = StreamBatches(
            split.counts["train"], lambda c: split.read(c, ("train",))["train"], cfg.batch_size,
            cfg.seed, split.budget // 8 // split.row_bytes(), world=2, simulate=True,
            target=torch.int64,
        )  # fmt: skip
        engine = make_engine("torch", "classification", Xv.shape[1], 3, cfg)
        one = fit(engine, None, None, torch.from_numpy(Xv), torch.from_numpy(yv.astype(np.int64)), cfg, stream=stream)  # fmt: skip
    finally:
        os.chdir(cwd)
    assert relative_l2(W2, one.weight) < 1e-6

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("linflow-t")
    runs = client.search_runs([exp.experiment_id], "tags.`linflow.kind` = 'training'")
    assert [r.info.status for r in runs] == ["FINISHED"]


def _rank_pid(parent: int, rank: int, deadline: float) -> int:
    """The pid of torchrun rank `rank` under `parent` (its environment says RANK)."""
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"linflow" in cmd and f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env):  # fmt: skip
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_rank_that_dies_or_hangs_fails_the_stage_cleanly(two_ranks, how):
    root, env = two_ranks
    model = root / "models" / "slow"
    proc = subprocess.Popen(
        ["linflow", "train", "slow"], cwd=root, env=env, stderr=subprocess.PIPE, text=True
    )
    start = time.time()
    pid = _rank_pid(proc.pid, 1, start + 60)
    seen = []
    for line in proc.stderr:  # rank 0 has opened its MLflow run and trains
        seen.append(line)
        if "epoch 1/400" in line:
            break
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    try:
        _, err = proc.communicate(timeout=90)
        err = "".join(seen) + err
    finally:
        if how == "hang":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        proc.kill()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    print(how, "->", last, f"({time.time() - start:.0f} s)")
    assert last.startswith("linflow train: error: rank "), last
    assert ("rank 1 of 2 was killed by SIGKILL" in last) if how == "kill" else ("timeout_s" in last or "rank 1" in last), last  # fmt: skip
    assert time.time() - start < 90
    assert not model.exists()

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("linflow-slow")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id])]
    assert statuses and "RUNNING" not in statuses and "FINISHED" not in statuses, statuses
