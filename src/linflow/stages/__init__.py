"""The registry of ``linflow`` subcommands: the one list the CLI, the warm worker
and the tests read.

Each name is a module here with ``add_arguments(parser)`` and
``run(args, params) -> int | None``. The DVC stages (``PIPELINE``) are named as
in dvc.yaml and params.yaml; ``COMMANDS`` are run by people and CI, not by DVC.
Modules are imported only when their command runs (:func:`load`), so a stage's
process holds its own code and what it imports, nothing of the other stages.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PIPELINE", "COMMANDS", "DESCRIPTIONS", "load"]

PIPELINE = (
    "validate",
    "prepare",
    "split",
    "train",
    "evaluate",
    "reference",
    "compare",
    "report",
    "gd",
)
COMMANDS = ("add-dataset", "predict", "verify", "portability", "publish")

# One line each: `linflow --help` lists them without importing a stage.
DESCRIPTIONS = {
    "validate": "check all of params.yaml (every section, key and value) before any stage runs",
    "prepare": "build data/raw/<ds>.npz from the dataset's source",
    "split": "split the raw data into train/val/test and fit the scaler on train",
    "train": "train the model by minibatch SGD (one MLflow run per training)",
    "evaluate": "test-split metrics, predictions and their plot for the trained model",
    "reference": "fit the closed-form / classical references on the same train split",
    "compare": "gaps between the trained model and the reference; the gate",
    "report": "reports/summary.md over all datasets and the numeric platform",
    "gd": "gradient descent on 2x^2 and x^2+y^2+z^2 at several step sizes (numpy and autograd)",
    "add-dataset": "add a dataset entry for your own table (CSV, TSV, Parquet, JSON Lines) to "
    "params.yaml",
    "predict": "score a CSV / Parquet / npz of raw rows with a trained model (workspace or MLflow)",
    "verify": "re-run the pipeline (dvc repro -f) and judge it against the committed results",
    "portability": "run verify as other CPUs would (emulated kernel variants); print the spreads",
    "publish": "send every dataset's training and reference runs to the tracking store from "
    "the DVC outputs (no duplicates; completes runs lacking test metrics)",
}


def load(name: str) -> ModuleType:
    """The module of subcommand `name` (one of PIPELINE + COMMANDS)."""
    if name not in DESCRIPTIONS:
        raise KeyError(name)
    return importlib.import_module(f"linflow.stages.{name.replace('-', '_')}")
