"""evaluate@<ds>, in-process: test metrics, predictions and their plot, logged to the training run."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from linflow.core.errors import DataError, TaskMismatchError
from linflow.core.storage import file_md5, read_json

OUTPUTS = ["evaluation.json", "metrics.json", "predictions.csv", "predictions.png"]


def evaluate(run_stage, params, data, model, reports, dataset="line"):
    return run_stage(
        "evaluate", params, dataset, "--data", data, "--model", model, "--reports", reports
    )


def test_line_metrics_predictions_and_plot_at_the_default_paths(line_run):
    metrics = read_json(line_run.reports / "metrics.json")
    assert list(metrics) == ["line"] and list(metrics["line"]) == ["test"]  # dvc: line.test.r2
    test = metrics["line"]["test"]
    assert set(test) == {"mse", "rmse", "mae", "r2"}
    assert test["r2"] > 0.97 and test["rmse"] == pytest.approx(test["mse"] ** 0.5)
    assert read_json(line_run.reports / "evaluation.json") == {
        "dataset": "line", "task": "regression", "n_test": 15, "n_params": 2, "test": test,
    }  # fmt: skip
    rows = (line_run.reports / "predictions.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + 15
    assert all(abs(float(a) - float(p)) < 0.5 for a, p in (r.split(",") for r in rows[1:]))
    assert (line_run.reports / "predictions.png").stat().st_size > 1000


def test_digits_metrics_have_per_class_accuracy_and_class_names(digits_run):
    test = read_json(digits_run.reports / "metrics.json")["digits"]["test"]
    assert set(test) == {"accuracy", "cross_entropy"} and test["accuracy"] > 0.9
    doc = read_json(digits_run.reports / "evaluation.json")
    assert (doc["n_test"], doc["n_params"]) == (269, 650)
    per_class = doc["test"].pop("per_class_accuracy")
    assert doc["test"] == test
    assert list(per_class) == [str(c) for c in range(10)]
    assert all(0 <= v <= 1 for v in per_class.values())
    rows = (digits_run.reports / "predictions.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted," + ",".join(f"p_{c}" for c in range(10))
    assert len(rows) == 1 + 269
    cells = [r.split(",") for r in rows[1:]]
    hits = sum(c[0] == c[1] for c in cells)
    assert hits / 269 == pytest.approx(test["accuracy"])
    probs = np.array([[float(q) for q in c[2:]] for c in cells])  # (269, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [str(i) for i in probs.argmax(axis=1)] == [c[1] for c in cells]  # picked = likeliest
    # the mean log-probability of the true class is the test cross-entropy
    true = probs[np.arange(269), [int(c[0]) for c in cells]]
    assert -np.log(true).mean() == pytest.approx(test["cross_entropy"], rel=1e-4)


def test_the_test_metrics_go_to_the_training_run(line_run, mlflow_client):
    exp = mlflow_client.get_experiment_by_name("linflow-line")
    md5 = file_md5(line_run.model / "model.safetensors")
    (run,) = mlflow_client.search_runs([exp.experiment_id], f"tags.`linflow.weights_md5` = '{md5}'")
    test = read_json(line_run.reports / "metrics.json")["line"]["test"]
    assert {k: run.data.metrics[f"test_{k}"] for k in test} == pytest.approx(test)
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "evaluation.json", "predictions.png"} <= artifacts


def test_same_model_same_bytes(line_run, tmp_path, run_stage):
    assert evaluate(run_stage, line_run.params, line_run.data, line_run.model, tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == OUTPUTS
    for name in ("metrics.json", "evaluation.json", "predictions.csv"):
        assert (tmp_path / name).read_bytes() == (line_run.reports / name).read_bytes(), name


def test_data_of_another_task_is_refused_naming_the_folder(
    line_run, digits_run, tmp_path, run_stage
):
    reports = tmp_path / "reports"
    pattern = (
        rf"^{re.escape(str(digits_run.data))}: holds classification data but "
        r"datasets\.line\.task is regression \(run dvc repro\)$"
    )
    with pytest.raises(TaskMismatchError, match=pattern):
        evaluate(run_stage, line_run.params, digits_run.data, line_run.model, reports)
    assert not reports.exists()


def test_data_with_other_features_than_the_model_is_refused(line_run, tmp_path, run_stage):
    import numpy as np

    from linflow.core.storage import load_npz, save_npz, write_json

    data = tmp_path / "data"
    shutil.copytree(line_run.data, data)
    test = load_npz(data / "test.npz")
    save_npz(data / "test.npz", **{**test, "X": np.hstack([test["X"], test["X"]])})
    scaler = read_json(data / "scaler.json")
    write_json(
        data / "scaler.json", {**scaler, "mean": scaler["mean"] * 2, "std": scaler["std"] * 2}
    )
    reports = tmp_path / "reports"
    pattern = rf"^{re.escape(str(data))}/test\.npz: has 2 features, the model expects 1$"
    with pytest.raises(DataError, match=pattern):
        evaluate(run_stage, line_run.params, data, line_run.model, reports)
    assert not reports.exists()


def test_a_missing_model_is_named(tmp_path, monkeypatch, make_params, run_stage):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^models/line/model\.json: file not found"):
        run_stage("evaluate", make_params(), "line")
    assert list(tmp_path.iterdir()) == []


def test_a_model_card_from_an_older_linflow_names_the_missing_key(line_run, tmp_path, run_stage):
    model = tmp_path / "model"
    shutil.copytree(line_run.model, model)
    card = json.loads((model / "model.json").read_text())
    del card["n_params"]
    (model / "model.json").write_text(json.dumps(card))
    reports = tmp_path / "reports"
    with pytest.raises(
        DataError, match=r"model\.json: missing key\(s\) n_params \(written by an older"
    ):
        evaluate(run_stage, line_run.params, line_run.data, model, reports)
    assert not reports.exists()


def test_a_corrupt_weights_file_is_named(line_run, tmp_path, run_stage):
    model = tmp_path / "model"
    shutil.copytree(line_run.model, model)
    (model / "model.safetensors").write_bytes(b"not safetensors")
    reports = tmp_path / "reports"
    with pytest.raises(DataError, match=r"model\.safetensors: not a readable safetensors file"):
        evaluate(run_stage, line_run.params, line_run.data, model, reports)
    assert not reports.exists()
