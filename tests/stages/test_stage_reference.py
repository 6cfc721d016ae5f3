"""reference@<ds>, in-process: the classical solutions on the train split, and their MLflow run."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from linflow.core.errors import DataError, TaskMismatchError
from linflow.core.storage import read_json


def test_reference_json_holds_weights_and_metrics_not_times(line_run):
    doc = json.loads(line_run.reference.read_text())
    assert doc["primary"] == "normal_equations"
    refs = doc["references"]
    assert set(refs) == {"normal_equations", "sklearn_linear_regression", "sklearn_ridge"}
    ne = refs["normal_equations"]
    assert ne["weight"][0][0] == pytest.approx(3.0, abs=0.1)
    assert ne["bias"][0] == pytest.approx(1.0, abs=0.1)
    assert ne["test"]["r2"] > 0.97
    assert refs["sklearn_ridge"]["rel_l2_to_primary"] < 1e-10
    assert "second" not in line_run.reference.read_text()  # no fit times


def test_line_reference_describes_the_objective_it_solved(line_run):
    doc = read_json(line_run.reference)
    assert {k: doc[k] for k in ("dataset", "task", "loss", "weight_decay", "n_train", "n_test")} == {
        "dataset": "line", "task": "regression", "loss": "mse", "weight_decay": 0.0,
        "n_train": 70, "n_test": 15,
    }  # fmt: skip
    assert doc["references"]["sklearn_ridge"]["alpha"] == 0.0
    for ref in doc["references"].values():
        assert set(ref["test"]) == {"mse", "rmse", "mae", "r2"}
        assert ref["train_objective"] == pytest.approx(ref["train_loss"])  # no weight decay


def test_digits_reference_is_logistic_regression_with_its_settings(digits_run):
    doc = read_json(digits_run.reference)
    assert doc["primary"] == "sklearn_logistic_regression"
    (name,) = doc["references"]
    ref = doc["references"][name]
    assert np.asarray(ref["weight"]).shape == (10, 64) and len(ref["bias"]) == 10
    assert (ref["solver"], ref["max_iter"], ref["tol"]) == ("lbfgs", 5000, 2e-5)
    assert ref["precision"] == "float32"  # the float64 check agreed: no float64 iteration
    assert ref["C"] > 0 and 0 < ref["n_iter"] < 5000
    assert set(ref["test"]) == {"accuracy", "cross_entropy"} and ref["test"]["accuracy"] > 0.9
    assert (doc["n_train"], doc["n_test"], doc["weight_decay"]) == (1259, 269, 0.001)


def test_the_references_get_their_own_mlflow_run(line_run, mlflow_client):
    doc = read_json(line_run.reference)
    primary = doc["references"]["normal_equations"]
    exp = mlflow_client.get_experiment_by_name("linflow-line")
    runs = mlflow_client.search_runs([exp.experiment_id], "tags.`linflow.kind` = 'reference'")
    # other tests fit references too (another loss): this one's run has its objective
    (run,) = [r for r in runs if r.data.metrics["train_objective"] == primary["train_objective"]]
    assert run.info.status == "FINISHED" and run.info.run_name == "line-reference"
    assert run.data.params["primary"] == "normal_equations"
    assert {f"fit_seconds.{n}" for n in doc["references"]} <= set(run.data.metrics)
    assert run.data.metrics["test_r2"] == pytest.approx(primary["test"]["r2"])
    assert [a.path for a in mlflow_client.list_artifacts(run.info.run_id)] == ["reference.json"]


def test_a_fit_stopped_by_its_bound_is_recorded_and_said_not_an_error(
    digits_run, tmp_path, make_params, run_stage, caplog
):
    """Exploring never fails on the reference: too few iterations (or seconds) end the
    fit where it is, recorded as not converged, with a warning that says why."""
    out = tmp_path / "reference.json"
    with caplog.at_level(logging.WARNING, logger="linflow"):
        run_stage(
            "reference", make_params({"reference.max_iter": 2}), "digits",
            "--data", digits_run.data, "--out", out,
        )  # fmt: skip
    ref = read_json(out)["references"]["sklearn_logistic_regression"]
    assert (ref["converged"], ref["stopped_by"], ref["n_iter"]) == (False, "max_iter", 2)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "reference digits: sklearn_logistic_regression did NOT converge to "
        "reference.tol=2e-05: stopped by reference.max_iter=2 after 2 iterations; "
        "its numbers are where lbfgs stopped, not the optimum"
    )


def test_data_prepared_for_another_task_is_refused(digits_run, tmp_path, make_params, run_stage):
    out = tmp_path / "reference.json"
    pattern = (
        rf"^{re.escape(str(digits_run.data))}: holds classification data but "
        r"datasets.line.task is regression \(run dvc repro\)$"
    )
    with pytest.raises(TaskMismatchError, match=pattern):
        run_stage("reference", make_params(), "line", "--data", digits_run.data, "--out", out)
    assert not out.exists()


def test_missing_prepared_data_is_named(tmp_path, monkeypatch, make_params, run_stage):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data/prepared/line/scaler\.json: file not found"):
        run_stage("reference", make_params(), "line")
    assert list(tmp_path.iterdir()) == []
