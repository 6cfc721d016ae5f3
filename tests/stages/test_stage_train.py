"""train@<ds>, in-process: weights, card, trajectory, history and one MLflow run, or nothing.

The learning-rate bound: a warning before training above it, and a divergence error
citing it (through `linflow.cli.main`: one error line, exit 1) with no weights written.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from linflow.cli import main
from linflow.core.errors import ConfigError, DataError, TaskMismatchError
from linflow.core.storage import file_md5, load_npz, load_weights, read_json
from linflow.training import DivergenceError


def train(run_stage, params, data, out, dataset="line"):
    """Train into out/model and out/model/reports."""
    return run_stage(
        "train", params, dataset, "--data", data, "--model", out / "model",
        "--reports", out / "model" / "reports",
    )  # fmt: skip


def test_line_writes_weights_card_and_history_at_the_default_paths(line_run):
    assert sorted(p.name for p in line_run.model.iterdir()) == [
        "model.json", "model.safetensors", "trajectory.npz", "transform.json",
    ]  # fmt: skip
    # A built-in set's transform: its features are the model's inputs, with the scaler.
    transform = read_json(line_run.model / "transform.json")
    assert transform["kind"] == "array" and transform["encoder"] is None
    assert transform["inputs"] == [{"name": "x", "kind": "numeric", "type": "double"}]
    assert transform["scaler"] == read_json(line_run.data / "scaler.json")
    tensors, meta = load_weights(line_run.model / "model.safetensors")
    assert tensors["weight"].shape == (1, 1) and tensors["bias"].shape == (1,)
    assert tensors["weight"].dtype == np.float32
    assert tensors["weight"][0, 0] == pytest.approx(3.0, abs=0.1)  # y = 3x + 1
    assert tensors["bias"][0] == pytest.approx(1.0, abs=0.1)
    assert meta == {"task": "regression", "n_features": "1", "n_outputs": "1"}
    card = read_json(line_run.model / "model.json")
    assert {k: card[k] for k in ("dataset", "task", "impl", "loss", "n_params")} == {
        "dataset": "line", "task": "regression", "impl": "torch", "loss": "mse", "n_params": 2,
    }  # fmt: skip
    assert (card["epochs_run"], card["best_epoch"], card["stopped_early"]) == (150, 150, False)
    assert card["feature_names"] == ["x"] and card["class_names"] == []
    assert card["weights"]["file"] == "model.safetensors"
    assert card["train"] == {**line_run.params.train_config("line").model_dump()}
    history = (line_run.reports / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_rmse"
    assert len(history) == 1 + 150 and history[-1].startswith("150,")
    assert (line_run.reports / "loss_curve.png").stat().st_size > 1000


def test_train_records_the_trajectory_and_the_bound(line_run):
    card = read_json(line_run.model / "model.json")
    traj = load_npz(line_run.model / "trajectory.npz")
    assert traj["epoch"].tolist() == list(range(card["epochs_run"] + 1))
    assert traj["weight"].shape == (card["epochs_run"] + 1, 1, 1)
    assert traj["bias"].shape == (card["epochs_run"] + 1, 1)
    assert 0.9 < card["lr_bound"] < 1.1  # x ~ U(-1, 1): lambda_max ~ 2


def test_one_finished_mlflow_run_holds_params_curves_and_the_weights_hash(line_run, mlflow_client):
    exp = mlflow_client.get_experiment_by_name("linflow-line")
    md5 = file_md5(line_run.model / "model.safetensors")
    (run,) = mlflow_client.search_runs(
        [exp.experiment_id],
        f"tags.`linflow.weights_md5` = '{md5}' and tags.`linflow.kind` = 'training'",
    )
    assert run.info.status == "FINISHED" and run.info.run_name == "line-torch"
    assert run.data.params["train.lr"] == "0.4" and run.data.params["derived.n_train"] == "70"
    assert run.data.metrics["epochs_run"] == 150
    assert len(mlflow_client.get_metric_history(run.info.run_id, "val_loss")) == 150
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "loss_curve.png", "model"} <= artifacts


def test_digits_trains_a_10_class_softmax(digits_run):
    tensors, _ = load_weights(digits_run.model / "model.safetensors")
    assert tensors["weight"].shape == (10, 64) and tensors["bias"].shape == (10,)
    card = read_json(digits_run.model / "model.json")
    assert card["task"] == "classification" and card["loss"] == "cross_entropy"
    assert card["n_params"] == 650 and card["class_names"] == [str(c) for c in range(10)]
    # cross-entropy's bound at the start, 2K/lambda_max([X 1]^T[X 1]/n) (+ decay): 2.75
    assert card["lr_bound"] == pytest.approx(2.75, rel=0.01)
    history = (digits_run.reports / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_accuracy" and len(history) == 1 + 200
    assert float(history[-1].split(",")[-1]) > 0.9


def test_lr_above_the_bound_warns_before_training(
    line_run, tmp_path, caplog, make_params, run_stage
):
    caplog.set_level(logging.INFO, logger="linflow")
    params = make_params({"train.regression.lr": 1.05, "train.regression.epochs": 3})
    assert train(run_stage, params, line_run.data, tmp_path) is None
    messages = [r.getMessage() for r in caplog.records]
    warn = next(i for i, m in enumerate(messages) if "exceeds the full-batch stable step" in m)
    done = next(i for i, m in enumerate(messages) if "epochs in" in m)
    assert warn < done
    assert caplog.records[warn].levelno == logging.WARNING
    assert "lr=1.05" in messages[warn] and "2/lambda_max = " in messages[warn]


def test_divergence_fails_citing_the_bound_and_writes_no_weights(
    line_run, tmp_path, capsys, params_file, mlflow_client
):
    # Just above line's bound 2/lambda_max ~ 0.99: the error grows ~1.2x per epoch, so the
    # loss passes 10x its value before training after a dozen logged epochs.
    params = params_file(tmp_path / "params.yaml", {"train.regression.lr": 1.1})
    model = tmp_path / "model"
    argv = ["--params", params, "train", "line", "--data", line_run.data, "--model", model,
            "--reports", model / "reports"]  # fmt: skip
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("linflow train: error: training diverged")
    assert "lr=1.1" in err and "2/lambda_max = 0.9" in err
    assert not model.exists()
    exp = mlflow_client.get_experiment_by_name("linflow-line")
    (failed,) = mlflow_client.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    assert "2/lambda_max" in failed.data.tags["linflow.failure"]
    # the epochs before the blow-up are flushed to the failed run
    assert mlflow_client.get_metric_history(failed.info.run_id, "train_loss")
    assert float(failed.data.params["derived.lr_bound"]) == pytest.approx(0.99, abs=0.1)


def test_train_rejects_batches_larger_than_the_split(line_run, tmp_path, make_params, run_stage):
    params = make_params({"train.regression.batch_size": 10_000})
    with pytest.raises(ConfigError) as info:
        train(run_stage, params, line_run.data, tmp_path)
    assert str(info.value) == (
        "params.yaml: train.regression.batch_size must be <= the train split size "
        "(70 rows of line) or 'full', got 10000"
    )
    assert not (tmp_path / "model").exists()


def test_cuda_without_a_gpu_names_the_key_and_writes_nothing(
    line_run, tmp_path, monkeypatch, make_params, run_stage
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match=r"^params.yaml: train.device must be 'cpu' on this machine"
    ):
        train(run_stage, make_params({"train.device": "cuda"}), line_run.data, tmp_path)
    assert not (tmp_path / "model").exists()


def test_data_prepared_for_another_task_is_refused_before_training(
    digits_run, tmp_path, caplog, make_params, run_stage
):
    caplog.set_level(logging.INFO, logger="linflow")
    pattern = (
        rf"^{re.escape(str(digits_run.data))}: holds classification data but "
        r"datasets.line.task is regression \(run dvc repro\)$"
    )
    with pytest.raises(TaskMismatchError, match=pattern):
        train(run_stage, make_params(), digits_run.data, tmp_path)
    assert not (tmp_path / "model").exists()
    assert not any("train line:" in r.getMessage() for r in caplog.records)


def test_missing_prepared_data_is_named(tmp_path, monkeypatch, make_params, run_stage):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data/prepared/line/scaler\.json: file not found"):
        run_stage("train", make_params(), "line")
    assert list(tmp_path.iterdir()) == []


def test_softmax_lr_above_the_cross_entropy_bound_warns_then_stops_on_divergence(
    digits_run, tmp_path, caplog, make_params, run_stage
):
    """Digits at lr 1000 (the issue's silent 0.39): a warning with the bound before
    training, then a one-line divergence error citing it, and no weights."""
    caplog.set_level(logging.INFO, logger="linflow")
    params = make_params({"train.classification.lr": 1000, "train.classification.epochs": 3})
    with pytest.raises(DivergenceError, match=r"training diverged: .* lr=1000.*bound is "
                       r"2/lambda_max = 2\.75\d*; lower lr"):  # fmt: skip
        train(run_stage, params, digits_run.data, tmp_path, "digits")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "train digits: lr=1000 exceeds the full-batch stable step bound 2/lambda_max = 2.75" in (
        warning
    )
    assert "cross-entropy Hessian at the start" in warning
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_the_default_softmax_recipes_sit_under_the_bound(
    digits_run, tmp_path, caplog, make_params, run_stage
):
    caplog.set_level(logging.INFO, logger="linflow")
    params = make_params({"train.classification.epochs": 2})
    assert train(run_stage, params, digits_run.data, tmp_path, "digits") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("stable lr bound 2/lambda_max = 2.75" in r.getMessage() for r in caplog.records)
