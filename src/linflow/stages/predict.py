"""predict: score new rows with a trained model (not a DVC stage).

``linflow predict DATASET --input FILE --output FILE [--model URI]`` reads a CSV /
TSV / Parquet file of the raw columns a user has (or an npz with ``X``), checks
it against the model's inputs (a missing column, an unknown extra one, a value
of the wrong type: one line naming it; ``--keep-extra`` copies extra columns to
the output instead), applies the stored transform and writes the predictions
atomically: ``predicted`` (and for classification ``p_<class>`` per class).
The model is the workspace's ``models/<dataset>/`` by default, or any
``models:/...`` / ``runs:/...`` MLflow URI. Rows are read and scored
:data:`~linflow.scoring.CHUNK_ROWS` at a time (bounded memory), by the code the
logged MLflow model runs (:mod:`linflow.scoring`) and with evaluate's block size,
so the test rows give ``reports/<ds>/predictions.csv``'s numbers exactly.
"""

from __future__ import annotations

import contextlib
import csv
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")

MODEL_FILES = ("model.safetensors", "model.json", "transform.json")
# A CSV up to this size is read whole (multithreaded); a larger one streams in blocks.
WHOLE_CSV_BYTES = 128 << 20


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--input", required=True, help="rows to score: .csv, .tsv, .parquet or .npz")
    p.add_argument("--output", required=True, help="predictions to write: .csv or .parquet")
    p.add_argument(
        "--model",
        help="models:/linflow-<ds>@champion, runs:/<run id>/pyfunc, or a folder "
        "(default: models/<dataset>)",
    )
    p.add_argument(
        "--keep-extra",
        action="store_true",
        help="copy input columns that are not model inputs to the output (default: refuse them)",
    )


def _model_dir(args, tmp: Path) -> tuple[Path, str]:
    """(a folder with the model's three files, what to call the model)."""
    from linflow.core.errors import DataError

    uri = args.model
    if uri is None:
        return Path(f"models/{args.dataset}"), f"models/{args.dataset}"
    if ":/" not in uri:
        return Path(uri), uri
    from linflow.core import tracking

    local = tracking.download_model(uri, tmp)
    found = {f: next(iter(local.rglob(f)), None) for f in MODEL_FILES}
    missing = [f for f, p in found.items() if p is None]
    if missing:
        raise DataError(f"{uri}: not a linflow model (no {missing[0]} among its artifacts)")
    for f, p in found.items():
        if p.parent != tmp / "model":
            (tmp / "model").mkdir(exist_ok=True)
            p.replace(tmp / "model" / f)
    return tmp / "model", uri


def load_model(model_dir: Path, where: str):
    """(W, b, transform, task) of a model folder, checked to belong together."""
    from linflow import scoring
    from linflow.core.artifacts import ModelCard
    from linflow.core.errors import DataError
    from linflow.core.storage import load_weights, read_json

    card = ModelCard.from_json(read_json(model_dir / "model.json"), str(model_dir / "model.json"))
    tensors, _ = load_weights(model_dir / card.weights["file"])
    transform = read_json(model_dir / "transform.json")
    W, b = tensors.get("weight"), tensors.get("bias")
    if W is None or b is None:
        raise DataError(f"{where}: the weights file has no 'weight' and 'bias'")
    try:
        scoring.check_model(W, b, transform, card.task)
    except scoring.ScoringError as exc:
        raise DataError(f"{where}: {exc}") from None
    return W, b, transform, card.task


def _chunks(path: Path, transform: dict):
    """pandas DataFrames of CHUNK_ROWS rows (the last one shorter), in file order."""
    import pyarrow as pa

    from linflow.core.errors import DataError
    from linflow.scoring import CHUNK_ROWS

    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if suffix == ".npz":
        yield from _npz_chunks(path, transform)
        return
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS)
        elif suffix in (".csv", ".tsv", ".txt"):
            batches = _csv_batches(path, transform)
        else:
            raise DataError(f"{path}: cannot read {suffix!r} files; give .csv, .tsv, .parquet or .npz")  # fmt: skip
        from linflow.core.chunks import rebatch

        for table in rebatch(batches, CHUNK_ROWS):
            yield table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{path}: cannot read it ({str(exc).splitlines()[0]})") from None


def _csv_batches(path: Path, transform: dict):
    import pyarrow as pa
    import pyarrow.csv as pc

    from linflow.datasets.table import _sample_lines, sniff_decimal, sniff_delimiter

    lines = _sample_lines(path)
    if not lines:
        return iter(())
    delimiter = "\t" if path.suffix.lower() == ".tsv" else sniff_delimiter(path, lines)
    text = {c["name"] for c in transform["inputs"] if c.get("type") == "string"}
    types = {name: pa.string() for name in text}
    options = dict(
        read_options=pc.ReadOptions(block_size=1 << 22),
        parse_options=pc.ParseOptions(delimiter=delimiter),
        convert_options=pc.ConvertOptions(
            decimal_point=sniff_decimal(lines, delimiter),
            column_types=types,
            strings_can_be_null=True,
        ),
    )
    if path.stat().st_size <= WHOLE_CSV_BYTES:
        # Small enough to hold: pyarrow's multithreaded reader, ~2x the streaming one's
        # speed on 2 cores (Fashion-MNIST's 10,000 test rows: 47 MB).
        return pc.read_csv(path, **options).to_batches()
    return pc.open_csv(path, **options)  # one block at a time: bounded memory


def _npz_chunks(path: Path, transform: dict):
    import pandas as pd

    from linflow.core.errors import DataError
    from linflow.core.storage import load_npz
    from linflow.scoring import CHUNK_ROWS

    X = load_npz(path, required=("X",))["X"]
    names = [c["name"] for c in transform["inputs"]]
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DataError(f"{path}: X has shape {X.shape}; the model takes {len(names)} columns")
    for start in range(0, X.shape[0], CHUNK_ROWS):
        yield pd.DataFrame(X[start : start + CHUNK_ROWS], columns=names)


def _csv_cells(cols: dict, task: str) -> list[tuple[str, ...]]:
    """Rows as predictions.csv writes them: numbers by repr, probabilities to 6 digits.
    (Formatted from Python floats: numpy scalars format ~2x slower.)"""
    out = []
    for name, v in cols.items():
        if name.startswith("p_") and task == "classification":
            out.append([f"{q:.6g}" for q in np.asarray(v, dtype=np.float64).tolist()])
        elif v.dtype.kind == "f":
            out.append([repr(q) for q in np.asarray(v, dtype=np.float64).tolist()])
        else:
            out.append([str(q) for q in v])
    return list(zip(*out, strict=True))


def run(args, params) -> None:
    import tempfile

    from linflow import scoring
    from linflow.core.errors import DataError
    from linflow.core.storage import atomic_path

    params.dataset(args.dataset)  # an unknown dataset is a one-line ConfigError
    inp, out = Path(args.input), Path(args.output)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(f"{out}: write .csv or .parquet predictions")
    with tempfile.TemporaryDirectory(prefix="linflow-predict-") as tmp:
        model_dir, where = _model_dir(args, Path(tmp))
        W, b, transform, task = load_model(model_dir, where)
    n = 0
    with atomic_path(out) as tmp_out, contextlib.ExitStack() as stack:
        sink = _Sink(tmp_out, task, stack, as_csv=out.suffix.lower() == ".csv")
        for df in _chunks(inp, transform):
            try:
                extra = scoring.check_frame(df, transform, args.keep_extra)
                X = scoring.model_inputs(df, transform, offset=n)
            except scoring.ScoringError as exc:
                raise DataError(f"{inp}: {exc}") from None
            cols = {c: df[c].to_numpy() for c in extra}
            sink.write(cols | scoring.predict_matrix(X, W, b, task, transform["class_names"]))
            n += len(df)
        if n == 0:
            raise DataError(f"{inp}: no rows to score")
    log.info("predict %s: scored %d rows of %s with %s -> %s", args.dataset, n, inp, where, out)


class _Sink:
    """Chunks of predictions into one CSV (predictions.csv's formatting) or Parquet file."""

    def __init__(self, path: Path, task: str, stack: contextlib.ExitStack, as_csv: bool) -> None:
        self.path, self.task, self.stack, self.csv = path, task, stack, as_csv
        self.writer = None

    def write(self, cols: dict) -> None:
        if self.csv:
            if self.writer is None:
                fh = self.stack.enter_context(open(self.path, "w", newline=""))  # noqa: SIM115
                self.writer = csv.writer(fh, lineterminator="\n")
                self.writer.writerow(list(cols))
            self.writer.writerows(_csv_cells(cols, self.task))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: pa.array(np.asarray(v)) for k, v in cols.items()})
        if self.writer is None:
            self.writer = self.stack.enter_context(pq.ParquetWriter(self.path, table.schema))
        self.writer.write_table(table)
