"""The train -> reference -> compare -> report stages through the CLI, on a small line.

One module-scoped pipeline (prepare, split, train, reference) in a temp folder
with its own MLflow store; each test then runs the stage it is about, often
with an edited params file. Covers: the learning-rate bound (warning before
training, divergence error citing it, no weights written), reference.json, a
passing compare, a failing compare (one-line message, exit 1, no output
written) and the summary's reference columns.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from linflow.cli import main

PARAMS = {
    "seed": 0,
    "datasets": {
        "line": {"source": "line", "task": "regression", "n": 60, "noise": 0.1},
    },
    "split": {"train": 0.7, "val": 0.15, "test": 0.15},
    "train": {
        "threads": 1,
        "device": "cpu",
        "regression": {"lr": 0.4, "batch_size": "full", "epochs": 150},
        "classification": {"lr": 0.1, "batch_size": 16, "epochs": 5},
    },
}


def write_params(path: Path, **edits) -> Path:
    """PARAMS with dotted-key edits, e.g. {'train.regression.lr': 2.0}."""
    params = json.loads(json.dumps(PARAMS))
    for dotted, value in edits.items():
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(params))
    return path


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """prepare, split, train and reference `line` once; yields the folder."""
    root = tmp_path_factory.mktemp("pipe")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = write_params(root / "params.yaml")
    p = ["--params", params]
    assert run(*p, "prepare", "line", "--out", root / "raw.npz") == 0
    assert run(*p, "split", "line", "--raw", root / "raw.npz", "--out", root / "data") == 0
    assert (
        run(*p, "train", "line", "--data", root / "data", "--model", root / "model",
            "--reports", root / "reports")
        == 0
    )  # fmt: skip
    assert (
        run(*p, "reference", "line", "--data", root / "data", "--out", root / "reference.json") == 0
    )
    yield root
    mp.undo()


def compare(root: Path, params: Path, reports: Path, reference: Path | None = None) -> int:
    return run(
        "--params", params, "compare", "line", "--data", root / "data", "--model",
        root / "model", "--reference", reference or root / "reference.json", "--reports", reports,
    )  # fmt: skip


def train(root: Path, params: Path, model: Path) -> int:
    return run(
        "--params", params, "train", "line", "--data", root / "data", "--model", model,
        "--reports", model / "reports",
    )  # fmt: skip


def test_train_records_the_trajectory_and_the_bound(pipeline):
    from linflow.core.storage import load_npz, read_json

    card = read_json(pipeline / "model" / "model.json")
    traj = load_npz(pipeline / "model" / "trajectory.npz")
    assert traj["epoch"].tolist() == list(range(card["epochs_run"] + 1))
    assert traj["weight"].shape == (card["epochs_run"] + 1, 1, 1)
    assert traj["bias"].shape == (card["epochs_run"] + 1, 1)
    assert 0.9 < card["lr_bound"] < 1.1  # x ~ U(-1, 1): lambda_max ~ 2


def test_reference_json_holds_weights_and_metrics_not_times(pipeline):
    doc = json.loads((pipeline / "reference.json").read_text())
    assert doc["primary"] == "normal_equations"
    refs = doc["references"]
    assert set(refs) == {"normal_equations", "sklearn_linear_regression", "sklearn_ridge"}
    ne = refs["normal_equations"]
    assert ne["weight"][0][0] == pytest.approx(3.0, abs=0.1)
    assert ne["bias"][0] == pytest.approx(1.0, abs=0.1)
    assert ne["test"]["r2"] > 0.97
    assert refs["sklearn_ridge"]["rel_l2_to_primary"] < 1e-10
    assert "second" not in (pipeline / "reference.json").read_text()  # no fit times


def test_compare_passes_and_writes_its_outputs(pipeline, tmp_path):
    reports = tmp_path / "reports"
    assert compare(pipeline, pipeline / "params.yaml", reports) == 0
    doc = json.loads((reports / "compare.json").read_text())
    assert doc["passed"] is True
    assert doc["weight_rel_l2"] < 1e-3
    assert all(c["passed"] for c in doc["checks"].values())
    assert abs(doc["train_objective"]["rel_gap"]) < 1e-3
    for png in ("distance_to_reference.png", "reference_fit.png"):
        assert (reports / png).stat().st_size > 1000
    distance = (reports / "distance.csv").read_text().splitlines()
    assert distance[0] == "epoch,weight_rel_l2" and len(distance) == 1 + 151
    assert float(distance[-1].split(",")[1]) == pytest.approx(doc["weight_rel_l2"])
    # the gaps went to the training run in MLflow
    from mlflow import MlflowClient

    from linflow.core.storage import file_md5

    client = MlflowClient()
    exp = client.get_experiment_by_name("linflow-line")
    md5 = file_md5(pipeline / "model" / "model.safetensors")
    runs = client.search_runs([exp.experiment_id], f"tags.`linflow.weights_md5` = '{md5}'")
    assert runs[0].data.tags["linflow.kind"] == "training"
    assert runs[0].data.tags["linflow.compare"] == "pass"
    # per-epoch metrics are buffered during training, all of them arrive
    curve = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in curve) == list(range(1, 151))
    assert runs[0].data.metrics["ref_weight_rel_l2"] == pytest.approx(doc["weight_rel_l2"])
    ref_runs = client.search_runs([exp.experiment_id], "tags.`linflow.kind` = 'reference'")
    assert "fit_seconds.normal_equations" in ref_runs[0].data.metrics


def test_compare_over_tolerance_fails_with_one_line_and_writes_nothing(pipeline, tmp_path, capsys):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "compare.json").write_text("previous\n")
    tight = write_params(tmp_path / "params.yaml", **{"compare.regression.weight_rel_l2": 1e-12})
    assert compare(pipeline, tight, reports) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("linflow compare: error: line is further from the reference")
    assert "exceeds compare.regression.weight_rel_l2 = 1e-12" in err[0]
    assert "try more epochs, a smaller lr or full batch" in err[0]
    assert (reports / "compare.json").read_text() == "previous\n"  # untouched
    assert sorted(p.name for p in reports.iterdir()) == ["compare.json"]


def test_compare_refuses_a_reference_for_another_weight_decay(pipeline, tmp_path, capsys):
    doc = json.loads((pipeline / "reference.json").read_text())
    doc["weight_decay"] = 0.5
    stale = tmp_path / "reference.json"
    stale.write_text(json.dumps(doc))
    assert compare(pipeline, pipeline / "params.yaml", tmp_path / "r", stale) == 1
    assert "fitted for weight_decay=0.5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_lr_above_the_bound_warns_before_training(pipeline, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="linflow")
    params = write_params(
        tmp_path / "params.yaml",
        **{"train.regression.lr": 1.05, "train.regression.epochs": 3},
    )
    assert train(pipeline, params, tmp_path / "model") == 0
    messages = [r.getMessage() for r in caplog.records]
    warn = next(i for i, m in enumerate(messages) if "exceeds the full-batch stable step" in m)
    done = next(i for i, m in enumerate(messages) if "epochs in" in m)
    assert warn < done
    assert caplog.records[warn].levelno == logging.WARNING
    assert "lr=1.05" in messages[warn] and "2/lambda_max = " in messages[warn]


def test_divergence_fails_citing_the_bound_and_writes_no_weights(pipeline, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", **{"train.regression.lr": 1e6})
    model = tmp_path / "model"
    assert train(pipeline, params, model) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("linflow train: error: training diverged")
    assert "lr=1000000.0" in err and "2/lambda_max = 0.9" in err
    assert not model.exists()
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("linflow-line")
    (failed,) = client.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    assert "2/lambda_max" in failed.data.tags["linflow.failure"]
    # the epochs before the blow-up are flushed to the failed run
    assert client.get_metric_history(failed.info.run_id, "train_loss")
    assert float(failed.data.params["derived.lr_bound"]) == pytest.approx(0.99, abs=0.1)


def test_report_gains_reference_columns_and_gaps(pipeline, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(pipeline / "reports", reports / "line")
    params = pipeline / "params.yaml"
    p = ["--params", params]
    assert (
        run(*p, "evaluate", "line", "--data", pipeline / "data", "--model", pipeline / "model",
            "--reports", reports / "line")
        == 0
    )  # fmt: skip
    assert compare(pipeline, params, reports / "line") == 0
    out = tmp_path / "summary.md"
    assert run(*p, "report", "line", "--reports", reports, "--out", out) == 0
    text = out.read_text()
    assert "| dataset | task | model | params | n_test | reference | metric | ours |" in text
    assert "normal equations" in text
    rows = [line for line in text.splitlines() if "weight_rel_l2" in line]
    assert rows and rows[0].endswith("| pass |")


def test_train_rejects_batches_larger_than_the_split(pipeline, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", **{"train.regression.batch_size": 10_000})
    assert train(pipeline, params, tmp_path / "model") == 1
    err = capsys.readouterr().err
    assert "train.regression.batch_size must be <= the train split size" in err
    assert "or 'full', got 10000" in err
