"""predict, the logged MLflow Model and the Model Registry, in-process on the stage fixtures.

The session's digits and line pipelines (conftest.py) trained, evaluated and
compared in this process with their own MLflow store: each training logged an
MLflow Model and registered a version of linflow-<ds>; compare gave it the
champion alias. Scoring the test rows -- raw columns, as a user has them -- by
`linflow predict` (workspace model or models:/ URI) and by
mlflow.pyfunc.load_model gives predictions.csv's numbers.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from linflow.core.errors import DataError
from linflow.core.storage import file_md5, load_npz, save_weights


def _test_rows(run) -> pd.DataFrame:
    """The test split's rows as raw columns (what a user would have in a file)."""
    raw = load_npz(run.raw)
    test = load_npz(run.data / "test.npz")
    names = [str(f) for f in raw["feature_names"]]
    return pd.DataFrame(raw["X"][test["index"]].astype(np.float64), columns=names)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _predict(run_stage, run, *argv):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run.root)
        return run_stage("predict", run.params, run.name, *argv)


@pytest.mark.parametrize("fixture", ["digits_run", "line_run"])
def test_predict_on_the_test_rows_reproduces_predictions_csv_exactly(
    fixture, request, tmp_path, run_stage, mlflow_client
):
    run = request.getfixturevalue(fixture)
    # evaluate's predictions of the model in the workspace now (other tests may retrain it).
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run.root)
        run_stage("evaluate", run.params, run.name, "--reports", tmp_path / "evaluated")
    rows = tmp_path / "rows.csv"
    _test_rows(run).to_csv(rows, index=False)
    out = tmp_path / "scored.csv"
    _predict(run_stage, run, "--input", rows, "--output", out)
    ours, theirs = _rows(out), _rows(tmp_path / "evaluated" / "predictions.csv")
    assert ours[0] == theirs[0][1:]  # predicted (+ p_<class>): predictions.csv without actual
    assert [r for r in ours[1:]] == [r[1:] for r in theirs[1:]]
    # The registered version of these weights, fetched from MLflow, scores them the same.
    md5 = file_md5(run.model / "model.safetensors")
    (version,) = mlflow_client.search_model_versions(
        f"name = 'linflow-{run.name}' and tags.`linflow.weights_md5` = '{md5}'"
    )
    via_mlflow = tmp_path / "scored_mlflow.csv"
    uri = f"models:/linflow-{run.name}/{version.version}"
    _predict(run_stage, run, "--input", rows, "--output", via_mlflow, "--model", uri)
    assert _rows(via_mlflow) == ours


def test_the_pyfunc_model_takes_raw_columns_and_gives_the_same_numbers(digits_run, tmp_path):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/linflow-digits@champion")
    inputs = [c.name for c in model.metadata.signature.inputs.inputs]
    assert inputs == [f"px{i // 8}_{i % 8}" for i in range(64)]  # raw columns, not scaled ones
    out = model.predict(_test_rows(digits_run))
    theirs = _rows(digits_run.reports / "predictions.csv")
    assert list(out.columns) == theirs[0][1:]
    assert out["predicted"].tolist() == [r[1] for r in theirs[1:]]
    probs = out.drop(columns="predicted").to_numpy()
    np.testing.assert_array_equal(
        np.array([[f"{q:.6g}" for q in row] for row in probs]),
        np.array([r[2:] for r in theirs[1:]]),
    )


def test_bad_rows_get_one_line_and_no_output(digits_run, tmp_path, run_stage):
    df = _test_rows(digits_run).head(20)
    out = tmp_path / "out.csv"
    cases = {
        "missing": (df.drop(columns="px3_4"), r"rows\.csv: the rows have no column 'px3_4'"),
        "extra": (
            df.assign(customer="c1"),
            r"rows\.csv: column 'customer' is not an input of the model; drop it, or keep it",
        ),
        "type": (
            df.astype({"px0_1": object}).assign(px0_1=["abc"] + [0.0] * 19),
            r"rows\.csv: column 'px0_1': 'abc' at row 1 is not a number",
        ),
    }
    for name, (frame, pattern) in cases.items():
        rows = tmp_path / "rows.csv"
        frame.to_csv(rows, index=False)
        with pytest.raises(DataError, match=pattern) as err:
            _predict(run_stage, digits_run, "--input", rows, "--output", out)
        assert "\n" not in str(err.value), name
        assert not out.exists() and not list(tmp_path.glob(".out.csv*")), name
    # --keep-extra copies the extra column through, in front of the predictions.
    rows = tmp_path / "rows.csv"
    df.assign(customer=[f"c{i}" for i in range(20)]).to_csv(rows, index=False)
    _predict(run_stage, digits_run, "--input", rows, "--output", out, "--keep-extra")
    got = _rows(out)
    assert got[0][:2] == ["customer", "predicted"] and got[1][0] == "c0" and len(got) == 21


def test_a_tampered_model_fails_to_load_in_one_line(digits_run, tmp_path, run_stage):
    import mlflow
    from mlflow.exceptions import MlflowException

    folder = tmp_path / "model"
    shutil.copytree(digits_run.model, folder)
    rows = tmp_path / "rows.csv"
    _test_rows(digits_run).head(5).to_csv(rows, index=False)
    save_weights(
        folder / "model.safetensors",
        {"weight": np.zeros((10, 63), np.float32), "bias": np.zeros(10, np.float32)},
        {"task": "classification"},
    )
    with pytest.raises(DataError, match=r"weights of shape \(10, 63\) \+ \(10,\) do not fit"):
        _predict(run_stage, digits_run, "--input", rows, "--output", tmp_path / "o.csv", "--model", folder)  # fmt: skip
    # The logged MLflow model, its transform edited: refused at load, not a wrong answer.
    local = Path(mlflow.artifacts.download_artifacts("models:/linflow-digits@champion", dst_path=str(tmp_path / "dl")))  # fmt: skip
    transform = next(local.rglob("transform.json"))
    doc = json.loads(transform.read_text())
    doc["scaler"]["mean"] = doc["scaler"]["mean"][:-1]
    transform.write_text(json.dumps(doc))
    with pytest.raises(MlflowException, match=r"linflow model: cannot load: the scaler has 63 features, the model 64"):  # fmt: skip
        mlflow.pyfunc.load_model(str(local))


def test_no_pickle_in_any_logged_model(digits_run, line_run, tmp_path):
    import mlflow

    for name in ("digits", "line"):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/linflow-{name}@champion", dst_path=str(tmp_path / name)))  # fmt: skip
        files = [p for p in local.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"MLmodel", "model.safetensors", "transform.json", "model_code.py", "scoring.py"}  # fmt: skip
        for p in files:
            assert p.suffix not in (".pkl", ".pickle", ".joblib", ".cloudpickle"), p
            assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"
        # Models-from-code: the flavor names the code file (MLflow records its cloudpickle
        # version as metadata, but no object is pickled).
        import yaml

        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        assert "python_model" not in flavor  # a pickled PythonModel would be named here


@pytest.fixture
def line_store(tmp_path, monkeypatch, make_params, run_stage):
    """line's pipeline in its own folder and MLflow store: the registry from scratch."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    params = make_params()
    for stage in ("prepare", "split", "train", "reference", "compare"):
        run_stage(stage, params, "line")
    return MlflowClient(tracking_uri=uri), params


def test_registry_one_version_per_new_weights_with_tags_card_and_champion(line_store):
    client, _ = line_store
    (v,) = client.search_model_versions("name = 'linflow-line'")  # one training, one version
    assert {"linflow.weights_md5", "linflow.data_md5", "mlflow.source.git.commit", "linflow.params_md5", "linflow.gate"} <= set(v.tags)  # fmt: skip
    assert v.tags["linflow.gate"] == "pass"
    assert v.description.startswith("**linflow line**: regression, torch mse")
    assert "Gate: pass" in v.description and "data md5" in v.description
    assert client.get_registered_model("linflow-line").aliases == {"champion": v.version}
    run = client.get_run(v.run_id)
    assert run.data.tags["linflow.weights_md5"] == v.tags["linflow.weights_md5"]


def test_same_weights_add_no_version_and_an_experiment_gets_challenger(
    line_store, run_stage, monkeypatch
):
    """A rerun to the same weights adds none; in a DVC experiment a passing gate gives
    challenger, never champion."""
    client, params = line_store
    run_stage("train", params, "line")
    assert len(client.search_model_versions("name = 'linflow-line'")) == 1
    edited = params.train.regression.model_copy(update={"weight_decay": 0.01})  # another optimum
    params = params.model_copy(update={"train": params.train.model_copy(update={"regression": edited})})  # fmt: skip
    monkeypatch.setenv("DVC_EXP_NAME", "short-line")
    for stage in ("train", "reference", "compare"):
        run_stage(stage, params, "line")
    versions = sorted(client.search_model_versions("name = 'linflow-line'"), key=lambda v: int(v.version))  # fmt: skip
    assert len(versions) == 2
    first, new = versions
    assert new.tags["dvc.exp_name"] == "short-line" and new.tags["linflow.gate"] == "pass"
    aliases = client.get_registered_model("linflow-line").aliases
    assert aliases == {"champion": first.version, "challenger": new.version}


def test_a_frame_of_one_block_scores_as_its_rows_in_c_order(digits_run):
    """pandas holds a frame made from one 2-D array as one block: its to_numpy is the
    block's transpose (F order), and a matrix product in that order sums otherwise.
    The pyfunc model must give evaluate's numbers for it too, not 1 ulp off."""
    from linflow import scoring
    from linflow.core.storage import load_weights, read_json
    from linflow.transform import apply_scaler

    tensors, _ = load_weights(digits_run.model / "model.safetensors")
    W, b = tensors["weight"][:1], tensors["bias"][:1]  # one output: a raw sum, no softmax
    transform = read_json(digits_run.model / "transform.json")
    names = _test_rows(digits_run).columns
    # Digits' pixels are small integers, whose sums are exact in any order: other numbers.
    values = np.random.default_rng(0).normal(8.0, 5.0, size=(300, len(names)))
    got = scoring.predict_frame(pd.DataFrame(values, columns=names), W, b, transform, "regression")
    X = apply_scaler(values.astype(np.float32), transform["scaler"])  # C order, as evaluate
    want = scoring.predict_matrix(X, W, b, "regression", transform["class_names"])
    np.testing.assert_array_equal(got["predicted"].to_numpy(), want["predicted"])
