"""publish, in-process: a tracking store made complete from the pipeline's outputs.

The outputs are the session's line and digits pipelines (tests/stages/conftest.py);
the store is a fresh sqlite one per test, except where the test says it publishes
into the store those stages logged to.
"""

from __future__ import annotations

import csv

import pytest

from linflow.core.artifacts import CompareDoc
from linflow.core.errors import ConfigError, DataError, TrackingError
from linflow.core.storage import file_md5, read_json

TRAINING_FILES = {
    "history.csv", "loss_curve.png", "metrics.json", "evaluation.json", "predictions.png",
    "compare.json", "distance_to_reference.png", "reference_fit.png",
}  # fmt: skip


def _publish(run_stage, params, root, *datasets):
    return run_stage(
        "publish", params, *datasets,
        "--models", root / "models", "--reports", root / "reports", "--data", root / "data/prepared",
    )  # fmt: skip


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri)


def _runs(client, dataset, kind):
    exp = client.get_experiment_by_name(f"linflow-{dataset}")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`linflow.kind` = '{kind}'")


def test_every_dataset_gets_its_runs_once(line_run, digits_run, fresh_store, run_stage, caplog):
    client, root = fresh_store, line_run.root
    caplog.set_level("INFO", logger="linflow")
    assert _publish(run_stage, line_run.params, root, "line", "digits") == 0
    assert caplog.text.count(" created") == 4
    ids = {}
    for ds in ("line", "digits"):
        (train,) = _runs(client, ds, "training")
        (ref,) = _runs(client, ds, "reference")
        ids[ds] = {train.info.run_id, ref.info.run_id}
        m = train.data.metrics
        test = read_json(root / f"reports/{ds}/metrics.json")[ds]["test"]
        assert {f"test_{k}": v for k, v in test.items()}.items() <= m.items()
        doc = CompareDoc.from_json(read_json(root / f"reports/{ds}/compare.json"), ds)
        assert doc.mlflow_metrics().items() <= m.items() and len(doc.mlflow_metrics()) >= 5
        card = read_json(root / f"models/{ds}/model.json")
        assert (m["epochs_run"], m["best_epoch"]) == (card["epochs_run"], card["best_epoch"])
        with (root / f"reports/{ds}/history.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        curve = client.get_metric_history(train.info.run_id, "val_loss")
        assert [(c.step, c.value) for c in curve] == [
            (int(r["epoch"]), float(r["val_loss"])) for r in rows
        ]
        assert train.data.params["train.lr"] == str(card["train"]["lr"])
        assert train.data.tags["linflow.weights_md5"] == file_md5(
            root / f"models/{ds}/model.safetensors"
        )
        assert train.data.tags["linflow.published"] == "created"
        arts = {a.path for a in client.list_artifacts(train.info.run_id)}
        assert arts >= TRAINING_FILES | {"model"}, TRAINING_FILES - arts
        local = client.download_artifacts(train.info.run_id, "model/model.safetensors")
        assert file_md5(local) == train.data.tags["linflow.weights_md5"]
        assert ref.data.tags["linflow.reference_md5"] == file_md5(
            root / f"reports/{ds}/reference.json"
        )
        primary = read_json(root / f"reports/{ds}/reference.json")
        primary = primary["references"][primary["primary"]]
        assert ref.data.metrics == {
            **{f"test_{k}": v for k, v in primary["test"].items()},
            "train_objective": primary["train_objective"],
        }
        # The registry: one version of these weights, carded, gated, champion.
        (version,) = client.search_model_versions(f"name = 'linflow-{ds}'")
        assert version.run_id == train.info.run_id
        assert version.tags["linflow.weights_md5"] == train.data.tags["linflow.weights_md5"]
        assert version.tags["linflow.gate"] == "pass" and "Gate: pass" in version.description
        assert client.get_registered_model(f"linflow-{ds}").aliases == {"champion": version.version}
    caplog.clear()
    assert _publish(run_stage, line_run.params, root, "line", "digits") == 0
    assert caplog.text.count(" complete") == 4 and "created" not in caplog.text
    assert "registered" not in caplog.text
    for ds in ("line", "digits"):
        assert {r.info.run_id for ds_kind in ("training", "reference")
                for r in _runs(client, ds, ds_kind)} == ids[ds]  # fmt: skip
        assert len(client.search_model_versions(f"name = 'linflow-{ds}'")) == 1  # no duplicate


def test_a_run_of_the_same_weights_without_results_is_completed(
    line_run, fresh_store, run_stage, tmp_path
):
    client = fresh_store
    other = tmp_path / "elsewhere"
    run_stage("train", line_run.params, "line", "--data", line_run.data,
              "--model", other / "model", "--reports", other / "reports")  # fmt: skip
    assert file_md5(other / "model/model.safetensors") == file_md5(
        line_run.model / "model.safetensors"
    )
    (bare,) = _runs(client, "line", "training")
    assert not any(k.startswith(("test_", "ref_")) for k in bare.data.metrics)
    _publish(run_stage, line_run.params, line_run.root, "line")
    (done,) = _runs(client, "line", "training")
    assert done.info.run_id == bare.info.run_id
    assert {"test_r2", "test_mse", "ref_weight_rel_l2", "ref_train_loss_gap"} <= set(
        done.data.metrics
    )
    assert done.data.tags["linflow.published"] == "completed"
    assert {a.path for a in client.list_artifacts(done.info.run_id)} >= TRAINING_FILES


def test_runs_the_stages_logged_are_found_not_doubled(line_run, run_stage, mlflow_client, caplog):
    caplog.set_level("INFO", logger="linflow")
    before = {k: len(_runs(mlflow_client, "line", k)) for k in ("training", "reference")}
    _publish(run_stage, line_run.params, line_run.root, "line")
    assert "created" not in caplog.text, caplog.text
    assert {k: len(_runs(mlflow_client, "line", k)) for k in before} == before


def test_bad_input_fails_before_anything_is_sent(
    line_run, make_params, fresh_store, run_stage, tmp_path
):
    with pytest.raises(
        ConfigError, match="^dataset .nope. is not under datasets: .*allowed: line, digits$"
    ):
        _publish(run_stage, line_run.params, line_run.root, "line", "nope")
    # digits' outputs are missing from this root: nothing of line is sent either
    (tmp_path / "reports").symlink_to(line_run.root / "reports")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "line").symlink_to(line_run.model)
    with pytest.raises(DataError, match=r"models/digits/model\.json: file not found"):
        _publish(run_stage, line_run.params, tmp_path, "line", "digits")
    # outputs of other params than this checkout's
    other = make_params({"train.regression.lr": 0.3})
    with pytest.raises(DataError, match=r"trained with train\.lr=0\.4, params\.yaml gives 0\.3"):
        _publish(run_stage, other, line_run.root, "line")
    assert fresh_store.search_experiments(filter_string="name LIKE 'linflow-%'") == []


def test_a_postgresql_uri_without_its_driver_fails_in_one_line(monkeypatch):
    import importlib.util

    from linflow.core import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    with pytest.raises(TrackingError) as err:
        tracking.check_driver("postgresql://team:s3cret@db.example.com/mlflow")
    msg = str(err.value)
    assert msg == (
        "MLFLOW_TRACKING_URI postgresql://***@db.example.com/mlflow needs the PostgreSQL "
        "driver 'psycopg', which is not installed: pip install 'linflow[server]' "
        "(or 'psycopg[binary]')"
    )
    monkeypatch.undo()
    tracking.check_driver("postgresql://team@db.example.com/mlflow")  # installed: no error
    with pytest.raises(TrackingError, match="scheme 'postgres://' is not understood"):
        tracking.check_driver("postgres://db.example.com/mlflow")
