"""compare@<ds>, in-process: the gaps to the reference, the gate, and nothing written on a miss.

A gap over its tolerance also goes through `linflow.cli.main`: the user sees exactly one
error line and exit 1, and the previous outputs stay.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from linflow.cli import main
from linflow.core.errors import DataError, TaskMismatchError
from linflow.core.storage import file_md5, read_json

OUTPUTS = [
    "compare.json",
    "distance.csv",
    "distance_to_reference.png",
    "gaps.json",
    "reference_fit.png",
]


def compare(run_stage, run, reports, params=None, reference=None, model=None):
    return run_stage(
        "compare", params or run.params, run.name, "--data", run.data, "--model",
        model or run.model, "--reference", reference or run.reference, "--reports", reports,
    )  # fmt: skip


def training_run(client, dataset, model):
    exp = client.get_experiment_by_name(f"linflow-{dataset}")
    md5 = file_md5(model / "model.safetensors")
    return client.search_runs([exp.experiment_id], f"tags.`linflow.weights_md5` = '{md5}'")[0]


def test_compare_passes_and_writes_its_outputs(line_run, tmp_path, run_stage, mlflow_client):
    reports = tmp_path / "reports"
    assert compare(run_stage, line_run, reports) is None
    assert sorted(p.name for p in reports.iterdir()) == OUTPUTS
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
    client = mlflow_client
    exp = client.get_experiment_by_name("linflow-line")
    md5 = file_md5(line_run.model / "model.safetensors")
    runs = client.search_runs([exp.experiment_id], f"tags.`linflow.weights_md5` = '{md5}'")
    assert runs[0].data.tags["linflow.kind"] == "training"
    assert runs[0].data.tags["linflow.compare"] == "pass"
    # per-epoch metrics are buffered during training, all of them arrive
    curve = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in curve) == list(range(1, 151))
    assert runs[0].data.metrics["ref_weight_rel_l2"] == pytest.approx(doc["weight_rel_l2"])
    ref_runs = client.search_runs([exp.experiment_id], "tags.`linflow.kind` = 'reference'")
    assert "fit_seconds.normal_equations" in ref_runs[0].data.metrics


def test_gaps_json_holds_only_the_gated_gaps_at_the_default_path(line_run):
    doc = read_json(line_run.reports / "compare.json")
    assert read_json(line_run.reports / "gaps.json") == {
        "line": {name: c["value"] for name, c in doc["checks"].items()}
    }
    assert set(doc["checks"]) == {"weight_rel_l2", "train_objective_rel_gap", "test_r2_delta"}
    assert doc["checks"]["test_r2_delta"]["tolerance"] == 0.005
    assert (doc["dataset"], doc["reference"], doc["n_test"]) == ("line", "normal_equations", 15)


def test_digits_holds_predictions_to_the_reference_and_reports_the_weights(digits_run):
    doc = read_json(digits_run.reports / "compare.json")
    assert doc["passed"] is True and doc["reference"] == "sklearn_logistic_regression"
    checks = doc["checks"]
    assert checks["agreement"]["passed"] and checks["agreement"]["bound"] == "min"
    assert checks["test_accuracy_delta"]["passed"]
    for reported in ("weight_rel_l2", "train_objective_rel_gap"):  # null tolerance
        assert checks[reported]["passed"] is None and checks[reported]["tolerance"] is None
    gaps = read_json(digits_run.reports / "gaps.json")
    assert set(gaps["digits"]) == {"agreement", "test_accuracy_delta"}
    assert set(doc["test"]["ours"]) == {"accuracy", "cross_entropy"}


def test_a_gap_over_tolerance_is_shown_in_one_line_and_the_stage_completes(
    line_run, tmp_path, caplog, params_file
):
    """Exploring is never failed: the gap is written and said; make verify is the gate."""
    reports = tmp_path / "reports"
    tight = params_file(tmp_path / "params.yaml", {"compare.regression.weight_rel_l2": 1e-12})
    argv = ["--params", tight, "compare", "line", "--data", line_run.data, "--model",
            line_run.model, "--reference", line_run.reference, "--reports", reports]  # fmt: skip
    with caplog.at_level("WARNING", logger="linflow"):
        assert main([str(a) for a in argv]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "\n" not in warning
    assert "line is further from the reference than allowed" in warning
    assert "exceeds compare.regression.weight_rel_l2 = 1e-12" in warning
    assert "try more epochs, a smaller lr or full batch" in warning
    assert warning.endswith("make verify and CI fail on this")
    doc = read_json(reports / "compare.json")
    assert doc["passed"] is False and doc["checks"]["weight_rel_l2"]["passed"] is False
    assert read_json(reports / "gaps.json")["line"]["weight_rel_l2"] == doc["weight_rel_l2"]


def test_a_miss_is_tagged_on_the_training_run_and_a_pass_marks_it_again(
    line_run, tmp_path, make_params, run_stage, mlflow_client
):
    tight = make_params({"compare.regression.test_r2_delta": 0.0})
    reports = tmp_path / "reports"
    compare(run_stage, line_run, reports, params=tight)
    assert read_json(reports / "compare.json")["passed"] is False
    run = training_run(mlflow_client, "line", line_run.model)
    assert run.data.tags["linflow.compare"] == "fail"  # the run shows it missed
    assert "ref_test_r2_delta" in run.data.metrics
    compare(run_stage, line_run, tmp_path / "again")  # a pass marks it again
    assert (
        training_run(mlflow_client, "line", line_run.model).data.tags["linflow.compare"] == "pass"
    )


def test_compare_refuses_a_reference_for_another_weight_decay(line_run, tmp_path, run_stage):
    doc = json.loads(line_run.reference.read_text())
    doc["weight_decay"] = 0.5
    stale = tmp_path / "reference.json"
    stale.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="fitted for weight_decay=0.5"):
        compare(run_stage, line_run, tmp_path / "r", reference=stale)
    assert not (tmp_path / "r").exists()


def test_compare_refuses_a_reference_for_another_task(line_run, digits_run, tmp_path, run_stage):
    pattern = (
        rf"^{re.escape(str(digits_run.reference))}: holds classification reference but "
        r"datasets.line.task is regression \(run dvc repro\)$"
    )
    with pytest.raises(TaskMismatchError, match=pattern):
        compare(run_stage, line_run, tmp_path / "r", reference=digits_run.reference)
    assert not (tmp_path / "r").exists()


def test_a_reference_without_its_primary_is_refused(line_run, tmp_path, run_stage):
    doc = json.loads(line_run.reference.read_text())
    del doc["references"]["normal_equations"]
    broken = tmp_path / "reference.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match="primary reference 'normal_equations' is not in references"
    ):
        compare(run_stage, line_run, tmp_path / "r", reference=broken)
    assert not (tmp_path / "r").exists()


def test_an_mae_model_reports_the_least_squares_gaps_without_checking_them(
    line_run, tmp_path, caplog, make_params, run_stage
):
    caplog.set_level(logging.WARNING, logger="linflow")
    params = make_params(
        {"train.regression.loss": "mae", "train.regression.lr_schedule": "cosine"}
    )  # annealed: subgradient steps settle
    model, reference = tmp_path / "model", tmp_path / "reference.json"
    run_stage("train", params, "line", "--data", line_run.data, "--model", model,
              "--reports", tmp_path / "train")  # fmt: skip
    run_stage("reference", params, "line", "--data", line_run.data, "--out", reference)
    reports = tmp_path / "reports"
    compare(run_stage, line_run, reports, params=params, reference=reference, model=model)
    checks = read_json(reports / "compare.json")["checks"]
    for reported in ("weight_rel_l2", "train_objective_rel_gap"):
        assert checks[reported]["passed"] is None and checks[reported]["tolerance"] is None
    assert read_json(reports / "gaps.json") == {
        "line": {"test_r2_delta": checks["test_r2_delta"]["value"]}
    }
    assert any(
        "loss mae: the least-squares reference is not its optimum" in r.getMessage()
        for r in caplog.records
    )


def test_an_augmented_model_is_labelled_not_comparable_and_nothing_is_checked(
    line_run, tmp_path, caplog, make_params, run_stage
):
    caplog.set_level(logging.WARNING, logger="linflow")
    params = make_params({"train.regression.noise": 0.2})
    model = tmp_path / "model"
    run_stage("train", params, "line", "--data", line_run.data, "--model", model,
              "--reports", tmp_path / "train")  # fmt: skip
    reports = tmp_path / "reports"
    compare(run_stage, line_run, reports, params=params, model=model)
    doc = read_json(reports / "compare.json")
    assert doc["not_comparable"] == (
        "trained with data augmentation (noise 0.2): the reference fits the rows as they "
        "are, so every gap is reported, none checked"
    )
    assert all(c["passed"] is None and c["tolerance"] is None for c in doc["checks"].values())
    assert doc["passed"] is True and read_json(reports / "gaps.json") == {"line": {}}
    assert any("trained with data augmentation" in r.getMessage() for r in caplog.records)
    # Without augmentation the key is absent (the committed compare.json files).
    assert "not_comparable" not in read_json(line_run.reports / "compare.json")
