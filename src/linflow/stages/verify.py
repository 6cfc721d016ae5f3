"""verify: re-run the pipeline (``dvc repro -f``) and judge it against the committed results.

Not a DVC stage: people and CI run it. :mod:`linflow.verify.rerun` runs DVC and
collects the results; :mod:`linflow.verify.check` judges them with the tolerance
model of :mod:`linflow.verify.tolerance` (params.yaml ``verify``). Exit 1 with a
table of what differs.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.description = (
        "Force a re-run of the pipeline, check a second dvc repro runs nothing, and compare "
        "every output with the committed dvc.lock and files: data bit-identical, every metric "
        "within the tolerance of its kind (params.yaml verify.tolerance), lock current. "
        "Exit 1 with a table of what differs."
    )
    p.add_argument(
        "targets",
        nargs="*",
        help="stages to re-run with their upstream stages (default: the whole pipeline)",
    )
    p.add_argument("--json", help="also write the report as JSON to this file")


def run(args, params) -> int:
    from linflow.verify.rerun import run_verify

    threads = {"train": params.train.threads, "reference": params.reference.threads}
    report = run_verify(Path.cwd(), params.verify, list(args.targets), threads)
    print(report.render())
    if args.json:
        from linflow.core.storage import write_json

        write_json(args.json, report.to_json())
    return 0 if report.ok else 1
