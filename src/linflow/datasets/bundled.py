"""scikit-learn's bundled real datasets (shipped with the package, no download)."""

from __future__ import annotations

import numpy as np

from linflow.datasets import RawData


def load_diabetes(cfg=None, rng=None) -> RawData:
    """442 patients x 10 baseline features -> disease progression after one year."""
    from sklearn.datasets import load_diabetes as _load

    bunch = _load(scaled=False)
    return RawData(
        task="regression",
        X=bunch.data.astype(np.float32),
        y=bunch.target.astype(np.float32),
        feature_names=list(bunch.feature_names),
    )


def load_digits(cfg=None, rng=None) -> RawData:
    """1797 8x8 images of digits 0-9; pixels scaled from 0..16 to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return RawData(
        task="classification",
        X=(bunch.data / 16.0).astype(np.float32),
        y=bunch.target.astype(np.int64),
        feature_names=[f"px{i // 8}_{i % 8}" for i in range(64)],
        class_names=[str(c) for c in bunch.target_names],
    )
