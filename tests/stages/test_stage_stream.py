"""A streamed table through every stage, against the in-memory code on the same rows.

Two generated Parquet tables (30,000 rows, 4 row groups): the streamed chain
(prepare -> split -> train -> reference -> evaluate -> compare) must give what the
in-memory functions give on the same train/val/test rows held in memory: weights
(the one-buffer shuffle is the in-memory permutation), the exact references
(regression to 1e-6 relative; classification agreement >= 0.999 and objective
within 1e-6 relative) and the test metrics.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests.stages.conftest import CHAIN

ROWS, GROUP = 30_000, 8_000


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, mlflow_uri, make_params, run_stage) -> SimpleNamespace:
    from linflow.datasets.examples import write_large

    root = tmp_path_factory.mktemp("streamed")
    write_large(root / "reg.parquet", ROWS, 6, "regression", group_rows=GROUP)
    write_large(root / "cls.parquet", ROWS, 6, "classification", classes=3, group_rows=GROUP)
    entry = {"source": "table", "standardize": True}
    params = make_params(
        {
            "datasets.reg": {**entry, "path": "reg.parquet", "task": "regression",
                             "data": {"target": "y", "stream": True}},
            "datasets.cls": {**entry, "path": "cls.parquet", "task": "classification",
                             "data": {"target": "y", "stream": True},
                             "train": {"epochs": 12, "batch_size": 128}},
        }
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        for name in ("reg", "cls"):
            for stage in CHAIN:
                assert run_stage(stage, params, name) is None, (name, stage)
    return SimpleNamespace(root=root, params=params)


def _rows(root, name):
    from linflow.core.chunks import StreamSplit

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the manifest names the table's files as params.yaml does
        split = StreamSplit(root / "data" / "prepared" / name)
        for which in ("train", "val", "test"):
            parts = list(split.iter(which))
            out[which] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))  # fmt: skip
    return split, out


def _model(root, name):
    from linflow.core.storage import load_weights

    tensors, _ = load_weights(root / "models" / name / "model.safetensors")
    return tensors["weight"], tensors["bias"]


def test_split_is_the_hash_of_seed_and_row(streamed):
    from linflow.streaming import split_codes, split_key

    split, rows = _rows(streamed.root, "reg")
    codes = split_codes(0, ROWS, split_key(streamed.params.seed, "reg"), (0.7, 0.15, 0.15))
    np.testing.assert_array_equal(np.asarray(split.assign), codes)
    assert {k: v[0].shape[0] for k, v in rows.items()} == split.doc["rows"]
    assert not (streamed.root / "data" / "prepared" / "reg" / "train.npz").exists()  # no copies


@pytest.mark.parametrize("name", ["reg", "cls"])
def test_streamed_training_is_the_in_memory_training(streamed, name):
    from linflow.reference import relative_l2
    from linflow.training import fit, make_engine

    split, rows = _rows(streamed.root, name)
    cfg = streamed.params.train_config(name)
    task = split.task
    k = len(split.class_names) if task == "classification" else 1
    target = torch.int64 if task == "classification" else torch.float32

    def t(a, dtype=torch.float32):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    engine = make_engine("torch", task, rows["train"][0].shape[1], k, cfg)
    result = fit(
        engine, t(rows["train"][0]), t(rows["train"][1], target),
        t(rows["val"][0]), t(rows["val"][1], target), cfg,
    )  # fmt: skip
    W, b = _model(streamed.root, name)
    if task == "classification":  # one buffer: the same permutation, batch for batch
        np.testing.assert_array_equal(W, result.weight)
        np.testing.assert_array_equal(b, result.bias)
    else:  # the full-batch mean as a sum over row groups: rounding apart
        assert relative_l2(W, result.weight) < 1e-6


def test_streamed_references_are_the_in_memory_ones(streamed):
    from linflow import reference

    _, rows = _rows(streamed.root, "reg")
    doc = json.loads((streamed.root / "reports" / "reg" / "reference.json").read_text())
    ours = doc["references"]["normal_equations"]
    exact = reference.fit_normal_equations(*rows["train"], 0.0)
    assert reference.relative_l2(np.array(ours["weight"]), exact.weight) < 1e-6

    split, rows = _rows(streamed.root, "cls")
    doc = json.loads((streamed.root / "reports" / "cls" / "reference.json").read_text())
    ours = doc["references"]["streamed_lbfgs"]
    wd, rc = doc["weight_decay"], streamed.params.reference
    skl = reference.fit_logistic_regression(*rows["train"], 3, wd, rc.max_iter, rc.tol)
    W, b = np.array(ours["weight"]), np.array(ours["bias"])
    j_ours = reference.objective(*rows["train"], W, b, "cross_entropy", wd)[1]
    j_skl = reference.objective(*rows["train"], skl.weight, skl.bias, "cross_entropy", wd)[1]
    assert abs(j_ours - j_skl) / j_skl < 1e-6
    X = rows["test"][0]
    same = np.mean((X @ W.T + b).argmax(1) == (X @ skl.weight.T + skl.bias).argmax(1))
    assert same >= 0.999


@pytest.mark.parametrize("name", ["reg", "cls"])
def test_streamed_metrics_and_gate_are_the_in_memory_ones(streamed, name):
    from linflow import metrics, reference

    split, rows = _rows(streamed.root, name)
    reports = streamed.root / "reports" / name
    scalars = json.loads((reports / "metrics.json").read_text())[name]["test"]
    expected = reference.split_metrics(split.task, *rows["test"], *_model(streamed.root, name))
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-9), key
    compare = json.loads((reports / "compare.json").read_text())
    assert compare["passed"] is True
    assert compare["n_test"] == rows["test"][0].shape[0]
    lines = (reports / "predictions.csv").read_text().splitlines()
    assert len(lines) == rows["test"][0].shape[0] + 1
    if split.task == "regression":
        y_hat = metrics.predict_linear(rows["test"][0], *_model(streamed.root, name))[:, 0]
        assert float(lines[1].split(",")[1]) == y_hat[0]


def test_what_streaming_does_not_do_is_one_line(streamed, make_params, run_stage, monkeypatch):
    from linflow.core.errors import ConfigError

    monkeypatch.chdir(streamed.root)
    base = {
        "datasets.reg": {"source": "table", "path": "reg.parquet", "task": "regression",
                         "standardize": True, "data": {"target": "y", "stream": True}},
    }  # fmt: skip
    cases = [
        (
            {"datasets.reg.train": {"impl": "scratch"}},
            "reg",
            "streamed tables train with impl 'torch'",
        ),  # fmt: skip
        (
            {"datasets.line.train.processes": 2},
            "line",
            "several processes train streamed tables only",
        ),  # fmt: skip
    ]
    for edits, name, message in cases:
        params = make_params({**base, **edits})
        with pytest.raises(ConfigError, match=message):
            run_stage("train", params, name)
