"""A user's own table (CSV, TSV, Parquet, JSON Lines) as a dataset: the ``table`` source.

Reads the file once with pyarrow (multithreaded; the bytes it yields do not depend
on the thread count), checks every column it will use, and turns the table into
the raw arrays of ``data/raw/<ds>.npz``: numeric columns as float64 (empty cells
NaN when ``data.missing`` is ``impute``), categorical columns as text, the target
as float32 (regression) or class indices into the sorted labels (classification).
Nothing here is fitted from data: imputation values, one-hot levels and the scaler
are fitted by split on the train rows (:mod:`linflow.transform`).

Every problem with the file is one :class:`DataError` line naming the file, the
column, the first offending line (or row) and what would fix it. :func:`inspect`
is what ``linflow add-dataset`` reads to infer an entry.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linflow.core.errors import DataError
from linflow.datasets import RawData

__all__ = ["read_table", "load", "inspect", "frame_columns", "TableRead"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "csv"}
DELIMITERS = (",", ";", "\t", "|")
# Integer targets with at most this many distinct values are class labels (task inference).
MAX_INT_CLASSES = 20
# pandas + pyarrow hold a CSV as roughly this many times its size while reading it.
CSV_MEMORY_FACTOR = 4.0
SAMPLE_BYTES = 1 << 16


@dataclass
class TableRead:
    """A table as read: its columns (pandas) and how it was read."""

    path: Path
    format: str
    frame: Any  # pandas.DataFrame
    delimiter: str | None = None
    decimal: str | None = None

    def where(self, row: int) -> str:
        """A 0-based data row as the user finds it: a line of a text file, a Parquet row."""
        if self.format in ("csv", "tsv"):
            return f"line {row + 2}"  # the header is line 1
        if self.format == "jsonl":
            return f"line {row + 1}"
        return f"row {row + 1}"

    def describe(self) -> str:
        if self.format in ("csv", "tsv"):
            return f"{self.format.upper()}, delimiter {self.delimiter!r}, decimal {self.decimal!r}"
        return {"parquet": "Parquet", "jsonl": "JSON Lines"}[self.format]


# --- reading --------------------------------------------------------------------------


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; set data.format "
            "to one of csv, tsv, parquet, jsonl"
        )
    return found


def _sample_lines(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut in half by the sample's end
            raise DataError(
                f"{path}: is not UTF-8 text (byte {exc.start}); save it as UTF-8 (or as Parquet)"
            ) from None
        text = head[: exc.start].decode("utf-8-sig")
    lines = text.splitlines()
    if len(head) == SAMPLE_BYTES and lines:
        lines = lines[:-1]  # the last line of the sample may be cut
    return [line for line in lines if line.strip()]


def sniff_delimiter(path: Path, lines: list[str]) -> str:
    """The delimiter that splits every sampled line into the same number (> 1) of fields."""
    best, best_n = None, 1
    for d in DELIMITERS:
        counts = {len(row) for row in csv.reader(io.StringIO("\n".join(lines[:50])), delimiter=d)}
        if len(counts) == 1 and (n := counts.pop()) > best_n:
            best, best_n = d, n
    if best is None:
        if len(lines) and all("," not in ln and ";" not in ln and "\t" not in ln for ln in lines):
            return ","  # one column: nothing to split
        raise DataError(
            f"{path}: no delimiter among , ; tab | splits every line into the same number of "
            "fields: check for ragged lines (or set data.delimiter)"
        )
    return best


_COMMA_NUMBER = re.compile(r"^[+-]?\d+,\d+$")
_DOT_NUMBER = re.compile(r"^[+-]?\d*\.\d+(?:[eE][+-]?\d+)?$")


def sniff_decimal(lines: list[str], delimiter: str) -> str:
    """',' when the delimiter is not ',' and numbers are written like 1,5 (and none like 1.5)."""
    if delimiter == ",":
        return "."
    fields = [f.strip() for row in csv.reader(io.StringIO("\n".join(lines[1:200])), delimiter=delimiter) for f in row]  # fmt: skip
    comma = sum(bool(_COMMA_NUMBER.match(f)) for f in fields)
    dot = sum(bool(_DOT_NUMBER.match(f)) for f in fields)
    return "," if comma > 0 and dot == 0 else "."


def check_memory(path: Path, fmt: str, max_memory_mb: int | None) -> None:
    """Refuse, before reading, a file that would not fit in the memory this mode may use."""
    size = path.stat().st_size
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            size = sum(
                meta.row_group(i).column(j).total_uncompressed_size
                for i in range(meta.num_row_groups)
                for j in range(meta.num_columns)
            )
            need = 3.0 * size
        except Exception:  # unreadable: read_table says why
            return
    else:
        need = CSV_MEMORY_FACTOR * size
    if max_memory_mb is None:
        budget = _available_bytes() / 2
        what = "half of the memory available now"
    else:
        budget = max_memory_mb * 2**20
        what = f"data.max_memory_mb = {max_memory_mb}"
    if need > budget:
        raise DataError(
            f"{path}: reading it in memory needs ~{need / 2**20:,.0f} MiB, more than {what} "
            f"({budget / 2**20:,.0f} MiB); this (in-memory) mode cannot hold it: set "
            "data.stream: auto or true (Parquet or CSV, read a row group at a time: "
            "docs/streaming.md), or raise data.max_memory_mb if this machine has the memory"
        )


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


_ARROW_ROW = re.compile(r"Row #(\d+)")
_ARROW_COL = re.compile(r"column #(\d+)")


def _csv_error(path: Path, names: list[str], exc: Exception) -> DataError:
    """pyarrow's CSV errors ('In CSV column #3: Row #57: CSV conversion error to int64:
    invalid value 'x'') as one line in our words."""
    msg = str(exc).splitlines()[0]
    col = _ARROW_COL.search(msg)
    row = _ARROW_ROW.search(msg)
    where = ""
    if col and int(col.group(1)) < len(names):
        where += f" column {names[int(col.group(1))]!r}"
    if row:
        where += f" (line {int(row.group(1))})"
    if "conversion error" in msg:
        value = msg.split("invalid value", 1)[-1].strip(" :'")
        return DataError(
            f"{path}:{where}: {value!r} is not a number while the rows before it are; fix the "
            "cell, or declare the column in data.categorical (text) or data.drop"
        )
    if "Expected" in msg and "columns" in msg:
        return DataError(f"{path}:{where}: {msg.split(': ', 1)[-1]}; every line needs one field per column")  # fmt: skip
    return DataError(f"{path}:{where}: cannot parse: {msg}")


def _header(path: Path, lines: list[str], delimiter: str) -> list[str]:
    return next(csv.reader(io.StringIO(lines[0]), delimiter=delimiter))


def read_table(
    path: str | Path,
    fmt: str = "auto",
    delimiter: str = "auto",
    decimal: str = "auto",
    max_memory_mb: int | None = None,
) -> TableRead:
    """Read a whole table (pandas DataFrame) with its columns' types as pyarrow infers them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data path is relative to the repository root)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give the table's file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read it (permission denied)")
    fmt = _format(path, fmt)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header line and rows")
    check_memory(path, fmt, max_memory_mb)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, fmt, delimiter, decimal)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.json as pj

            table = pj.read_json(path)
    except Exception as exc:
        kind = {"parquet": "Parquet", "jsonl": "JSON Lines"}[fmt]
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable {kind} file ({first})") from None
    _check_names(path, list(table.column_names))
    read = TableRead(path, fmt, _to_pandas(table))
    _check_rows(read)
    return read


def _read_csv(path: Path, fmt: str, delimiter: str, decimal: str) -> TableRead:
    import pyarrow as pa
    import pyarrow.csv as pc

    lines = _sample_lines(path)
    if not lines:
        raise DataError(f"{path}: the file holds only blank lines; it needs a header and rows")
    if fmt == "tsv":
        delimiter = "\t"
    elif delimiter == "auto":
        delimiter = sniff_delimiter(path, lines)
    if decimal == "auto":
        decimal = sniff_decimal(lines, delimiter)
    if decimal == delimiter:
        raise DataError(f"{path}: decimal mark and delimiter are both {delimiter!r}")
    names = _header(path, lines, delimiter)
    _check_names(path, names)
    try:
        table = pc.read_csv(
            path,
            read_options=pc.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            parse_options=pc.ParseOptions(delimiter=delimiter),
            convert_options=pc.ConvertOptions(
                decimal_point=decimal, strings_can_be_null=True, quoted_strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _csv_error(path, names, exc) from None
    read = TableRead(path, fmt, _to_pandas(table), delimiter, decimal)
    _check_rows(read)
    return read


def _to_pandas(table):
    import pyarrow as pa

    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    # pyarrow's allocator keeps the reader's freed scratch (~1.5x a CSV's size) for
    # itself, where numpy cannot reuse it: hand it back to the system.
    pa.default_memory_pool().release_unused()
    return frame


def _check_names(path: Path, names: list[str]) -> None:
    blank = [i for i, n in enumerate(names) if not str(n).strip()]
    if blank:
        raise DataError(f"{path}: column {blank[0] + 1} has no name in the header; name it")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(
                f"{path}: column name {n!r} appears more than once in the header; rename one"
            )
        seen.add(n)


def _check_rows(read: TableRead) -> None:
    if len(read.frame) == 0:
        raise DataError(
            f"{read.path}: has a header ({len(read.frame.columns)} columns) but no rows"
        )


# --- columns ----------------------------------------------------------------------------


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    lower = [n for n in names if n.lower() == name.lower() and n not in close]
    close = lower + close
    if close:
        return "closest: " + ", ".join(map(repr, close))
    return "columns: " + ", ".join(map(repr, names[:12])) + (" ..." if len(names) > 12 else "")


def _require_columns(read: TableRead, key: str, wanted: list[str]) -> None:
    names = [str(c) for c in read.frame.columns]
    for name in wanted:
        if name not in names:
            what = "target column" if key == "target" else f"column of data.{key}"
            raise DataError(
                f"{read.path}: {what} {name!r} is not in the file; {_closest(name, names)}"
            )


def _kind(series) -> str:
    """numeric, integer, bool, date, text or empty: a column's type as read."""
    import pandas as pd

    if series.isna().all():
        return "empty"
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]  # NaN (empty) is not finite
        return "integer" if finite.size and np.all(finite == np.round(finite)) else "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "date"
    if pd.api.types.is_object_dtype(dtype):
        kinds = {type(v) for v in series.dropna().head(1000)}
        if kinds <= {bool}:
            return "bool"
        if kinds and all(k.__name__ in ("date", "datetime", "Timestamp") for k in kinds):
            return "date"
    return "text"


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _numbers(read: TableRead, name: str, kind: str | None = None) -> np.ndarray:
    """A numeric (or bool) column as float64, NaN for empty cells; inf is an error.
    `kind`: the column's _kind when the caller has it."""
    series = read.frame[name]
    kind = kind or _kind(series)
    if kind == "bool":
        values = (
            series.astype("float64").to_numpy()
            if series.dtype == bool
            else np.array([np.nan if v is None else float(v) for v in series], dtype=np.float64)
        )
    elif kind in ("numeric", "integer", "empty"):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif kind == "date":
        raise DataError(
            f"{read.path}: column {name!r} holds dates; add it to data.dates (days since "
            "1970-01-01) or to data.drop"
        )
    else:
        bad = _first_text(series)
        raise DataError(
            f"{read.path}: column {name!r} is text ({series.iloc[bad]!r} at {read.where(bad)}) "
            "but not declared categorical; add it to data.categorical, or to data.drop, or fix "
            "the cell if the column is meant to be numbers"
        )
    inf = np.isinf(values)
    if inf.any():
        i = _first(inf)
        raise DataError(
            f"{read.path}: column {name!r} has an infinite value ({values[i]}) at "
            f"{read.where(i)}; replace it with a finite number or leave the cell empty"
        )
    return values


def _first_text(series) -> int:
    for i, v in enumerate(series):
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            try:
                float(v)
            except (TypeError, ValueError):
                return i
    return 0


def _dates(read: TableRead, name: str) -> np.ndarray:
    from linflow.transform import to_days

    series = read.frame[name]
    try:
        return to_days(series)
    except ValueError as exc:
        bad = int(exc.args[0])
        raise DataError(
            f"{read.path}: column {name!r} of data.dates has {series.iloc[bad]!r} at "
            f"{read.where(bad)}, not a date; fix the cell or drop the column"
        ) from None


def _levels(read: TableRead, name: str) -> np.ndarray:
    """A categorical column as text ('' for an empty cell); ints stay '3', not '3.0'."""
    from linflow.transform import category_codes, category_text

    series = read.frame[name]
    missing = series.isna().to_numpy()
    if series.dtype == object:
        codes, texts = category_codes(series.to_numpy(dtype=object), missing)
    else:  # one type (text, numbers, bools): pandas groups equal cells, each spelled once
        import pandas as pd

        codes, uniques = pd.factorize(series)  # code -1: an empty cell, as isna says
        cells = np.array(uniques.tolist(), dtype=object)
        texts = category_text(cells, np.zeros(cells.size, dtype=bool))
    present = int(missing.size - np.count_nonzero(missing))
    if present >= 10 and np.unique(texts).size == present:  # texts: one per distinct cell
        raise DataError(
            f"{read.path}: column {name!r} of data.categorical has a distinct value in every "
            f"row ({present} levels), like an ID: one-hot encoding it memorises rows; move "
            "it to data.drop"
        )
    return np.append(texts, "")[codes] if codes.size else np.zeros(0, dtype="<U1")


def feature_columns(read: TableRead, cfg) -> list[str]:
    names = [str(c) for c in read.frame.columns]
    if cfg.features is not None:
        return list(cfg.features)
    return [n for n in names if n != cfg.target and n not in set(cfg.drop)]


def frame_columns(read: TableRead, cfg) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[dict]]:  # fmt: skip
    """(numeric names, (n, d) float64 with NaN, categorical names, (n, c) text with '' for
    empty, the inputs: every used raw column with its kind) -- in the file's column order."""
    _require_columns(read, "target", [cfg.target])
    for key in ("features", "drop", "categorical", "dates"):
        _require_columns(read, key, list(getattr(cfg, key) or []))
    used = feature_columns(read, cfg)
    for key in ("categorical", "dates"):
        unused = [c for c in getattr(cfg, key) if c not in used]
        if unused:
            raise DataError(
                f"{read.path}: column {unused[0]!r} of data.{key} is not among the features "
                "(data.features); add it there or remove it from data." + key
            )
    if not used:
        raise DataError(f"{read.path}: no feature columns left besides the target {cfg.target!r}")
    n = len(read.frame)
    # Filled a column at a time: one float64 matrix, not a list of columns and a copy.
    X = np.empty((n, sum(name not in cfg.categorical for name in used)), dtype=np.float64)
    num_names, cat_names, cat_cols, inputs = [], [], [], []
    for name in used:
        if name in cfg.categorical:
            cat_names.append(name)
            cat_cols.append(_levels(read, name))
            # The levels' type as the file has it: the signature of the logged model.
            dtype = {"integer": "long", "bool": "boolean"}.get(_kind(read.frame[name]), "string")
            inputs.append({"name": name, "kind": "categorical", "type": dtype})
        elif name in cfg.dates:
            X[:, len(num_names)] = _dates(read, name)
            num_names.append(name)
            inputs.append({"name": name, "kind": "date"})
        else:
            kind = _kind(read.frame[name])
            X[:, len(num_names)] = _numbers(read, name, kind)
            num_names.append(name)
            inputs.append({"name": name, "kind": "bool" if kind == "bool" else "numeric"})
    X_cat = np.column_stack(cat_cols) if cat_cols else np.zeros((n, 0), dtype="<U1")
    return num_names, X, cat_names, X_cat, inputs


def _check_missing(read: TableRead, cfg, num_names, X, cat_names, X_cat) -> None:
    counts = []
    empty = np.isnan(X)  # (n, d): one pass over the matrix, not one per column
    for j in np.flatnonzero(empty.any(axis=0)):
        miss = empty[:, j]
        counts.append((num_names[j], int(miss.sum()), _first(miss)))
    for j, name in enumerate(cat_names):
        miss = X_cat[:, j] == ""
        if miss.any():
            counts.append((name, int(miss.sum()), _first(miss)))
    for name, k, _ in counts:
        if k == X.shape[0]:
            raise DataError(f"{read.path}: column {name!r} is empty in every row; drop it")
    if counts and cfg.missing == "error":
        total = sum(k for _, k, _ in counts)
        listed = ", ".join(f"{name!r} {k} (first at {read.where(i)})" for name, k, i in counts)
        raise DataError(
            f"{read.path}: {total} empty cell(s) in the features: {listed}; set "
            "data.missing: impute (numbers get the train split's median, categories a "
            "level of their own), or fill or drop them"
        )


def _target(read: TableRead, cfg, task: str) -> tuple[np.ndarray, list[str]]:
    series = read.frame[cfg.target]
    missing = series.isna().to_numpy()
    if missing.any():
        i = _first(missing)
        raise DataError(
            f"{read.path}: target column {cfg.target!r} is empty in {int(missing.sum())} row(s), "
            f"first at {read.where(i)}; remove those rows (they cannot be trained on)"
        )
    kind = _kind(series)
    if task == "regression":
        if kind not in ("numeric", "integer"):
            i = _first_text(series) if kind == "text" else 0
            raise DataError(
                f"{read.path}: target column {cfg.target!r} is {kind} ({series.iloc[i]!r} at "
                f"{read.where(i)}), not numbers: a regression target must be numeric; set "
                "task: classification if these are labels"
            )
        y = series.to_numpy(dtype=np.float64)
        if np.isinf(y).any():
            i = _first(np.isinf(y))
            raise DataError(
                f"{read.path}: target column {cfg.target!r} has an infinite value at "
                f"{read.where(i)}; replace or remove that row"
            )
        return y.astype(np.float32), []
    labels, names = _labels(series, kind)
    if len(names) < 2:
        raise DataError(
            f"{read.path}: target column {cfg.target!r} has one class only ({names[0]!r}); "
            "classification needs at least two"
        )
    return labels, names


def _labels(series, kind: str) -> tuple[np.ndarray, list[str]]:
    """Class indices into the sorted labels (numbers sort as numbers), and their names."""
    if kind in ("integer", "numeric", "bool"):
        values = series.to_numpy()
        uniq, inv = np.unique(values, return_inverse=True)
        names = [str(int(u)) if kind == "integer" else str(u) for u in uniq]
        if kind == "bool":
            names = ["false", "true"][: len(uniq)] if uniq.dtype == bool else names
        return inv.astype(np.int64), names
    text = series.astype(str).to_numpy()
    uniq, inv = np.unique(text, return_inverse=True)
    return inv.astype(np.int64), [str(u) for u in uniq]


def load(cfg, rng=None, read: TableRead | None = None) -> RawData:
    """The ``table`` source: the whole dataset entry (path, task, data) -> RawData.

    `read`: the table already read (add-dataset reads a file once)."""
    data = cfg.data
    if read is None:
        read = read_table(cfg.path, data.format, data.delimiter, data.decimal, data.max_memory_mb)
    num_names, X, cat_names, X_cat, inputs = frame_columns(read, data)
    _check_missing(read, data, num_names, X, cat_names, X_cat)
    y, class_names = _target(read, data, cfg.task)
    table = {
        "path": str(cfg.path),
        "read_as": read.describe(),
        "target": data.target,
        "missing": data.missing,
        "inputs": inputs,
        "categorical": cat_names,
    }
    return RawData(
        task=cfg.task,
        X=X,
        y=y,
        feature_names=num_names,
        class_names=class_names,
        categorical=X_cat,
        table=table,
    )


# --- add-dataset: what a table looks like ------------------------------------------------


@dataclass
class ColumnInfo:
    name: str
    kind: str  # numeric, integer, bool, date, text, empty
    missing: int
    levels: int  # distinct non-empty values
    role: str = "numeric"  # numeric, categorical, date, drop, target
    why: str = ""  # why it was dropped or made categorical


@dataclass
class TableInfo:
    read: TableRead
    rows: int
    columns: list[ColumnInfo]
    task: str
    task_why: str
    classes: dict[str, int] = field(default_factory=dict)


def inspect(path: str | Path, target: str, task: str | None, drop: list[str]) -> TableInfo:
    """Read a table once and infer an entry: each column's role, the task, the classes."""
    read = read_table(path)
    names = [str(c) for c in read.frame.columns]
    if target not in names:
        raise DataError(f"{read.path}: target column {target!r} is not in the file; {_closest(target, names)}")  # fmt: skip
    for d in drop:
        if d not in names:
            raise DataError(f"{read.path}: column {d!r} of --drop is not in the file; {_closest(d, names)}")  # fmt: skip
    n = len(read.frame)
    cols = []
    for name in names:
        s = read.frame[name]
        kind = _kind(s)
        nonnull = s.dropna()
        levels = int(nonnull.astype(str).nunique()) if len(nonnull) else 0
        info = ColumnInfo(name, kind, int(s.isna().sum()), levels)
        if name == target:
            info.role = "target"
        elif name in drop:
            info.role, info.why = "drop", "--drop"
        elif kind == "empty":
            info.role, info.why = "drop", "empty in every row"
        elif kind == "date":
            info.role = "date"
        elif kind == "text":
            if _looks_like_dates(nonnull):
                info.role = "date"
            elif levels == len(nonnull) and len(nonnull) >= 10:
                info.role, info.why = "drop", "a distinct value per row, like an ID"
            else:
                info.role = "categorical"
        elif kind == "integer" and levels == n and n >= 10 and _id_name(name):
            info.role, info.why = "drop", "a distinct integer per row named like an ID"
        cols.append(info)
    tgt = next(c for c in cols if c.role == "target")
    inferred, why = _infer_task(tgt, n)
    task = task or inferred
    if task != inferred:
        why = "set by --task"
    classes: dict[str, int] = {}
    if task == "classification":
        labels, class_names = _labels(read.frame[target].dropna(), tgt.kind)
        counts = np.bincount(labels, minlength=len(class_names))
        classes = dict(zip(class_names, counts.tolist(), strict=True))
    return TableInfo(read, n, cols, task, why, classes)


def _id_name(name: str) -> bool:
    low = name.lower()
    return low == "id" or low.endswith("_id") or low.endswith("id") and len(low) <= 6


def _looks_like_dates(values) -> bool:
    import pandas as pd

    sample = values.head(200).astype(str)
    if not sample.str.contains(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", regex=True).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().all())


def _infer_task(col: ColumnInfo, n: int) -> tuple[str, str]:
    if col.kind in ("text", "bool", "date"):
        return "classification", f"the target is {col.kind}"
    if col.kind == "integer" and col.levels <= MAX_INT_CLASSES and col.levels < max(n // 5, 3):
        return "classification", f"the target holds {col.levels} distinct integers"
    return "regression", f"the target holds {col.levels} distinct numbers"
