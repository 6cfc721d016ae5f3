"""gd: the step-size lesson's outputs and its MLflow run."""

from __future__ import annotations

import csv

import pytest

from linflow.core.storage import read_json


def test_gd_writes_trajectories_summary_and_figure(tmp_path, make_params, run_stage, mlflow_client):
    params = make_params({"gd.lrs": [0.2, 0.55], "gd.steps": 5})
    run_stage("gd", params, "--out", tmp_path / "gd")
    doc = read_json(tmp_path / "gd" / "gd.json")
    quad = doc["functions"]["2x^2"]
    assert (quad["lambda_max"], quad["lr_bound"]) == (4.0, 0.5)
    assert quad["runs"]["0.2"]["converges"] and not quad["runs"]["0.55"]["converges"]
    assert quad["runs"]["0.55"]["final_value"] == pytest.approx(2 * 1.2**10)  # (1-4lr)^2k x0^2
    assert quad["runs"]["0.2"]["numpy_vs_autograd_max_rel_diff"] == 0.0
    with open(tmp_path / "gd" / "trajectories.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 6  # functions x lrs x (steps + 1)
    sphere = [r for r in rows if r["function"] == "x^2+y^2+z^2" and r["lr"] == "0.2"]
    assert [float(r["value"]) for r in sphere][:2] == pytest.approx([3.0, 3 * 0.6**2])
    assert (tmp_path / "gd" / "gd.png").stat().st_size > 10000
    exp = mlflow_client.get_experiment_by_name("linflow-gd")
    (run,) = mlflow_client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    history = mlflow_client.get_metric_history(run.info.run_id, "f_2x2.lr_0.55")
    assert [m.step for m in history] == list(range(6))
