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
