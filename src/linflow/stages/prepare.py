"""prepare@<ds>: build ``data/raw/<ds>.npz`` from the dataset's source.

Reads params ``datasets.<ds>.{source, data}`` and ``seed``; the source (generated, bundled with
scikit-learn, or Fashion-MNIST from a cache, Debian's package or the mirror)
is ``linflow.datasets``. Writes the raw arrays once, atomically.
"""

from __future__ import annotations

import logging

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--out", help="raw npz to write (default: data/raw/<dataset>.npz)")


def run(args, params) -> None:
    from linflow.core.artifacts import validate_arrays
    from linflow.core.storage import save_npz
    from linflow.datasets import load_source

    out = args.out or f"data/raw/{args.dataset}.npz"
    cfg = params.dataset(args.dataset)
    if cfg.source == "table":
        from linflow.datasets.table_stream import wants_stream

        if wants_stream(cfg):
            _prepare_stream(args.dataset, cfg, out)
            return
    raw = load_source(args.dataset, cfg, params.seed)
    arrays = raw.to_arrays()
    validate_arrays(arrays, f"dataset {args.dataset}")
    save_npz(out, **arrays)
    if raw.table is not None:
        log.info("prepare %s: read %s as %s", args.dataset, raw.table["path"], raw.table["read_as"])
    log.info("prepare %s: %d rows x %d features -> %s", args.dataset, *raw.X.shape, out)


def _prepare_stream(dataset: str, cfg, out: str) -> None:
    """A streamed table: its manifest (files, md5s, row groups, columns, classes) in
    place of the rows, which stay in the Parquet files (docs/streaming.md)."""
    import json
    import time

    import numpy as np

    from linflow.core.chunks import memory_line
    from linflow.core.storage import save_npz
    from linflow.datasets.table_stream import prepare_manifest

    t0 = time.perf_counter()
    manifest = prepare_manifest(cfg, dataset)
    save_npz(
        out,
        task=np.array(cfg.task),
        feature_names=np.array(manifest["features"]),
        class_names=np.array(manifest["class_names"], dtype=str),
        x_scale=np.array(1.0),
        stream=np.array(json.dumps(manifest, sort_keys=True)),
    )
    log.info(
        "prepare %s: streamed table %s: %d rows x %d features in %d file(s), %d row groups, "
        "checked in %.1f s; %s -> %s",
        dataset, cfg.path, manifest["rows"], len(manifest["features"]), len(manifest["files"]),
        sum(len(f["groups"]) for f in manifest["files"]), time.perf_counter() - t0,
        memory_line(), out,
    )  # fmt: skip
