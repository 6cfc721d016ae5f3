"""split@<ds>: train/val/test split (stratified for classes) and the scaler.

Reads ``data/raw/<ds>.npz`` and params ``split``, ``seed``,
``datasets.<ds>.{task, standardize, split}``; writes ``data/prepared/<ds>/``:
``{train,val,test}.npz`` (the raw rows, plus their indices) and ``scaler.json``
fitted on the train rows only. The maths is :mod:`linflow.split`.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    from linflow.core.seeding import make_rng
    from linflow.core.storage import save_npz, write_json
    from linflow.split import fit_scaler, split_indices

    raw_path = Path(args.raw or f"data/raw/{args.dataset}.npz")
    out = Path(args.out or f"data/prepared/{args.dataset}")
    cfg = params.dataset(args.dataset)
    raw = read_raw(raw_path)
    check_task(raw_path, str(raw["task"]), args.dataset, cfg.task)
    s = params.split_config(args.dataset)
    idx = split_indices(
        raw["y"].shape[0],
        (s.train, s.val, s.test),
        make_rng(params.seed, f"split/{args.dataset}"),
        y=raw["y"] if cfg.task == "classification" else None,
        is_test=raw.get("is_test"),
    )
    scaler = fit_scaler(raw["X"][idx[0]], float(raw["x_scale"]), cfg.standardize)
    keep = {k: v for k, v in raw.items() if k not in ("X", "y", "is_test")}
    for name, rows in zip(SPLITS, idx, strict=True):
        save_npz(out / f"{name}.npz", X=raw["X"][rows], y=raw["y"][rows], index=rows, **keep)
    write_json(out / "scaler.json", scaler)
    log.info("split %s: train/val/test = %d/%d/%d", args.dataset, *(i.size for i in idx))
