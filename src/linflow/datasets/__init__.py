"""Data sources: each returns a :class:`RawData` built from its config.

One module per source: ``synthetic`` (line, d2l synthetic), ``bundled``
(scikit-learn's diabetes and digits), ``fashion_mnist`` and ``table`` (a user's
own CSV / TSV / Parquet / JSON Lines file). Sources that
generate data draw from a NumPy generator seeded by (seed, dataset name), so
each dataset has its own stream and the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from linflow.core.seeding import make_rng

__all__ = ["LOADERS", "RawData", "make_rng", "load_source"]


@dataclass(frozen=True)
class RawData:
    """A whole dataset before splitting.

    X : ndarray of shape (n_samples, n_features); float32, or uint8 with `x_scale`
    y : ndarray of shape (n_samples,); float32 targets or int64 class labels
    """

    task: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] = field(default_factory=list)
    x_scale: float = 1.0  # features in memory are X * x_scale (uint8 images stay small on disk)
    is_test: np.ndarray | None = None  # an official test split to keep, if the source has one
    # Tables only: text columns (n, c), '' for an empty cell, one-hot encoded by split,
    # and what split and later consumers need to know of the file (datasets/table.py).
    categorical: np.ndarray | None = None
    table: dict | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "task": np.array(self.task),
            "X": self.X,
            "y": self.y,
            "feature_names": np.array(self.feature_names),
            "class_names": np.array(self.class_names, dtype=str),
            "x_scale": np.array(self.x_scale, dtype=np.float64),
        }
        if self.is_test is not None:
            arrays["is_test"] = self.is_test
        if self.table is not None:
            import json

            arrays["X_cat"] = self.categorical
            arrays["table"] = np.array(json.dumps(self.table, sort_keys=True))
        return arrays


# source name (params.yaml datasets.<ds>.source) -> (module, loader); the params
# model of each is core.config.SOURCE_MODELS, under the same names.
LOADERS: dict[str, tuple[str, str]] = {
    "line": ("synthetic", "make_line"),
    "synthetic": ("synthetic", "make_synthetic"),
    "diabetes": ("bundled", "load_diabetes"),
    "digits": ("bundled", "load_digits"),
    "fashion_mnist": ("fashion_mnist", "load"),
    "table": ("table", "load"),
}


def load_source(name: str, cfg, seed: int) -> RawData:
    """Build dataset `name` from its validated config.

    Every loader takes (cfg.data, rng): the source's own knobs (bundled sets have
    none), and a stream seeded by (seed, dataset name) that only generated sources
    draw from. A table's loader takes the whole entry: its file is ``cfg.path``
    and its task is the entry's, checked against the target column.
    """
    import importlib

    module, func = LOADERS[cfg.source]
    loader = getattr(importlib.import_module(f"linflow.datasets.{module}"), func)
    return loader(cfg if cfg.source == "table" else cfg.data, make_rng(seed, name))
