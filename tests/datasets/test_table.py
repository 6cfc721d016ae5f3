"""The table source: reading a user's file, inferring an entry, and refusing bad tables.

Tables are made here from scikit-learn's wine and breast-cancer sets with real
messiness (tables.py). Every bad table of issue 22 gets its one-line error,
through the prepare stage (whose earlier output stays as it was) and through
``linflow add-dataset`` (params.yaml stays as it was, no .dvc file appears).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tables import cancer_frame, table_entry, wine_frame, write

from linflow.core.config import parse_params
from linflow.core.errors import ConfigError, DataError
from linflow.datasets import table


def _params(base: dict, entries: dict, **top):
    raw = copy.deepcopy(base)
    raw["datasets"] = entries
    raw.update(top)
    return parse_params(raw)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _run(name: str, params, *argv):
    from linflow import stages

    parser = argparse.ArgumentParser()
    stages.load(name).add_arguments(parser)
    return stages.load(name).run(parser.parse_args([str(a) for a in argv]), params)


# --- reading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wine")
    df = wine_frame()
    return {
        "csv": write(df, root / "wine.csv"),
        "semicolon": write(df, root / "wine_eu.csv", sep=";", decimal=","),
        "tsv": write(df, root / "wine.tsv"),
        "parquet": write(df, root / "wine.parquet"),
        "jsonl": write(df, root / "wine.jsonl"),
    }


def test_every_format_gives_the_same_raw_arrays(wine_files, base_params):
    arrays = {}
    for kind, path in wine_files.items():
        entry = table_entry(
            path, "cultivar", "classification", categorical=["cellar"], dates=["harvest"],
            missing="impute",
        )  # fmt: skip
        cfg = _params(base_params, {"wine": entry}).dataset("wine")
        raw = table.load(cfg)
        arrays[kind] = raw
    ref = arrays["csv"]
    assert ref.X.shape == (178, 14)  # 13 measurements + harvest (days)
    assert ref.categorical.shape == (178, 1)
    assert ref.class_names == ["barbera", "barolo", "grignolino"]  # sorted labels
    assert int(np.isnan(ref.X).sum()) == 3 and (ref.categorical == "").sum() == 1
    assert ref.feature_names[-1] == "harvest" and ref.X[0, -1] == 18262.0  # 2020-01-01
    for kind, raw in arrays.items():
        np.testing.assert_array_equal(raw.X, ref.X, err_msg=kind)
        np.testing.assert_array_equal(raw.y, ref.y, err_msg=kind)
        np.testing.assert_array_equal(raw.categorical, ref.categorical, err_msg=kind)
        assert raw.class_names == ref.class_names, kind


def test_semicolon_decimal_comma_is_detected_and_said(wine_files):
    read = table.read_table(wine_files["semicolon"])
    assert (read.delimiter, read.decimal) == (";", ",")
    assert read.describe() == "CSV, delimiter ';', decimal ','"
    assert read.frame["alcohol"].dtype == np.float64
    assert table.read_table(wine_files["csv"]).describe() == "CSV, delimiter ',', decimal '.'"


def test_inspect_infers_roles_task_and_classes(wine_files):
    info = table.inspect(wine_files["csv"], "cultivar", None, [])
    roles = {c.name: c.role for c in info.columns}
    assert roles["cellar"] == "categorical" and roles["harvest"] == "date"
    assert roles["alcohol"] == "numeric" and roles["cultivar"] == "target"
    assert info.task == "classification" and info.classes == {
        "barbera": 48, "barolo": 59, "grignolino": 71,
    }  # fmt: skip
    missing = {c.name: c.missing for c in info.columns if c.missing}
    assert missing == {"alcohol": 3, "cellar": 1}


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (np.arange(200) % 3, "classification"),  # a few integer labels
        (np.arange(200) % 2 == 0, "classification"),  # bool
        (np.linspace(0, 1, 200), "regression"),
        (np.arange(200), "regression"),  # many distinct integers: a count, not labels
    ],
)
def test_task_is_inferred_from_the_target(tmp_path, values, task):
    df = pd.DataFrame({"x": np.linspace(-1, 1, 200), "y": values})
    info = table.inspect(write(df, tmp_path / "t.parquet"), "y", None, [])
    assert info.task == task


def test_ids_are_dropped_by_inspect(tmp_path):
    df = pd.DataFrame(
        {"customer": [f"c{i:03d}" for i in range(50)], "row_id": range(50), "x": range(50),
         "y": [0.5 * i for i in range(50)]}
    )  # fmt: skip
    info = table.inspect(write(df, tmp_path / "t.csv"), "y", None, [])
    roles = {c.name: (c.role, c.why) for c in info.columns}
    assert roles["customer"][0] == "drop" and "ID" in roles["customer"][1]
    assert roles["row_id"][0] == "drop" and roles["x"][0] == "numeric"


# --- the transform -------------------------------------------------------------------------


def test_transform_is_fitted_on_train_rows_and_handles_unseen_levels():
    from linflow.transform import encode, encoded_names, fit_encoder

    X_num = np.array([[1.0], [np.nan], [3.0], [100.0]])
    X_cat = np.array([["a"], ["b"], ["a"], [""]])
    enc = fit_encoder(X_num[:3], X_cat[:3], ["x"], ["c"], "impute")  # train: first 3 rows
    assert enc["numeric"] == [{"name": "x", "fill": 2.0}]  # median of 1 and 3, not of 100
    assert enc["categorical"] == [{"name": "c", "baseline": "a", "levels": ["b"]}]
    assert encoded_names(enc) == ["x", "c=b"]
    X, unseen = encode(enc, X_num, X_cat)
    np.testing.assert_array_equal(X, [[1, 0], [2, 1], [3, 0], [100, 0]])
    assert unseen == {"c": 1}  # row 4's (missing) level was never seen in train: baseline
    new, unseen = encode(enc, np.array([[0.0]]), np.array([["zebra"]]))
    np.testing.assert_array_equal(new, [[0, 0]]) and unseen == {"c": 1}


# --- bad tables: one line each, nothing lost ------------------------------------------------

_CASES = {
    # name: (make the file, entry keys, the pattern the error must match)
    "missing file": (None, {}, r"nope\.csv: file not found"),
    "unreadable parquet": ("corrupt", {}, r"bad\.parquet: not a readable Parquet file"),
    "empty file": ("empty", {}, r"bad\.csv: the file is empty"),
    "header only": ("header", {}, r"bad\.csv: has a header \(3 columns\) but no rows"),
    "target absent": (
        "ok",
        {"target": "Target"},
        r"bad\.csv: target column 'Target' is not in the file; closest: 'target'",
    ),
    "duplicated names": ("dup", {}, r"bad\.csv: column name 'a' appears more than once"),
    "undeclared text": (
        "text",
        {},
        r"bad\.csv: column 'color' is text \('red' at line 2\) but not declared categorical; "
        r"add it to data.categorical",
    ),
    "missing cells": (
        "holes",
        {},
        r"bad\.csv: 3 empty cell\(s\) in the features: 'a' 2 \(first at line 3\), 'b' 1 "
        r"\(first at line 5\); set data.missing: impute",
    ),
    "inf": ("inf", {}, r"bad\.csv: column 'a' has an infinite value \(inf\) at line 4"),
    "text target for regression": (
        "text_target",
        {"task": "regression"},
        r"bad\.csv: target column 'target' is text \('low' at line 2\), not numbers",
    ),
    "one class": (
        "one_class",
        {"task": "classification"},
        r"bad\.csv: target column 'target' has one class only \('yes'\)",
    ),
    "id as categorical": (
        "ids",
        {"categorical": ["name"]},
        r"bad\.csv: column 'name' of data.categorical has a distinct value in every row "
        r"\(40 levels\), like an ID.*data.drop",
    ),
    "too large": (  # in memory (stream: auto would stream it: tests/datasets/test_table_stream.py)
        "ok",
        {"max_memory_mb": 1, "pad": True, "stream": False},
        r"bad\.csv: reading it in memory needs ~\d+ MiB, more than data.max_memory_mb = 1 "
        r"\(1 MiB\).*data.stream: auto or true",
    ),
}


def _bad_file(kind: str | None, root: Path, pad: bool = False) -> Path:
    rng = np.random.default_rng(0)
    n = 40
    base = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    base["target"] = base["a"] * 2 + 1
    path = root / ("bad.parquet" if kind == "corrupt" else "bad.csv")
    if kind is None:
        return root / "nope.csv"
    if kind == "corrupt":
        path.write_bytes(b"PAR1 this is not parquet")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header":
        path.write_text("a,b,target\n")
    elif kind == "ok":
        if pad:  # ~2 MB of rows
            base = pd.concat([base] * 800, ignore_index=True)
        write(base, path)
    elif kind == "dup":
        path.write_text("a,b,a,target\n1,2,3,4\n5,6,7,8\n")
    elif kind == "text":
        base["color"] = ["red", "blue"] * (n // 2)
        write(base, path)
    elif kind == "holes":
        base.loc[[1, 5], "a"] = np.nan
        base.loc[[3], "b"] = np.nan
        write(base, path)
    elif kind == "inf":
        base.loc[2, "a"] = np.inf
        write(base, path)
    elif kind == "text_target":
        base["target"] = ["low", "high"] * (n // 2)
        write(base, path)
    elif kind == "one_class":
        base["target"] = "yes"
        write(base, path)
    elif kind == "ids":
        base["name"] = [f"p{i}" for i in range(n)]
        write(base, path)
    return path


@pytest.mark.parametrize("case", list(_CASES))
def test_a_bad_table_fails_prepare_in_one_line_and_keeps_earlier_output(
    case, tmp_path, base_params
):
    kind, keys, pattern = _CASES[case]
    keys = dict(keys)
    pad = keys.pop("pad", False)
    task = keys.pop("task", "regression")
    path = _bad_file(kind, tmp_path, pad)
    before = _md5(path) if path.exists() else None
    entry = table_entry(path, keys.pop("target", "target"), task, **keys)
    params = _params(base_params, {"mine": entry})
    out = tmp_path / "raw" / "mine.npz"
    out.parent.mkdir()
    out.write_bytes(b"the earlier output")
    with pytest.raises(DataError, match=pattern) as exc:
        _run("prepare", params, "mine", "--out", out)
    assert "\n" not in str(exc.value)
    assert out.read_bytes() == b"the earlier output"
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine.npz"]  # no temp file left
    assert (_md5(path) if path.exists() else None) == before  # the table is untouched


@pytest.mark.parametrize(
    "case", ["empty file", "target absent", "undeclared text", "one class", "duplicated names"]
)
def test_add_dataset_refuses_a_bad_table_and_writes_nothing(case, tmp_path, base_params, monkeypatch):  # fmt: skip
    kind, keys, pattern = _CASES[case]
    path = _bad_file(kind, tmp_path)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(base_params))
    before = params_path.read_bytes()
    monkeypatch.chdir(tmp_path)
    argv = ["mine", path.name, "--target", keys.get("target", "target")]
    if kind == "text":  # add-dataset declares text features categorical itself: a text target
        argv = ["mine", path.name, "--target", "color", "--task", "regression"]
        pattern = r"bad\.csv: target column 'color' is text \('red' at line 2\), not numbers"
    if kind == "one_class":
        argv += ["--task", "classification"]
    with pytest.raises(DataError, match=pattern):
        _add(params_path, *argv)  # with dvc: nothing may be added either
    assert params_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "params.yaml"])


def _add_args(*argv):
    from linflow import stages

    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    stages.load("add-dataset").add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def _add(params_path: Path, *argv):
    from linflow import stages
    from linflow.core.config import load_params

    return stages.load("add-dataset").run(_add_args(*argv, "--params", params_path), load_params(params_path))  # fmt: skip


def test_add_dataset_refuses_a_taken_or_invalid_name(tmp_path, base_params, monkeypatch):
    params_path = tmp_path / "params.yaml"
    params_path.write_text((Path(__file__).parents[2] / "params.yaml").read_text())
    before = params_path.read_bytes()
    write(wine_frame(), tmp_path / "wine.csv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"already has a dataset 'digits'; choose another name"):
        _add(params_path, "digits", "wine.csv", "--target", "cultivar", "--no-dvc")
    with pytest.raises(ConfigError, match=r"NAME must be letters, digits and '_'.*got '2wine'"):
        _add(params_path, "2wine", "wine.csv", "--target", "cultivar", "--no-dvc")
    assert params_path.read_bytes() == before


def test_add_dataset_writes_one_commented_entry_and_keeps_every_other_byte(
    tmp_path, monkeypatch, capsys
):
    committed = (Path(__file__).parents[2] / "params.yaml").read_text()
    params_path = tmp_path / "params.yaml"
    params_path.write_text(committed)
    write(wine_frame(), tmp_path / "tables" / "wine.csv", sep=";", decimal=",")
    monkeypatch.chdir(tmp_path)
    _add(params_path, "wine", "tables/wine.csv", "--target", "cultivar", "--no-dvc")
    text = params_path.read_text()
    lines = text.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("  wine:")))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    added = lines[start:end]
    # One contiguous block; every other byte is the committed file's.
    assert "\n".join(lines[:start] + lines[end:]) + "\n" == committed
    assert added[0].startswith("  wine:  # added by linflow add-dataset from tables/wine.csv (CSV, delimiter ';', decimal ',')")  # fmt: skip
    assert re.search(r"# 178 rows; task classification \(the target is text\); 3 classes: barbera 48, barolo 59, grignolino 71", text)  # fmt: skip
    assert "categorical: [cellar]  # one-hot; levels: cellar 3" in text
    assert "missing: impute  # empty cells: alcohol 3, cellar 1" in text
    from linflow.core.config import load_params

    params = load_params(params_path)
    assert list(params.datasets)[-1] == "wine"
    cfg = params.dataset("wine")
    assert (cfg.data.delimiter, cfg.data.decimal, cfg.data.dates) == (";", ",", ["harvest"])
    assert "next: dvc repro" in capsys.readouterr().out


def test_more_features_than_train_rows_is_refused_by_the_reference(
    tmp_path, base_params, monkeypatch
):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(30, 40)), columns=[f"f{i}" for i in range(40)])
    df["y"] = rng.normal(size=30)
    path = write(df, tmp_path / "wide.parquet")
    params = _params(base_params, {"wide": table_entry(path, "y", "regression")})
    monkeypatch.chdir(tmp_path)
    _run("prepare", params, "wide")
    _run("split", params, "wide")
    with pytest.raises(DataError, match=r"40 features .* only 22 train rows: least squares is underdetermined.*minimum-norm.*weight_decay > 0"):  # fmt: skip
        _run("reference", params, "wide")
    assert not (tmp_path / "reports" / "wide" / "reference.json").exists()


def test_a_class_too_small_to_stratify_names_file_column_and_class(tmp_path, base_params, monkeypatch):  # fmt: skip
    df = cancer_frame()
    df.loc[:2, "diagnosis"] = "rare"  # 3 rows: too few for train, val and test at 0.7/0.15/0.15
    path = write(df, tmp_path / "cancer.csv")
    entry = table_entry(path, "diagnosis", "classification", categorical=["clinic"], missing="impute")  # fmt: skip
    params = _params(base_params, {"cancer": entry})
    monkeypatch.chdir(tmp_path)
    _run("prepare", params, "cancer")
    with pytest.raises(DataError, match=r"cancer\.csv: target column 'diagnosis': split\.\w+ = .* for class 'rare' \(3 rows"):  # fmt: skip
        _run("split", params, "cancer")
    assert not (tmp_path / "data" / "prepared" / "cancer").exists()
