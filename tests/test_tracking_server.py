"""The pipeline against a real `mlflow server` on 127.0.0.1, via MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.ci  # a real mlflow server (~40 s): make test-ci and CI


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url, proc
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _stage(env, *args, check=True):
    res = subprocess.run(
        [sys.executable, "-m", "linflow", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if check and res.returncode != 0:
        raise AssertionError(res.stderr)
    return res


def test_pipeline_against_server_then_fails_fast_when_it_is_gone(server, tmp_path):
    url, proc = server
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    d = tmp_path / "work"
    _stage(env, "prepare", "line", "--out", str(d / "raw.npz"))
    _stage(env, "split", "line", "--raw", str(d / "raw.npz"), "--out", str(d / "prep"))
    common = [
        "--data",
        str(d / "prep"),
        "--model",
        str(d / "model"),
        "--reports",
        str(d / "reports"),
    ]
    _stage(env, "train", "line", *common)
    _stage(env, "evaluate", "line", *common)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    (run,) = client.search_runs([client.get_experiment_by_name("linflow-line").experiment_id])
    assert run.info.status == "FINISHED"
    assert "train.lr" in run.data.params and "test_r2" in run.data.metrics
    card_epochs = int(run.data.metrics["epochs_run"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == card_epochs
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "loss_curve.png", "metrics.json", "model"} <= arts
    local = client.download_artifacts(run.info.run_id, "model/model.safetensors", str(tmp_path))
    assert Path(local).read_bytes() == (d / "model" / "model.safetensors").read_bytes()

    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    weights = (d / "model" / "model.safetensors").read_bytes()
    env["MLFLOW_TRACKING_URI"] = url.replace("http://", "http://alice:s3cret@")
    t0 = time.time()
    res = _stage(env, "train", "line", *common, check=False)
    elapsed = time.time() - t0
    assert res.returncode == 1 and elapsed < 15, (elapsed, res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("linflow train: error: MLflow store http://***@127.0.0.1:")
        and "s3cret" not in res.stderr
    )
    assert (d / "model" / "model.safetensors").read_bytes() == weights  # earlier outputs intact
