"""Messy tables made from real data (scikit-learn's bundled wine, breast-cancer and
diabetes sets, linflow.datasets.examples), and a hand-written table entry."""

from __future__ import annotations

from pathlib import Path

from linflow.datasets.examples import cancer_frame, diabetes_frame, wine_frame, write

__all__ = ["cancer_frame", "diabetes_frame", "wine_frame", "write", "table_entry"]


def table_entry(path: Path | str, target: str, task: str, **data) -> dict:
    """A hand-written params.yaml entry for a table (what add-dataset writes, minus comments)."""
    return {
        "source": "table",
        "path": str(path),
        "task": task,
        "data": {"target": target, **data},
        "standardize": True,
        "split": {"train": None, "val": None, "test": None},
        "train": {},
    }
