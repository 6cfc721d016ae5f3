"""A streamed table's prepare: what it accepts (Parquet, a folder, CSV converted once)
and the one-line error for each hostile table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linflow.core.errors import DataError


def _cfg(path, task="regression", **data):
    from linflow.core.config import parse_params

    raw = {
        "datasets": {
            "t": {
                "source": "table", "path": str(path), "task": task,
                "data": {"target": "y", "stream": True, **data},
            }
        }
    }  # fmt: skip
    return parse_params(raw).dataset("t")


def _write(path, n=1_000, group=300, **cols):
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=n).astype(np.float32), "b": rng.integers(0, 5, n), **cols}
    data.setdefault("y", rng.normal(size=n))
    pq.write_table(pa.table(data), path, row_group_size=group)
    return path


def _manifest(cfg):
    from linflow.datasets.table_stream import prepare_manifest

    return prepare_manifest(cfg, "t")


def test_a_parquet_file_a_folder_and_a_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = _manifest(_cfg(_write(tmp_path / "t.parquet")))
    assert m["rows"] == 1_000 and [f["groups"] for f in m["files"]] == [[300, 300, 300, 100]]
    assert m["features"] == ["a", "b"] and len(m["files"][0]["md5"]) == 32
    (tmp_path / "parts").mkdir()
    for i in range(3):
        _write(tmp_path / "parts" / f"p{i}.parquet", n=200)
    m = _manifest(_cfg(tmp_path / "parts"))
    assert m["rows"] == 600 and len(m["files"]) == 3
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,y\n" + "".join(f"{i * 0.5},{i % 3},{i}\n" for i in range(500)))
    m = _manifest(_cfg(csv))
    converted = m["files"][0]["path"]
    assert converted.startswith("data/cache/stream/t-") and m["rows"] == 500
    assert _manifest(_cfg(csv))["files"] == m["files"]  # converted once, then reused


def test_classes_are_the_sorted_labels(tmp_path):
    path = _write(tmp_path / "c.parquet", y=np.array(["b", "a", "c", "a"] * 250))
    m = _manifest(_cfg(path, "classification"))
    assert m["labels"] == ["a", "b", "c"] and m["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("make", "data", "message"),
    [
        (
            lambda p: _write(p, s=np.array(["x"] * 1_000)),
            {},
            "column 's' is string: the streaming mode reads numeric",
        ),  # fmt: skip
        (
            lambda p: _write(p, a=np.r_[np.ones(500), np.nan, np.ones(499)]),
            {},
            "column 'a' has the value nan at row 501",
        ),  # fmt: skip
        (
            lambda p: _write(p, a=pa.array([1.0] * 700 + [None] + [1.0] * 299)),
            {},
            "column 'a' has an empty cell at row 701",
        ),  # fmt: skip
        (
            lambda p: _write(p, y=np.r_[np.ones(999), np.inf]),
            {},
            "column 'y' has the value inf at row 1000",
        ),  # fmt: skip
        (
            lambda p: _write(p),
            {"categorical": ["b"]},
            "data.categorical = ['b']: the streaming mode reads numeric",
        ),  # fmt: skip
        (
            lambda p: _write(p),
            {"missing": "impute"},
            "data.missing = 'impute': the streaming mode does not impute",
        ),  # fmt: skip
        (lambda p: _write(p, group=1_000), {"budget_mb": 1, "features": ["a"]}, None),
        (lambda p: _write(p), {"features": ["a", "zz"]}, "column 'zz' is not in the file"),
    ],
)
def test_hostile_tables_get_one_line(tmp_path, make, data, message):
    path = make(tmp_path / "t.parquet")
    if message is None:  # a small row group under a tiny budget is fine
        assert _manifest(_cfg(path, **data))["rows"] == 1_000
        return
    with pytest.raises(DataError) as err:
        _manifest(_cfg(path, **data))
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_a_row_group_larger_than_the_budget_allows(tmp_path):
    rng = np.random.default_rng(0)
    cols = {f"f{j}": rng.normal(size=20_000) for j in range(20)} | {"y": rng.normal(size=20_000)}
    pq.write_table(pa.table(cols), tmp_path / "w.parquet", row_group_size=20_000)
    with pytest.raises(DataError, match=r"a row group of 20,000 rows needs ~10 MiB .* more than half of data.budget_mb = 1; rewrite the file with smaller row groups"):  # fmt: skip
        _manifest(_cfg(tmp_path / "w.parquet", budget_mb=1))


def test_auto_streams_what_memory_mode_would_refuse(tmp_path):
    from linflow.datasets.table_stream import wants_stream

    path = _write(tmp_path / "t.parquet", n=50_000)
    assert not wants_stream(_cfg(path, stream="auto"))  # fits: read in memory
    assert wants_stream(_cfg(path, stream="auto", max_memory_mb=1))  # ~2 MiB needed
    assert not wants_stream(_cfg(path, stream=False, max_memory_mb=1))  # refused later
    assert wants_stream(_cfg(tmp_path, stream="auto"))  # a folder
