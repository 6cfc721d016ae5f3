"""validate: check all of params.yaml before any other stage runs.

Every stage reads params.yaml through one strict schema, but DVC runs only the
stages whose own params changed: a misspelled section (``refrence:``) changed
none of them and would be ignored silently, and a bad value
(``dvc exp run -S train.classification.lr=abc``) failed only in train, after
DVC had deleted train's outputs. This stage depends on the whole file and every
other stage runs after it (each ``prepare`` depends on its marker), so either
mistake fails ``dvc repro`` / ``dvc exp run`` at once, one line, before any
output is touched.

Writes ``reports/params.valid``: a marker whose bytes never change, so a valid
edit re-runs only the stages whose params it touched; and
``reports/summary/datasets.txt``, the dataset names in order (the report's rows),
which changes only when an entry is added, removed or moved.

A dataset removed from params.yaml: DVC drops its stages from the pipeline but
keeps their entries in ``dvc.lock`` for good, where ``linflow verify`` would
report them as a stale lock. This stage removes the ``<stage>@<dataset>``
entries of datasets params.yaml no longer lists (DVC re-reads dvc.lock before
it records this stage, so the removal stays). Their files on disk are left for
the user to delete (``git rm -r reports/<ds>``): nothing is lost by a typo.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("linflow")

MARKER = (
    "params.yaml passed `linflow validate`: every section and key known, every value allowed.\n"
)


# The per-dataset stages of dvc.yaml (its `foreach` over datasets).
PER_DATASET = ("prepare", "split", "train", "evaluate", "reference", "compare")


def add_arguments(p) -> None:
    p.add_argument(
        "--out", default="reports/params.valid", help="marker to write (default: %(default)s)"
    )
    p.add_argument(
        "--names",
        default="reports/summary/datasets.txt",
        help="the dataset names, one a line (default: %(default)s)",
    )
    p.add_argument(
        "--lock", default="dvc.lock", help="lock file to prune of removed datasets (%(default)s)"
    )


def prune_lock(text: str, datasets) -> tuple[str, list[str]]:
    """dvc.lock's text without the entries of per-dataset stages of other datasets
    (every other byte kept), and the names of the entries removed."""
    lines = text.splitlines(keepends=True)
    out, removed, skipping = [], [], False
    for line in lines:
        m = re.match(r"  ([\w-]+)@([\w-]+):\s*$", line)
        if m:
            skipping = m.group(1) in PER_DATASET and m.group(2) not in datasets
            if skipping:
                removed.append(f"{m.group(1)}@{m.group(2)}")
        elif re.match(r"\S|  \S", line):  # the next key at the top or stage level
            skipping = False
        if not skipping:
            out.append(line)
    return "".join(out), removed


def run(args, params) -> None:
    # cli.main has parsed and validated the whole file (load_params) to call us.
    from linflow.core.storage import write_text

    write_text(args.out, MARKER)
    write_text(args.names, "".join(f"{name}\n" for name in params.datasets))
    log.info("validate: %s: %d datasets, all keys valid", args.params, len(params.datasets))
    lock = Path(args.lock)
    if lock.is_file():
        text, removed = prune_lock(lock.read_text(), set(params.datasets))
        if removed:
            write_text(lock, text)
            gone = sorted({r.split("@")[1] for r in removed})
            log.info(
                "validate: removed %d dvc.lock entries of %s (no longer in %s); their files "
                "are left on disk: git rm -r reports/<dataset> to drop them",
                len(removed), ", ".join(gone), args.params,
            )  # fmt: skip
    # The first stage of a repro after any params change: the runs a killed stage
    # (kill -9) left RUNNING are closed here, even when DVC restores that stage from
    # its run cache and runs no linflow command that would open the store.
    from linflow.core import tracking

    ended = tracking.close_dead_runs()
    if ended:
        log.info("validate: %d MLflow run(s) of killed processes marked KILLED", len(ended))
