"""Messy tables made from real data (scikit-learn's bundled wine and breast-cancer sets).

Shared by the table tests: class names as strings, a categorical column, empty
cells, a date column, and the same table as CSV, semicolon/decimal-comma CSV,
TSV, Parquet and JSON Lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

WINE_CLASSES = {0: "barolo", 1: "grignolino", 2: "barbera"}


def wine_frame(missing: bool = True) -> pd.DataFrame:
    """178 wines: 13 measurements, 'cultivar' (text), 'cellar' (3 levels), 'harvest' (dates)."""
    from sklearn.datasets import load_wine

    df = load_wine(as_frame=True).frame
    df = df.rename(columns={"target": "cultivar"})
    df["cultivar"] = df["cultivar"].map(WINE_CLASSES)
    rng = np.random.default_rng(0)
    df["cellar"] = rng.choice(["north", "south", "east"], len(df))
    df["harvest"] = pd.date_range("2020-01-01", periods=len(df), freq="D").strftime("%Y-%m-%d")
    if missing:
        df.loc[[3, 10, 50], "alcohol"] = np.nan
        df.loc[[7], "cellar"] = None
    return df


def cancer_frame() -> pd.DataFrame:
    """569 tumours, 30 measurements, 'diagnosis' malignant/benign, a 'clinic' category."""
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer(as_frame=True)
    df = b.frame.rename(columns={"target": "diagnosis"})
    df["diagnosis"] = df["diagnosis"].map({0: "malignant", 1: "benign"})
    rng = np.random.default_rng(1)
    df["clinic"] = rng.choice(["a", "b", "c", "d"], len(df))
    df.loc[[5, 17], "mean radius"] = np.nan
    return df


def write(df: pd.DataFrame, path: Path, **kw) -> Path:
    """The frame as the file its extension names (csv, tsv, parquet, jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False, **kw)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t", **kw)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        raise ValueError(suffix)
    return path


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
