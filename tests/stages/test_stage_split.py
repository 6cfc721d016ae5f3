"""split@<ds>, in-process: three disjoint splits and a scaler fitted on train, or nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest

from linflow.core.errors import DataError, TaskMismatchError
from linflow.core.storage import load_npz, read_json, save_npz

SPLIT_KEYS = {"X", "y", "index", "task", "class_names", "feature_names", "x_scale"}


def test_line_splits_70_15_15_at_the_default_paths(line_run):
    assert sorted(p.name for p in line_run.data.iterdir()) == [
        "example.json", "scaler.json", "test.npz", "train.npz", "val.npz",
    ]  # fmt: skip
    raw = load_npz(line_run.raw)
    # The logged model's input example: the first 5 test rows, raw columns.
    example = read_json(line_run.data / "example.json")
    test = load_npz(line_run.data / "test.npz")
    assert example["columns"] == ["x"]
    assert example["data"] == raw["X"][test["index"][:5]].astype(float).tolist()
    parts = {s: load_npz(line_run.data / f"{s}.npz") for s in ("train", "val", "test")}
    for part in parts.values():
        assert set(part) == SPLIT_KEYS
        assert str(part["task"]) == "regression"
        np.testing.assert_array_equal(part["X"], raw["X"][part["index"]])  # the raw rows
        np.testing.assert_array_equal(part["y"], raw["y"][part["index"]])
        assert np.all(np.diff(part["index"]) > 0)  # sorted, no repeats
    idx = [parts[s]["index"] for s in ("train", "val", "test")]
    assert [i.size for i in idx] == [70, 15, 15]
    assert np.array_equal(np.sort(np.concatenate(idx)), np.arange(100))  # disjoint, complete
    # line is not standardised: the scaler is the identity
    assert read_json(line_run.data / "scaler.json") == {
        "standardize": False, "x_scale": 1.0, "mean": [0.0], "std": [1.0],
    }  # fmt: skip


def test_digits_split_is_stratified_and_the_scaler_uses_train_only(digits_run):
    parts = {s: load_npz(digits_run.data / f"{s}.npz") for s in ("train", "val", "test")}
    assert [p["y"].size for p in parts.values()] == [1259, 269, 269]
    counts = np.bincount(load_npz(digits_run.raw)["y"])
    for part in parts.values():
        assert set(part["y"].tolist()) == set(range(10))  # every class in every split
        share = np.bincount(part["y"], minlength=10) / part["y"].size
        np.testing.assert_allclose(share, counts / counts.sum(), atol=0.01)
    scaler = read_json(digits_run.data / "scaler.json")
    assert scaler["standardize"] is True and len(scaler["mean"]) == len(scaler["std"]) == 64
    train_X = parts["train"]["X"].astype(np.float64)
    np.testing.assert_allclose(scaler["mean"], train_X.mean(axis=0), atol=1e-12)
    assert min(scaler["std"]) > 0  # constant border pixels: std 1, not 0


def test_same_raw_same_bytes(line_run, tmp_path, run_stage):
    run_stage("split", line_run.params, "line", "--raw", line_run.raw, "--out", tmp_path)
    for name in ("train.npz", "val.npz", "test.npz", "scaler.json"):
        assert (tmp_path / name).read_bytes() == (line_run.data / name).read_bytes(), name


def test_a_missing_raw_file_is_named_and_nothing_written(
    tmp_path, monkeypatch, make_params, run_stage
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match=r"^data/raw/line\.npz: file not found \(run the stage that writes it\)$"
    ):
        run_stage("split", make_params(), "line")
    assert list(tmp_path.iterdir()) == []


def _toy_raw(path, task="classification", X=None):
    n = 40
    save_npz(
        path,
        task=np.array(task),
        X=np.arange(n * 2, dtype=np.float32).reshape(n, 2) if X is None else X,
        y=np.arange(n) % 2,
        x_scale=np.array(1.0),
        feature_names=np.array(["a", "b"]),
        class_names=np.array(["no", "yes"]),
    )
    return path


def test_raw_data_of_another_task_is_refused(tmp_path, make_params, run_stage):
    raw = _toy_raw(tmp_path / "raw.npz")
    out = tmp_path / "prep"
    with pytest.raises(
        TaskMismatchError,
        match=rf"^{re.escape(str(raw))}: holds classification data but datasets.line.task is regression \(run dvc repro\)$",
    ):
        run_stage("split", make_params(), "line", "--raw", raw, "--out", out)
    assert not out.exists()


def test_non_finite_raw_features_are_refused_with_row_and_column(tmp_path, make_params, run_stage):
    X = np.zeros((40, 2), np.float32)
    X[7, 1] = np.inf
    raw = _toy_raw(tmp_path / "raw.npz", X=X)
    out = tmp_path / "prep"
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(raw))}: X has a non-finite value \(inf\) at row 7, column 1$",
    ):
        run_stage("split", make_params(), "digits", "--raw", raw, "--out", out)
    assert not out.exists()


def test_fractions_leaving_an_empty_split_name_the_key(line_run, tmp_path, make_params, run_stage):
    params = make_params({"split": {"train": 0.996, "val": 0.002, "test": 0.002}})
    out = tmp_path / "prep"
    with pytest.raises(
        DataError, match=r"^split\.val = 0\.002 leaves an empty val split for the data \(100 rows"
    ):
        run_stage("split", params, "line", "--raw", line_run.raw, "--out", out)
    assert not out.exists()
