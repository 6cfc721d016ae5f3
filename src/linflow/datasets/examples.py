"""Example tables with a real table's messiness, made from scikit-learn's bundled sets.

For the "your own table" walk-through (docs/lessons.md) and the tests: string
class names, a categorical column, empty cells, a date column. Not a source:
they write files that the ``table`` source then reads like any user's file.

    python -m linflow.datasets.examples wine data/tables/wine.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["wine_frame", "cancer_frame", "diabetes_frame", "write", "write_large", "EXAMPLES"]

WINE_CLASSES = {0: "barolo", 1: "grignolino", 2: "barbera"}


def wine_frame(missing: bool = True):
    """178 wines: 13 measurements, 'cultivar' (text), 'cellar' (3 levels), 'harvest' (dates)."""
    import pandas as pd
    from sklearn.datasets import load_wine

    df = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    df["cultivar"] = df["cultivar"].map(WINE_CLASSES)
    rng = np.random.default_rng(0)
    df["cellar"] = rng.choice(["north", "south", "east"], len(df))
    df["harvest"] = pd.date_range("2020-01-01", periods=len(df), freq="D").strftime("%Y-%m-%d")
    if missing:
        df.loc[[3, 10, 50], "alcohol"] = np.nan
        df.loc[[7], "cellar"] = None
    return df


def cancer_frame():
    """569 tumours, 30 measurements, 'diagnosis' malignant/benign, a 'clinic' category."""
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    df["diagnosis"] = df["diagnosis"].map({0: "malignant", 1: "benign"})
    rng = np.random.default_rng(1)
    df["clinic"] = rng.choice(["a", "b", "c", "d"], len(df))
    df.loc[[5, 17], "mean radius"] = np.nan
    return df


def diabetes_frame():
    """442 patients: 'sex' as text, empty 'bmi' cells, 'progression' a year later."""
    from sklearn.datasets import load_diabetes

    df = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    df["sex"] = df["sex"].map({1.0: "female", 2.0: "male"})
    df.loc[[4, 40, 90], "bmi"] = np.nan
    return df


def write(df, path: str | Path, **kw) -> Path:
    """The frame as the file its extension names (csv, tsv, parquet, jsonl)."""
    path = Path(path)
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
        raise ValueError(f"{path}: write .csv, .tsv, .parquet or .jsonl")
    return path


def write_large(
    path: str | Path,
    rows: int,
    features: int = 32,
    task: str = "regression",
    classes: int = 4,
    group_rows: int = 1 << 17,
    seed: int = 0,
    noise: float = 0.5,
) -> Path:
    """A Parquet table of any size, written a row group at a time (memory: one group).

    Features f00.. float32 N(0, 1) with a column-dependent scale and offset (so
    standardising matters); target 'y': regression y = x . w + 1 + noise (float32),
    classification the argmax of x V + noise over `classes` classes (int64).
    Row group g's rows come from a generator seeded by (seed, g): the bytes do not
    depend on the machine. For the streaming tests and `make bench` (docs/streaming.md).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coef = np.random.default_rng([seed, 1 << 30]).normal(size=(features, max(classes, 1)))
    scale = np.linspace(0.5, 4.0, features)
    offset = np.linspace(-3.0, 3.0, features)
    names = [f"f{j:02d}" for j in range(features)]
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("y", pa.float32() if task == "regression" else pa.int64())])) as writer:  # fmt: skip
        for g, start in enumerate(range(0, rows, group_rows)):
            m = min(group_rows, rows - start)
            rng = np.random.default_rng([seed, g])
            Z = rng.standard_normal((m, features), dtype=np.float32)
            eps = rng.standard_normal((m, max(classes, 1)), dtype=np.float32) * noise
            if task == "regression":
                y = (Z @ coef[:, 0].astype(np.float32) + 1.0 + eps[:, 0]).astype(np.float32)
            else:
                y = np.argmax(Z @ coef.astype(np.float32) + eps, axis=1).astype(np.int64)
            X = Z * scale.astype(np.float32) + offset.astype(np.float32)
            cols = [pa.array(X[:, j]) for j in range(features)] + [pa.array(y)]
            writer.write_table(pa.table(cols, names=[*names, "y"]), row_group_size=group_rows)
    tmp.replace(path)
    return path


# name -> (frame, how a CSV of it is written: as a comma-decimal spreadsheet saves it)
EXAMPLES = {
    "wine": (wine_frame, {"sep": ";", "decimal": ","}),
    "cancer": (cancer_frame, {}),
    "diabetes": (diabetes_frame, {}),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in EXAMPLES:
        print(f"usage: python -m linflow.datasets.examples {{{','.join(EXAMPLES)}}} PATH", file=sys.stderr)  # fmt: skip
        return 2
    make, csv_kw = EXAMPLES[argv[0]]
    path = Path(argv[1])
    write(make(), path, **(csv_kw if path.suffix == ".csv" else {}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
