"""prepare@<ds>, in-process: the raw arrays it writes, and what it refuses to write."""

from __future__ import annotations

import re

import numpy as np
import pytest

from linflow.core.errors import ConfigError, DataError, WriteError
from linflow.core.storage import load_npz

RAW_KEYS = {"task", "X", "y", "feature_names", "class_names", "x_scale"}


def test_line_writes_its_raw_arrays_at_the_default_path(
    tmp_path, monkeypatch, make_params, run_stage
):
    monkeypatch.chdir(tmp_path)
    assert run_stage("prepare", make_params(), "line") is None
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == ["line.npz"]
    raw = load_npz(tmp_path / "data" / "raw" / "line.npz")
    assert set(raw) == RAW_KEYS
    assert str(raw["task"]) == "regression"
    assert raw["X"].shape == (100, 1) and raw["X"].dtype == np.float32
    assert raw["y"].shape == (100,) and raw["y"].dtype == np.float32
    assert raw["feature_names"].tolist() == ["x"] and raw["class_names"].size == 0
    assert float(raw["x_scale"]) == 1.0
    assert ((raw["X"] >= -1) & (raw["X"] <= 1)).all()
    slope, intercept = np.polyfit(raw["X"][:, 0], raw["y"], 1)  # y = 3x + 1 + N(0, 0.1^2)
    assert slope == pytest.approx(3.0, abs=0.1) and intercept == pytest.approx(1.0, abs=0.1)


def test_digits_are_64_scaled_pixels_and_10_integer_classes(tmp_path, make_params, run_stage):
    out = tmp_path / "digits.npz"
    run_stage("prepare", make_params(), "digits", "--out", out)
    raw = load_npz(out)
    assert set(raw) == RAW_KEYS
    assert str(raw["task"]) == "classification"
    assert raw["X"].shape == (1797, 64) and raw["X"].dtype == np.float32
    assert raw["X"].min() >= 0 and raw["X"].max() <= 1
    assert raw["y"].dtype == np.int64 and set(raw["y"].tolist()) == set(range(10))
    assert raw["class_names"].tolist() == [str(c) for c in range(10)]
    assert raw["feature_names"].size == 64


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, make_params, run_stage):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_stage("prepare", make_params({"seed": seed}), "line", "--out", tmp_path / f"{name}.npz")
    a, b, c = ((tmp_path / f"{n}.npz").read_bytes() for n in "abc")
    assert a == b and a != c


def test_rows_and_noise_follow_the_dataset_params(tmp_path, make_params, run_stage):
    params = make_params({"datasets.line.data.n": 30, "datasets.line.data.noise": 0.0})
    run_stage("prepare", params, "line", "--out", tmp_path / "raw.npz")
    raw = load_npz(tmp_path / "raw.npz")
    assert raw["X"].shape == (30, 1)
    np.testing.assert_allclose(raw["y"], 3 * raw["X"][:, 0] + 1, atol=1e-6)  # float32


def test_an_unknown_dataset_names_the_known_ones_and_writes_nothing(
    tmp_path, monkeypatch, make_params, run_stage
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^dataset 'nope' is not in params.yaml datasets; known: line, digits$"
    ):
        run_stage("prepare", make_params(), "nope")
    assert list(tmp_path.iterdir()) == []


def test_a_source_returning_bad_data_is_refused_before_writing(
    tmp_path, monkeypatch, make_params, run_stage
):
    import linflow.datasets

    def nan_source(name, cfg, seed):
        X = np.zeros((10, 1), np.float32)
        X[4, 0] = np.nan
        return linflow.datasets.RawData("regression", X, np.zeros(10, np.float32), ["x"])

    monkeypatch.setattr(linflow.datasets, "load_source", nan_source)
    out = tmp_path / "raw" / "line.npz"
    with pytest.raises(
        DataError, match=r"^dataset line: X has a non-finite value \(nan\) at row 4, column 0$"
    ):
        run_stage("prepare", make_params(), "line", "--out", out)
    assert not out.parent.exists()


def test_an_output_under_a_file_is_one_line_naming_it(tmp_path, make_params, run_stage):
    (tmp_path / "data").write_text("not a folder\n")
    out = tmp_path / "data" / "line.npz"
    with pytest.raises(WriteError, match=rf"^cannot write {re.escape(str(out))}: "):
        run_stage("prepare", make_params(), "line", "--out", out)
    assert (tmp_path / "data").read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
