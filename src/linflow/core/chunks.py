"""Streamed tables on disk: the chunks every stage after prepare reads.

A table entry streams (``data.stream``: true, or auto and too large to read whole)
when it is a Parquet file, a folder of Parquet files, or a CSV/TSV file, which is
converted once, in blocks, into a Parquet cache under ``data/cache/stream/``. Its
rows stay in those files: ``data/raw/<ds>.npz`` holds the *manifest* (files with
their md5 and row groups, columns, classes), ``data/prepared/<ds>/`` the split as
one byte a row (``assign.npy``), the scaler fitted in one streamed pass, and
``stream.json``. A chunk is a Parquet row group: at most one is decoded at a time
per reader, so memory is bounded by the row-group size, which prepare
(:mod:`linflow.datasets.table_stream`) checks against ``data.budget_mb``.
docs/streaming.md has the whole scheme.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from linflow.core.errors import DataError

log = logging.getLogger("linflow")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_line() -> str:
    """'peak RSS X MiB' for a stage's log (Python and its libraries included: torch and
    mlflow alone take ~0.35 GiB; tests/test_streaming.py measures the data's share)."""
    return f"peak RSS {peak_rss_mib():.0f} MiB"


# --- reading chunks ------------------------------------------------------------------------


class StreamTable:
    """The rows of a manifest, a row group at a time: (X float32 (m, d), y)."""

    def __init__(self, manifest: dict) -> None:
        self.manifest = manifest
        self.features = list(manifest["features"])
        self.target = manifest["target"]
        self.task = manifest["task"]
        self.chunks: list[tuple[int, int, int, int]] = []  # (file, group, first row, rows)
        start = 0
        for fi, f in enumerate(manifest["files"]):
            for gi, rows in enumerate(f["groups"]):
                self.chunks.append((fi, gi, start, rows))
                start += rows
        self.n = start
        self._files: dict[int, object] = {}
        self._labels = None

    def _file(self, fi: int):
        import pyarrow.parquet as pq

        pf = self._files.get(fi)
        if pf is None:
            path = self.manifest["files"][fi]["path"]
            if not os.path.exists(path):
                raise DataError(
                    f"{path}: a file of this streamed table is gone (the manifest in data/raw "
                    "lists it); restore it, or re-run prepare (dvc repro -f prepare@<ds>)"
                )
            pf = self._files[fi] = pq.ParquetFile(path, memory_map=False)
        return pf

    def columns(self, c: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Chunk c's feature columns (1-D numpy, as stored) and targets (float32 for
        regression, int64 class indices into the sorted labels)."""
        import pyarrow as pa
        import pyarrow.compute as pcmp

        fi, gi, _, _ = self.chunks[c]
        table = self._file(fi).read_row_group(gi, columns=[*self.features, self.target])
        columns = [table.column(name).to_numpy(zero_copy_only=False) for name in self.features]
        col = table.column(self.target)
        if self.task == "regression":
            y = col.to_numpy().astype(np.float32)
        else:
            if self._labels is None:
                self._labels = pa.array(self.manifest["labels"], type=col.type)
            y = pcmp.index_in(col, value_set=self._labels).to_numpy().astype(np.int64)
        return columns, y

    def read(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk c's rows: features float32 (m, d) in manifest order, and targets."""
        columns, y = self.columns(c)
        # Stacked in one C loop (filling a row-major matrix a column at a time is ~30x
        # slower); int and bool columns go through float64, as the in-memory reader's.
        return np.stack(columns, axis=1).astype(np.float32, copy=False), y


class StreamSplit:
    """A prepared streamed dataset: its table, the split (one byte a row) and scaler."""

    def __init__(self, data_dir: Path) -> None:
        from linflow.core.storage import read_json

        self.dir = Path(data_dir)
        self.doc = read_json(self.dir / "stream.json")
        self.table = StreamTable(self.doc["manifest"])
        self.assign = np.load(self.dir / "assign.npy", mmap_mode="r")
        if self.assign.shape != (self.table.n,):
            raise DataError(f"{self.dir}/assign.npy: {self.assign.shape} rows, the table has {self.table.n} (run dvc repro)")  # fmt: skip
        self.scaler = read_json(self.dir / "scaler.json")
        self.counts = {
            k: np.asarray(v, dtype=np.int64) for k, v in self.doc["chunk_counts"].items()
        }

    @property
    def task(self) -> str:
        return self.doc["manifest"]["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.doc["manifest"]["class_names"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.doc["manifest"]["features"])

    def rows(self, which: str) -> int:
        return int(self.counts[which].sum())

    @property
    def budget(self) -> int:
        """data.budget_mb in bytes (the manifest keeps it: prepare's params)."""
        return int(self.doc["manifest"].get("budget_mb", 1024)) * 2**20

    def row_bytes(self) -> int:
        return 4 * len(self.feature_names) + 8

    def cache(self, which: str, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `max_rows` rows of split `which` in memory (all when they fit)."""
        Xs, ys, held = [], [], 0
        for X, y in self.iter(which):
            take = min(X.shape[0], max_rows - held)
            Xs.append(X[:take])
            ys.append(y[:take])
            held += take
            if held >= max_rows:
                break
        if not Xs:
            return np.zeros((0, len(self.feature_names)), np.float32), np.zeros(0)
        return np.concatenate(Xs), np.concatenate(ys)

    def read(self, c: int, which: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Chunk c's rows of each split in `which`, scaled as the model sees them."""
        columns, y = self.table.columns(c)
        _, _, start, rows = self.table.chunks[c]
        codes = np.asarray(self.assign[start : start + rows])
        out = {}
        for name in which:
            mask = codes == SPLIT_CODES[name]
            out[name] = (self._scaled(columns, mask), y[mask])
        return out

    def _scaled(self, columns: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        """linflow.transform.apply_scaler of the rows `mask` picks, a column at a time
        (the same float32 operations on each element, so the same bits), and then one
        transposing copy of only those rows into the (m, d) matrix the model reads."""
        scaler = self.scaler
        rows = np.flatnonzero(mask)
        A = np.empty((len(columns), rows.size), dtype=np.float32)  # (d, m)
        for j, col in enumerate(columns):
            if col.dtype == np.float32:
                np.take(col, rows, out=A[j])
            else:  # through float64, as the in-memory reader's
                A[j] = col[rows].astype(np.float64)
        A *= np.float32(scaler["x_scale"])
        if scaler["standardize"]:
            A -= np.asarray(scaler["mean"], dtype=np.float32)[:, None]
            A /= np.asarray(scaler["std"], dtype=np.float32)[:, None]
        return np.ascontiguousarray(A.T)

    def iter(self, which: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(X, y) of split `which`, chunk by chunk in file order; the next chunk is read
        on a thread while the caller works on this one."""
        chunks = [c for c in range(len(self.table.chunks)) if self.counts[which][c]]
        yield from one_ahead(lambda c: self.read(c, (which,))[which], chunks)


def rebatch(batches, rows: int) -> Iterator:
    """Arrow record batches (a reader's, of any sizes) regrouped into pyarrow Tables of
    exactly `rows` rows, the last one shorter; memory: one table and its remainder."""
    import pyarrow as pa

    pending: list = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def one_ahead(read, keys: list, pool=None) -> Iterator:
    """read(k) of each key in turn, the next one started on a thread (`pool`, or one of
    its own) while the caller works on this one: decoding Parquet releases the GIL, so
    reading and computing overlap. One result ahead at most."""
    if len(keys) < 2:
        for k in keys:
            yield read(k)
        return
    from concurrent.futures import ThreadPoolExecutor

    own = pool is None
    pool = pool or ThreadPoolExecutor(1, thread_name_prefix="linflow-read")
    try:
        ahead = pool.submit(read, keys[0])
        for i in range(len(keys)):
            result = ahead.result()
            if i + 1 < len(keys):
                ahead = pool.submit(read, keys[i + 1])
            yield result
            del result
    finally:
        if own:
            pool.shutdown()


SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def is_stream(data_dir: Path) -> bool:
    return (Path(data_dir) / "stream.json").is_file()


def train_file(data_dir: Path) -> Path:
    """The file whose md5 names a prepared dataset's train rows in MLflow tags
    (linflow.data_md5): train.npz, or a streamed table's stream.json (its files' md5s
    and the split's key)."""
    data_dir = Path(data_dir)
    return data_dir / ("stream.json" if is_stream(data_dir) else "train.npz")


def raw_manifest(path: Path) -> dict | None:
    """The manifest in data/raw/<ds>.npz, None for an in-memory dataset (or no file:
    the in-memory reader says what is wrong). Reads only that member of the npz."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["stream"])) if "stream" in z.files else None
    except (OSError, ValueError):
        return None  # not an npz: read_raw names the problem
