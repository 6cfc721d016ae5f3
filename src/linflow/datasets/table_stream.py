"""Prepare of a streamed table: check it a row group at a time and describe it.

The ``table`` source in streaming mode (``data.stream``; docs/streaming.md): a
Parquet file, a folder of Parquet files, or a CSV/TSV converted once, in blocks,
to Parquet under ``data/cache/stream/``. :func:`prepare_manifest` checks every row
group (numeric columns, no empty, NaN or infinite cell, the class labels) holding
one at a time, and returns the manifest prepare writes in ``data/raw/<ds>.npz`` in
place of the rows; :class:`linflow.core.chunks.StreamTable` reads them back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from linflow.core.errors import DataError

log = logging.getLogger("linflow")

STREAM_DIR = Path("data/cache/stream")  # CSV converted to Parquet, keyed by content
CSV_GROUP_ROWS = 1 << 17  # rows per row group of a converted CSV
MAX_CLASSES = 1000
# Bytes a decoded row group takes per cell while a stage reads it: pyarrow's column
# (8), the float32 matrix (4), its scaled copy (4), a split's selection (4), slack.
CELL_BYTES = 24


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.suffix in (".parquet", ".pq") and p.is_file()
        )
        if not files:
            raise DataError(f"{path}: folder holds no .parquet files; a streamed table is Parquet")
        return files
    return [path]


def wants_stream(cfg) -> bool:
    """Whether a table entry streams: data.stream true, or auto and the in-memory
    reader would refuse it (a folder, or more than data.max_memory_mb needs)."""
    from linflow.datasets.table import _format, check_memory

    mode = cfg.data.stream
    path = Path(cfg.path)
    if mode is not True and mode is not False:  # auto
        if path.is_dir():
            return True
        if not path.is_file():
            return False  # the in-memory reader names the problem
        try:
            check_memory(path, _format(path, cfg.data.format), cfg.data.max_memory_mb)
        except DataError:
            return True
        return False
    return bool(mode)


def _csv_to_parquet(path: Path, cfg) -> Path:
    """A CSV/TSV as a Parquet file of CSV_GROUP_ROWS-row groups, converted once in blocks
    (pyarrow's streaming reader) and kept under data/cache/stream/ by content."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    from linflow.core.chunks import rebatch
    from linflow.core.storage import atomic_path, file_md5
    from linflow.datasets.table import (
        _csv_error,
        _header,
        _sample_lines,
        sniff_decimal,
        sniff_delimiter,
    )

    lines = _sample_lines(path)
    if not lines:
        raise DataError(f"{path}: the file holds only blank lines; it needs a header and rows")
    fmt = (
        cfg.data.format
        if cfg.data.format != "auto"
        else ("tsv" if path.suffix == ".tsv" else "csv")
    )
    delimiter = "\t" if fmt == "tsv" else cfg.data.delimiter
    if delimiter == "auto":
        delimiter = sniff_delimiter(path, lines)
    decimal = sniff_decimal(lines, delimiter) if cfg.data.decimal == "auto" else cfg.data.decimal
    names = _header(path, lines, delimiter)
    key = file_md5(path)[:16] + f"-{ord(delimiter):02x}{ord(decimal):02x}"
    out = STREAM_DIR / f"{path.stem}-{key}.parquet"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        reader = pc.open_csv(
            path,
            read_options=pc.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            parse_options=pc.ParseOptions(delimiter=delimiter),
            convert_options=pc.ConvertOptions(decimal_point=decimal, strings_can_be_null=True),
        )
        with atomic_path(out) as tmp:
            writer = None
            for table in rebatch(reader, CSV_GROUP_ROWS):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table, row_group_size=CSV_GROUP_ROWS)
            if writer is None:
                raise DataError(f"{path}: has a header but no rows")
            writer.close()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _csv_error(path, names, exc) from None
    log.info("prepare: converted %s to Parquet once, in blocks: %s", path, out)
    return out


def _check_schema(path: Path, schema, used: list[str], target: str, task: str) -> list[dict]:
    import pyarrow as pa

    names = list(schema.names)
    from linflow.datasets.table import _closest

    inputs = []
    for name in [*used, target]:
        if name not in names:
            what = "target column" if name == target else "column"
            raise DataError(f"{path}: {what} {name!r} is not in the file; {_closest(name, names)}")
        t = schema.field(name).type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        if name == target:
            if task == "regression" and (not numeric or pa.types.is_boolean(t)):
                raise DataError(
                    f"{path}: target column {name!r} is {t}, not numbers: a regression target "
                    "must be numeric; set task: classification if these are labels"
                )
            if not numeric and not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise DataError(
                    f"{path}: target column {name!r} is {t}: labels must be numbers or text"
                )
            continue
        if not numeric:
            raise DataError(
                f"{path}: column {name!r} is {t}: the streaming mode reads numeric and bool "
                "columns only; add it to data.drop, or set data.stream: false (in-memory "
                "mode: one-hot levels, dates, imputation) if the table fits in memory"
            )
        inputs.append({"name": name, "kind": "bool" if pa.types.is_boolean(t) else "numeric"})
    return inputs


def _check_chunk(path: Path, table, start: int, used: list[str], target: str, task: str) -> None:
    """No empty, NaN or infinite cell in a row group (one line naming the first)."""
    import pyarrow as pa

    for name in [*used, target]:
        col = table.column(name)
        bad = None
        if col.null_count:
            bad = ("empty", int(np.argmax(col.is_null().to_numpy(zero_copy_only=False))))
        elif pa.types.is_floating(col.type):
            values = col.to_numpy()
            finite = np.isfinite(values)
            if not finite.all():
                i = int(np.argmax(~finite))
                bad = (repr(float(values[i])), i)
        if bad is not None:
            what, i = bad
            fix = (
                "remove those rows (they cannot be trained on)"
                if name == target
                else "fill or drop the cells (the streaming mode does not impute), or drop the column"
            )
            raise DataError(
                f"{path}: column {name!r} has an {what} cell at row {start + i + 1} of the "
                f"file; {fix}" if what == "empty" else
                f"{path}: column {name!r} has the value {what} at row {start + i + 1} of the "
                f"file; {fix}"
            )  # fmt: skip


def prepare_manifest(cfg, dataset: str) -> dict:
    """Check a streamed table chunk by chunk and describe it (data/raw/<ds>.npz's
    ``stream``): files (md5, rows per row group), columns, classes. Memory: one row
    group at a time."""
    import pyarrow.parquet as pq

    from linflow.core.storage import file_md5
    from linflow.datasets.table import _format

    data = cfg.data
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data path is relative to the repository root)")
    if data.categorical or data.dates:
        key = "categorical" if data.categorical else "dates"
        raise DataError(
            f"params.yaml: datasets.{dataset}.data.{key} = {getattr(data, key)}: the streaming "
            "mode reads numeric and bool columns only; drop those columns, or set "
            f"datasets.{dataset}.data.stream: false if the table fits in memory"
        )
    if data.missing != "error":
        raise DataError(
            f"params.yaml: datasets.{dataset}.data.missing = {data.missing!r}: the streaming "
            "mode does not impute (a median needs every row at once); use 'error' and fill "
            "the cells, or data.stream: false"
        )
    if path.is_file() and _format(path, data.format) in ("csv", "tsv"):
        files = [_csv_to_parquet(path, cfg)]
    elif path.is_file() and _format(path, data.format) != "parquet":
        raise DataError(
            f"{path}: the streaming mode reads Parquet (a file or a folder of them) and CSV; "
            f"convert it, or set datasets.{dataset}.data.stream: false"
        )
    else:
        files = _parquet_files(path)
    budget = data.budget_mb * 2**20
    described, inputs, used, labels = [], None, None, set()
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{f}: not a readable Parquet file ({first})") from None
        schema = pf.schema_arrow
        names = [str(n) for n in schema.names]
        if used is None:
            used = (
                list(data.features)
                if data.features is not None
                else [n for n in names if n != data.target and n not in set(data.drop)]
            )
            if not used:
                raise DataError(f"{f}: no feature columns left besides the target {data.target!r}")
            inputs = _check_schema(f, schema, used, data.target, cfg.task)
        else:
            _check_schema(f, schema, used, data.target, cfg.task)
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        biggest = max(groups, default=0)
        need = biggest * (len(used) + 1) * CELL_BYTES
        if need > budget / 2:
            raise DataError(
                f"{f}: a row group of {biggest:,} rows needs ~{need / 2**20:,.0f} MiB to read, "
                f"more than half of data.budget_mb = {data.budget_mb}; rewrite the file with "
                f"smaller row groups (pyarrow: row_group_size <= "
                f"{int(budget / 2 / ((len(used) + 1) * CELL_BYTES)):,}) or raise data.budget_mb"
            )
        start = 0
        for i, rows in enumerate(groups):
            table = pf.read_row_group(i, columns=[*used, data.target])
            _check_chunk(f, table, start, used, data.target, cfg.task)
            if cfg.task == "classification":
                labels.update(table.column(data.target).unique().to_pylist())
                if len(labels) > MAX_CLASSES:
                    raise DataError(
                        f"{f}: target column {data.target!r} has more than {MAX_CLASSES} "
                        "distinct values: not class labels; set task: regression"
                    )
            start += rows
        described.append({"path": str(f), "md5": file_md5(f), "rows": start, "groups": groups})
    n = sum(d["rows"] for d in described)
    if n == 0:
        raise DataError(f"{path}: has a header but no rows")
    manifest = {
        "budget_mb": data.budget_mb,  # sizes the shuffle buffer: a change re-runs the chain
        "files": described,
        "rows": n,
        "features": used,
        "target": data.target,
        "task": cfg.task,
        "labels": [],
        "class_names": [],
        "table": {
            "path": str(cfg.path),
            "read_as": "Parquet, streamed"
            if files[0] == path or path.is_dir()
            else "CSV, streamed via Parquet",
            "target": data.target,
            "missing": data.missing,
            "inputs": inputs,
            "categorical": [],
        },
    }
    if cfg.task == "classification":
        values = sorted(labels, key=lambda v: (isinstance(v, str), v))
        if len(values) < 2:
            raise DataError(
                f"{path}: target column {data.target!r} has one class only ({values[0]!r}); "
                "classification needs at least two"
            )
        manifest["labels"] = values
        manifest["class_names"] = [
            ("true" if v else "false") if isinstance(v, bool) else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            for v in values
        ]  # fmt: skip
    return manifest
