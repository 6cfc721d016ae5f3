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
    raw = load_source(args.dataset, cfg, params.seed)
    arrays = raw.to_arrays()
    validate_arrays(arrays, f"dataset {args.dataset}")
    save_npz(out, **arrays)
    if raw.table is not None:
        log.info("prepare %s: read %s as %s", args.dataset, raw.table["path"], raw.table["read_as"])
    log.info("prepare %s: %d rows x %d features -> %s", args.dataset, *raw.X.shape, out)
