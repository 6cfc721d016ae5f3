"""split@<ds>: train/val/test split (stratified for classes) and the scaler.

Reads ``data/raw/<ds>.npz`` and params ``split``, ``seed``,
``datasets.<ds>.{task, standardize, split}``; writes ``data/prepared/<ds>/``:
``{train,val,test}.npz`` (the raw rows, plus their indices) and ``scaler.json``
fitted on the train rows only. A table (source ``table``) is also encoded here:
imputation and one-hot levels are fitted on its train rows (:mod:`linflow.transform`),
the splits hold the encoded matrix, and ``transform.json`` says how to encode any
other rows the same way. The maths is :mod:`linflow.split`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--raw", help="raw npz to read (default: data/raw/<dataset>.npz)")
    p.add_argument(
        "--out",
        help="folder for {train,val,test}.npz + scaler.json (default: data/prepared/<dataset>)",
    )


def run(args, params) -> None:
    from linflow.core.artifacts import SPLITS, check_task, read_raw
    from linflow.core.errors import DataError
    from linflow.core.seeding import make_rng
    from linflow.core.storage import save_npz, write_json
    from linflow.split import fit_scaler, split_indices, table_split_error

    raw_path = Path(args.raw or f"data/raw/{args.dataset}.npz")
    out = Path(args.out or f"data/prepared/{args.dataset}")
    cfg = params.dataset(args.dataset)
    from linflow.core.chunks import raw_manifest

    if manifest := raw_manifest(raw_path):
        check_task(raw_path, manifest["task"], args.dataset, cfg.task)
        _split_stream(args.dataset, manifest, params, cfg.standardize, out)
        return
    raw = read_raw(raw_path)
    check_task(raw_path, str(raw["task"]), args.dataset, cfg.task)
    table = json.loads(str(raw["table"])) if "table" in raw else None
    s = params.split_config(args.dataset)
    try:
        idx = split_indices(
            raw["y"].shape[0],
            (s.train, s.val, s.test),
            make_rng(params.seed, f"split/{args.dataset}"),
            y=raw["y"] if cfg.task == "classification" else None,
            is_test=raw.get("is_test"),
            class_names=[str(c) for c in raw["class_names"]] if table else None,
        )
    except DataError as exc:
        if table is None:
            raise
        raise table_split_error(table["path"], table["target"], exc) from None
    keep = {k: v for k, v in raw.items() if k not in ("X", "y", "is_test", "X_cat", "table")}
    # A few test rows as a user has them (raw columns): the logged model's input example.
    example = example_rows(raw, table, idx[2][:EXAMPLE_ROWS])
    if table is None:
        X = raw["X"]
        scaler = fit_scaler(X[idx[0]], float(raw["x_scale"]), cfg.standardize)
    else:
        X, scaler, transform = _encode_table(raw, table, idx, cfg.standardize, args.dataset)
        keep["feature_names"] = np.array(transform["feature_names"])
        write_json(out / "transform.json", transform)
    for name, rows in zip(SPLITS, idx, strict=True):
        save_npz(out / f"{name}.npz", X=X[rows], y=raw["y"][rows], index=rows, **keep)
    write_json(out / "scaler.json", scaler)
    write_json(out / "example.json", example)
    log.info("split %s: train/val/test = %d/%d/%d", args.dataset, *(i.size for i in idx))


EXAMPLE_ROWS = 5


def example_rows(raw: dict, table: dict | None, rows: np.ndarray) -> dict:
    """Rows of the raw columns, pandas' 'split' layout ({columns, data}); None = empty."""
    if table is None:
        names = [str(f) for f in raw["feature_names"]]
        X = raw["X"][rows]
        data = X.tolist() if X.dtype.kind == "f" else X.astype(int).tolist()
        return {"columns": names, "data": data}
    import pandas as pd

    num = iter(range(raw["X"].shape[1]))
    cat = iter(range(raw["X_cat"].shape[1]))
    columns, values = [], []
    for col in table["inputs"]:
        columns.append(col["name"])
        if col["kind"] == "categorical":
            text = raw["X_cat"][rows, next(cat)].tolist()
            cast = {"long": int, "boolean": lambda t: t == "True"}.get(col.get("type"), str)
            values.append([cast(t) if t else None for t in text])
            continue
        v = raw["X"][rows, next(num)]
        if col["kind"] == "date":
            stamps = pd.Timestamp("1970-01-01") + pd.to_timedelta(v, unit="D")
            values.append([None if pd.isna(t) else t.isoformat() for t in stamps])
        elif col["kind"] == "bool":
            values.append([None if np.isnan(x) else bool(x) for x in v])
        else:
            values.append([None if np.isnan(x) else float(x) for x in v])
    return {"columns": columns, "data": [list(r) for r in zip(*values, strict=True)]}


def _encode_table(raw: dict, table: dict, idx, standardize: bool, dataset: str):
    """(encoded X of every row (float32), its scaler, the transform document): the encoder
    and the scaler are fitted on the train rows only. The raw columns (X, X_cat) leave
    `raw` once encoded, so the scaler's fit and the writes do not hold them too."""
    from linflow.core.artifacts import table_transform
    from linflow.split import fit_table
    from linflow.transform import encoded_names

    encoder, X, unseen, scaler = fit_table(
        raw.pop("X"),
        raw.pop("X_cat"),
        [str(f) for f in raw["feature_names"]],
        table["categorical"],
        table["missing"],
        idx[0],
        standardize,
    )
    for column, rows in unseen.items():
        log.warning(
            "split %s: %d val/test row(s) have a level of %r not seen in the train rows; "
            "encoded as its baseline level (all indicators 0)",
            dataset, rows, column,
        )  # fmt: skip
    transform = table_transform(
        table, encoder, encoded_names(encoder), [str(c) for c in raw["class_names"]], scaler
    )
    log.info(
        "split %s: %s, %d input column(s) -> %d model feature(s) (%d one-hot)",
        dataset, table["read_as"], len(table["inputs"]), X.shape[1],
        X.shape[1] - len(encoder["numeric"]),
    )  # fmt: skip
    return X, scaler, transform


def _split_stream(dataset: str, manifest: dict, params, standardize: bool, out: Path) -> None:
    """A streamed table: each row's split from a hash of (seed, position), stored as one
    byte a row (assign.npy), and the scaler fitted on the train rows in the same single
    pass (float64 moments, merged chunk by chunk). No copy of the rows is written."""
    import time

    from linflow.core.artifacts import table_transform
    from linflow.core.chunks import SPLIT_CODES, StreamTable, memory_line
    from linflow.core.errors import DataError
    from linflow.core.storage import atomic_path, write_json
    from linflow.streaming import Moments, split_codes, split_key

    t0 = time.perf_counter()
    table = StreamTable(manifest)
    s = params.split_config(dataset)
    fractions = (s.train, s.val, s.test)
    key = split_key(params.seed, dataset)
    d = len(table.features)
    k = len(manifest["class_names"])
    assign = np.empty(table.n, dtype=np.uint8)
    counts = {name: [] for name in SPLIT_CODES}
    classes = np.zeros((3, max(k, 1)), dtype=np.int64)
    moments = Moments(d)
    example: list[list] = []
    for c, (_, _, start, rows) in enumerate(table.chunks):
        codes = split_codes(start, rows, key, fractions)
        assign[start : start + rows] = codes
        for name, code in SPLIT_CODES.items():
            counts[name].append(int(np.count_nonzero(codes == code)))
        X, y = table.read(c)
        if standardize:
            moments.update(X[codes == 0])
        else:
            moments.n += int(np.count_nonzero(codes == 0))
        if k:
            for code in range(3):
                classes[code] += np.bincount(y[codes == code], minlength=k)
        if len(example) < EXAMPLE_ROWS:
            example += X[codes == 2][: EXAMPLE_ROWS - len(example)].tolist()
    rows = {name: sum(v) for name, v in counts.items()}
    for name, n_rows in rows.items():
        if fractions[SPLIT_CODES[name]] > 0 and n_rows == 0:
            raise DataError(
                f"split.{name} = {fractions[SPLIT_CODES[name]]:g} leaves an empty {name} split "
                f"for {manifest['table']['path']} ({table.n} rows); use larger fractions or more data"
            )
    if k:
        missing = [manifest["class_names"][i] for i in np.flatnonzero(classes[0] == 0)]
        if missing:
            raise DataError(
                f"{manifest['table']['path']}: target column {manifest['target']!r}: class "
                f"{missing[0]!r} has no row in the train split; remove or merge rare classes"
            )
    if standardize:
        std = moments.std()
        std[std == 0] = 1.0
        mean = moments.mean
    else:
        mean, std = np.zeros(d), np.ones(d)
    scaler = {
        "standardize": bool(standardize),
        "x_scale": 1.0,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    # The transform of the logged model: numbers in, nothing imputed (the streaming
    # mode refuses empty cells); a cell left empty at prediction time takes the mean.
    encoder = {
        "missing": "error",
        "numeric": [{"name": f, "fill": float(m)} for f, m in zip(table.features, moments.mean if standardize else np.zeros(d), strict=True)],
        "categorical": [],
    }  # fmt: skip
    transform = table_transform(
        manifest["table"], encoder, table.features, manifest["class_names"], scaler
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "assign.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, assign)
    write_json(out / "scaler.json", scaler)
    write_json(out / "transform.json", transform)
    bools = {c["name"] for c in manifest["table"]["inputs"] if c["kind"] == "bool"}
    example_cols = [[bool(v) if f in bools else float(v) for f, v in zip(table.features, r, strict=True)] for r in example]  # fmt: skip
    write_json(out / "example.json", {"columns": table.features, "data": example_cols})
    doc = {
        "manifest": manifest,
        "split": {"seed": params.seed, "key": str(key), "fractions": list(fractions), "scheme": "splitmix64(key ^ row) / 2^64"},
        "rows": rows,
        "chunk_counts": counts,
        "class_counts": {name: classes[code].tolist() for name, code in SPLIT_CODES.items()} if k else None,
    }  # fmt: skip
    write_json(out / "stream.json", doc)
    log.info(
        "split %s: streamed, train/val/test = %d/%d/%d, one pass in %.1f s; %s",
        dataset, rows["train"], rows["val"], rows["test"], time.perf_counter() - t0,
        memory_line(),
    )  # fmt: skip
