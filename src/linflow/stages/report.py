"""report: ``reports/summary.md`` over all datasets, and the numeric platform.

Reads each dataset's row, ``reports/summary/<ds>.json`` (compare's document: our
test metrics beside the reference's, and every checked gap), for every dataset
params.yaml lists, in its order (validate writes that list to
``reports/summary/datasets.txt``, the folder DVC runs this stage on; a removed
dataset's row, left on disk, is not shown); writes the summary as two markdown tables
and, with ``--platform``, ``reports/platform.json``: the CPU kernels, library
versions and thread counts these results were made with (verify/platform.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("linflow")

_HEAD = [
    "# linflow summary",
    "",
    "Test-split metrics per dataset, ours against the reference fitted on the same "
    "train split (written by `linflow report`; do not edit).",
    "",
    "| dataset | task | model | params | n_test | reference | metric | ours | reference | delta |",
    "| --- | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
]
_GAPS_HEAD = [
    "",
    "## Gaps to the reference",
    "",
    "Checked against params.yaml `compare:`. A FAIL fails `make verify` and CI; a "
    "`dvc exp run` completes and shows it here (`n/a` = reported only).",
    "",
    "| dataset | gap | value | bound | tolerance | result |",
    "| --- | --- | ---: | --- | ---: | --- |",
]
_KEYS = {"regression": ("rmse", "r2", "mae"), "classification": ("accuracy", "cross_entropy")}
_MODELS = {"regression": "LinearRegression", "classification": "SoftmaxRegression"}


def add_arguments(p) -> None:
    p.add_argument(
        "datasets", nargs="*", help="datasets to summarise, in table order (default: params.yaml's)"
    )
    p.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    p.add_argument("--out", help="summary markdown (default: <reports>/summary.md)")
    p.add_argument("--platform", help="where to record the numeric platform (json)")


def _fmt_value(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"


def _metric_rows(name: str, c) -> list[str]:
    from linflow.core.artifacts import REFERENCE_NAMES

    ref = REFERENCE_NAMES.get(c.reference, c.reference)
    rows = []
    for i, key in enumerate(_KEYS[c.task]):
        head = (
            f"| {name} | {c.task} | {_MODELS[c.task]} | {c.n_params} | {c.n_test} | {ref} |"
            if i == 0
            else "| | | | | | |"
        )
        ours, theirs = c.ours[key], c.result["test"]["reference"][key]
        delta = c.result["test"]["delta"][key]
        shown = f"{delta:+.4f}" if abs(delta) >= 5e-5 or delta == 0 else f"{delta:+.1e}"
        rows.append(f"{head} {key} | {ours:.4f} | {theirs:.4f} | {shown} |")
    return rows


def _gap_rows(name: str, c) -> list[str]:
    rows = []
    for j, (gap, check) in enumerate(c.checks.items()):
        result = {True: "pass", False: "FAIL", None: "reported"}[check["passed"]]
        bound = "<=" if check["bound"] == "max" else ">="
        rows.append(
            f"| {name if j == 0 else ''} | {gap} | {_fmt_value(check['value'])} | {bound} "
            f"| {_fmt_value(check['tolerance'])} | {result} |"
        )
    return rows


def run(args, params) -> None:
    from linflow.core.artifacts import CompareDoc
    from linflow.core.storage import read_json, write_json, write_text

    reports = Path(args.reports)
    out = args.out or str(reports / "summary.md")
    lines, gaps = list(_HEAD), list(_GAPS_HEAD)
    names = args.datasets or list(params.datasets)
    for name in names:
        path = reports / "summary" / f"{name}.json"
        c = CompareDoc.from_json(read_json(path), str(path))
        lines += _metric_rows(name, c)
        gaps += _gap_rows(name, c)
    write_text(out, "\n".join(lines + gaps) + "\n")
    log.info("report: %d datasets -> %s", len(names), out)
    if args.platform:
        from linflow.verify.platform import describe, fingerprint

        fp = fingerprint({"train": params.train.threads, "reference": params.reference.threads})
        write_json(args.platform, fp)
        log.info("report: numeric platform %s -> %s", describe(fp), args.platform)
