"""The results evaluate and compare log to a training run, read back from their outputs.

``evaluate@<ds>`` logs ``test_*`` metrics and its files; ``compare@<ds>`` logs the
gaps (``ref_*``), tag ``linflow.compare`` and its files. The same results, read
from ``reports/<ds>/``, are what ``train`` logs when DVC will skip those stages
and what ``linflow publish`` sends to a store that never saw them run: one
definition, so a run filled either way holds the same names as one the stages
filled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from linflow.core.artifacts import CompareDoc, TestMetrics
from linflow.core.errors import DataError
from linflow.core.storage import read_json

log = logging.getLogger("linflow")

__all__ = [
    "Results",
    "EVALUATE_FILES",
    "COMPARE_FILES",
    "evaluate_results",
    "compare_results",
    "log_results_of_skipped_stages",
]

EVALUATE_FILES = ("metrics.json", "evaluation.json", "predictions.png")
COMPARE_FILES = ("compare.json", "distance_to_reference.png", "reference_fit.png")


@dataclass
class Results:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


def _files(reports: Path, names: tuple[str, ...]) -> list[Path]:
    paths = [reports / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: file not found (run dvc pull, dvc checkout or dvc repro first)"
        )
    return paths


def evaluate_results(dataset: str, reports: Path) -> Results:
    """evaluate's test metrics (``test_<metric>``) and files, from ``reports``."""
    path = reports / "metrics.json"
    scalars = TestMetrics.scalars_from(read_json(path), dataset, str(path))
    return Results(
        metrics={f"test_{k}": v for k, v in scalars.items()},
        artifacts=_files(reports, EVALUATE_FILES),
    )


def compare_results(dataset: str, reports: Path) -> Results:
    """compare's gaps (``ref_*``), its pass/fail tag and files, from ``reports``."""
    path = reports / "compare.json"
    doc = CompareDoc.from_json(read_json(path), str(path))
    if doc.dataset != dataset:
        raise DataError(f"{path}: holds dataset {doc.dataset!r}, expected {dataset!r}")
    try:
        metrics = doc.mlflow_metrics()
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: missing or non-numeric {exc} (run dvc repro)") from None
    return Results(
        metrics=metrics, tags=doc.mlflow_tags(), artifacts=_files(reports, COMPARE_FILES)
    )


def log_results_of_skipped_stages(run, dataset: str, model_dir: Path, reports: Path) -> None:
    """Log evaluate's and compare's results from their outputs when DVC will skip them.

    Weights equal to those evaluate@<ds> last saw (dvc.lock) mean DVC skips it, so it
    never logs to this run; with no earlier run of these weights in the store (a
    fresh team server) its outputs in the workspace are this run's results.
    """
    from linflow.core import lockfile, tracking

    lock = Path("dvc.lock")
    used = []
    for stage, read in (("evaluate", evaluate_results), ("compare", compare_results)):
        name = f"{stage}@{dataset}"
        if not lockfile.stage_current(lock, name, needs=[model_dir]):
            continue  # DVC runs it (or it is not a DVC run): the stage logs itself
        try:
            res = read(dataset, reports)
        except DataError as exc:
            log.warning(
                "train %s: DVC will skip %s but its outputs are unreadable (%s): the MLflow "
                "run lacks its results; run `linflow publish %s` after the pipeline",
                dataset, name, exc, dataset,
            )  # fmt: skip
            continue
        run.log_results(res.metrics, res.tags, res.artifacts)
        used.append(name)
    if used:
        run.set_tags({tracking.ADOPTED_TAG: "outputs of " + ", ".join(used)})
        log.info(
            "train %s: same weights as %s last saw (DVC skips them): their results from "
            "reports/ are logged to this run",
            dataset,
            " and ".join(used),
        )
