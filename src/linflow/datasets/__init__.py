"""Data sources: each returns a :class:`RawData` built from its config.

One module per source: ``synthetic`` (line, d2l synthetic), ``bundled``
(scikit-learn's diabetes and digits) and ``fashion_mnist``. Sources that
generate data draw from a NumPy generator seeded by (seed, dataset name), so
each dataset has its own stream and the same seed gives the same bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RawData", "make_rng", "load_source"]


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
        return arrays


def make_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded by (seed, name): independent streams per dataset."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def load_source(name: str, cfg, seed: int) -> RawData:
    """Build dataset `name` from its validated config."""
    if cfg.source in ("line", "synthetic"):
        from linflow.datasets import synthetic

        rng = make_rng(seed, name)
        return (
            synthetic.make_line(cfg, rng)
            if cfg.source == "line"
            else synthetic.make_synthetic(cfg, rng)
        )
    if cfg.source in ("diabetes", "digits"):
        from linflow.datasets import bundled

        return bundled.load_diabetes() if cfg.source == "diabetes" else bundled.load_digits()
    if cfg.source == "fashion_mnist":
        from linflow.datasets import fashion_mnist

        return fashion_mnist.load(cfg)
    raise ValueError(f"unknown source {cfg.source!r}")  # config validation makes this a bug


def validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Check a raw or split npz before use; raise DataError naming `where`."""
    from linflow.storage import DataError

    X, y = arrays["X"], arrays["y"]
    task = str(arrays["task"])
    if task not in ("regression", "classification"):
        raise DataError(f"{where}: task must be 'regression' or 'classification', got {task!r}")
    if X.ndim != 2 or not (X.dtype.kind == "f" or X.dtype == np.uint8):
        raise DataError(
            f"{where}: X must be a 2-D float or uint8 array, got shape {X.shape} dtype {X.dtype}"
        )
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"{where}: y must have shape ({X.shape[0]},), got {y.shape}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise DataError(
            f"{where}: X has a non-finite value ({X[tuple(bad)]}) at row {bad[0]}, column {bad[1]}"
        )
    if task == "classification":
        k = len(arrays["class_names"])
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: classification labels must be integers, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= k):
            raise DataError(
                f"{where}: labels must be in [0, {k}) for {k} classes, "
                f"got range [{y.min()}, {y.max()}]"
            )
    else:
        if y.dtype.kind != "f":
            raise DataError(f"{where}: regression targets must be floats, got dtype {y.dtype}")
        if not np.isfinite(y).all():
            raise DataError(
                f"{where}: y has a non-finite value at row {int(np.argmin(np.isfinite(y)))}"
            )
