"""The MLflow contract, through the real CLI against a temporary sqlite store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from linflow.core.tracking import redact, repo_root

ROOT = Path(__file__).resolve().parents[1]


def linflow(*args: str, params: Path | None = None, check: bool = True, **kw):
    cmd = [sys.executable, "-m", "linflow"]
    if params is not None:
        cmd += ["--params", str(params)]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise AssertionError(res.stderr)
    return res


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data/prepared/<ds> for line and digits, built by the real stages."""
    base = tmp_path_factory.mktemp("data")
    for ds in ("line", "digits"):
        linflow("prepare", ds, "--out", str(base / f"{ds}.npz"), cwd=ROOT)
        linflow("split", ds, "--raw", str(base / f"{ds}.npz"), "--out", str(base / ds), cwd=ROOT)
    return base


def _params(tmp_path: Path, base_params: dict, task: str, alias: str, **train) -> Path:
    """params.yaml with dataset `alias` (a copy of line/digits): its own MLflow experiment."""
    import copy

    p = copy.deepcopy(base_params)
    p["train"][task].update(train)
    p["datasets"][alias] = p["datasets"]["line" if task == "regression" else "digits"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def _runs(dataset: str):
    client = _client()
    exp = client.get_experiment_by_name(f"linflow-{dataset}")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_repo_root_from_dvc_temp_experiment(tmp_path):
    (tmp_path / ".dvc").mkdir()
    exp_dir = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    exp_dir.mkdir(parents=True)
    (exp_dir / "dvc.yaml").write_text("stages: {}\n")
    assert repo_root(exp_dir) == tmp_path.resolve()
    assert repo_root(tmp_path) == tmp_path.resolve()


def test_redact_hides_credentials():
    assert redact("https://bob:s3cret@mlflow.example.com/x") == "https://***@mlflow.example.com/x"
    assert "abc" not in redact("http://h/?token=abc&x=1")


def test_successful_train_logs_params_history_tags_and_artifacts(tmp_path, prepared, base_params):
    params = _params(tmp_path, base_params, "regression", "line_ok", epochs=7)
    linflow(
        "train",
        "line_ok",
        "--data",
        str(prepared / "line"),
        "--model",
        str(tmp_path / "m"),
        "--reports",
        str(tmp_path / "r"),
        params=params,
        cwd=ROOT,
    )
    (run,) = _runs("line_ok")
    client = _client()
    assert run.info.status == "FINISHED" and run.info.run_name == "line_ok-torch"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 7
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == list(
        range(1, 8)
    )
    p = run.data.params
    assert (
        p["train.lr"] == str(base_params["train"]["regression"]["lr"])
        and p["derived.n_train"] == "70"
    )
    assert "derived.lr_bound" in p
    tags = run.data.tags
    for key in (
        "mlflow.source.git.commit",
        "linflow.git_dirty",
        "linflow.data_md5",
        "torch.version",
        "sklearn.version",
        "mlflow.version",
        "linflow.threads",
        "linflow.device",
        "linflow.weights_md5",
    ):
        assert key in tags, key
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "loss_curve.png", "model"} <= names


def test_divergence_leaves_a_failed_run_with_reason_and_no_weights(tmp_path, prepared, base_params):
    params = _params(tmp_path, base_params, "regression", "line_div", lr=1e4, epochs=50)
    res = linflow(
        "train",
        "line_div",
        "--data",
        str(prepared / "line"),
        "--model",
        str(tmp_path / "m"),
        "--reports",
        str(tmp_path / "r"),
        params=params,
        check=False,
        cwd=ROOT,
    )
    assert res.returncode == 1
    assert "exceeds the full-batch stable step bound" in res.stderr  # warned before training
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("linflow train: error: training diverged") and "lr=10000.0" in err
    assert "2/lambda_max" in err
    assert not (tmp_path / "m" / "model.safetensors").exists()
    (run,) = _runs("line_div")
    assert run.info.status == "FAILED"
    assert run.data.tags["linflow.failure"].startswith("training diverged")


def _default_sigint():
    # A shell running us in the background may ignore SIGINT, and the child would
    # inherit that; a terminal's Ctrl-C reaches a process with the default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "code", "alias"),
    [(signal.SIGTERM, 143, "digits_term"), (signal.SIGINT, 130, "digits_int")],
    ids=["SIGTERM", "Ctrl-C"],
)
def test_signal_leaves_a_killed_run_and_no_weights(
    tmp_path, prepared, base_params, sig, code, alias
):
    params = _params(
        tmp_path,
        base_params,
        "classification",
        alias,
        epochs=100000,
        patience=0,
        batch_size=8,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "linflow",
            "--params",
            str(params),
            "train",
            alias,
            "--data",
            str(prepared / "digits"),
            "--model",
            str(tmp_path / "m"),
            "--reports",
            str(tmp_path / "r"),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:  # a failure here must not leave a 100000-epoch training behind
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = _runs(alias)
            if runs and _client().get_metric_history(runs[0].info.run_id, "train_loss"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("training never started logging")
        proc.send_signal(sig)
        if sig == signal.SIGTERM:
            # More SIGTERMs while it closes its run (the warm worker's stages get one per
            # exiting worker thread): they must not cut the close short.
            deadline = time.time() + 30
            while proc.poll() is None and time.time() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                time.sleep(0.002)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (
        proc.returncode == code and stderr.strip().splitlines()[-1] == "linflow train: interrupted"
    )
    assert "Traceback" not in stderr
    (run,) = _runs(alias)
    assert run.info.status == "KILLED"
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_retraining_to_the_same_weights_copies_test_results(tmp_path, prepared, base_params):
    """DVC re-runs train when a param changes even where the weights cannot (a dataset's
    own override wins) and then skips evaluate: the new run gets the earlier run's
    test metrics and artifacts instead of none."""
    params = _params(tmp_path, base_params, "regression", "line_same", epochs=5)
    stage = ["--data", str(prepared / "line"), "--model", str(tmp_path / "m")]
    reports = ["--reports", str(tmp_path / "r")]
    linflow("train", "line_same", *stage, *reports, params=params, cwd=ROOT)
    (first,) = _runs("line_same")
    assert linflow("evaluate", "line_same", *stage, *reports, params=params, cwd=ROOT)
    res = linflow("train", "line_same", *stage, *reports, params=params, cwd=ROOT)
    assert "same weights as MLflow run" in res.stderr
    runs = {r.info.run_id: r for r in _runs("line_same")}
    assert len(runs) == 2
    (second,) = (r for rid, r in runs.items() if rid != first.info.run_id)
    first = runs[first.info.run_id]
    assert second.info.status == "FINISHED"
    assert second.data.tags["linflow.results_from"] == first.info.run_id
    tests = {k: v for k, v in first.data.metrics.items() if k.startswith("test_")}
    assert tests and {k: second.data.metrics[k] for k in tests} == tests
    names = {a.path for a in _client().list_artifacts(second.info.run_id)}
    assert {"metrics.json", "predictions.png", "history.csv", "model"} <= names
    # Different weights borrow nothing.
    other = _params(tmp_path, base_params, "regression", "line_same", epochs=6)
    linflow("train", "line_same", *stage, *reports, params=other, cwd=ROOT)
    newest = max(_runs("line_same"), key=lambda r: r.info.start_time)
    assert "linflow.results_from" not in newest.data.tags
    assert not any(k.startswith("test_") for k in newest.data.metrics)


def test_runs_are_named_after_what_differs_from_the_committed_params(tmp_path, base_params):
    """dvc exp run -S train.classification.lr=0.4 -> run 'digits lr=0.4', tag linflow.changed;
    a dataset whose own overrides win (fashion_mnist sets lr and weight decay) changes nothing."""
    from linflow.core import tracking
    from linflow.core.config import load_params

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base_params))
    for argv in (["init", "-q"], ["add", "."], ["commit", "-qm", "base"]):
        subprocess.run(["git", *argv], cwd=tmp_path, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})  # fmt: skip
    p = yaml.safe_load(path.read_text())
    p["train"]["classification"].update(lr=0.4, weight_decay=0.002)
    path.write_text(yaml.safe_dump(p))
    params = load_params(path)

    def changed(ds: str) -> dict:
        flat = tracking.flatten(tracking.run_view(params, ds))
        return tracking.changed_from_committed(path, ds, flat)

    assert changed("digits") == {"train.lr": "0.4", "train.weight_decay": "0.002"}
    assert tracking.run_name("digits", "torch", changed("digits")) == (
        "digits lr=0.4 weight_decay=0.002"
    )
    assert changed("fashion_mnist") == {}  # its own lr and weight decay win
    assert changed("line") == {} and tracking.run_name("line", "torch", {}) == "line-torch"
    assert "None" not in tracking.flatten(tracking.run_view(params, "digits")).values()
