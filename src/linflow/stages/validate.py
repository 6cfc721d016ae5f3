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
edit re-runs only the stages whose params it touched.
"""

from __future__ import annotations

import logging

log = logging.getLogger("linflow")

MARKER = (
    "params.yaml passed `linflow validate`: every section and key known, every value allowed.\n"
)


def add_arguments(p) -> None:
    p.add_argument(
        "--out", default="reports/params.valid", help="marker to write (default: %(default)s)"
    )


def run(args, params) -> None:
    # cli.main has parsed and validated the whole file (load_params) to call us.
    from linflow.core.storage import write_text

    write_text(args.out, MARKER)
    log.info("validate: %s: %d datasets, all keys valid", args.params, len(params.datasets))
