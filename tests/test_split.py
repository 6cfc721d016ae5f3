import numpy as np
import pytest

from linflow.core.artifacts import apply_scaler
from linflow.core.storage import DataError
from linflow.split import fit_scaler, split_indices


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_split_is_disjoint_complete_and_sized():
    tr, va, te = split_indices(100, (0.7, 0.15, 0.15), _rng())
    assert (tr.size, va.size, te.size) == (70, 15, 15)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(100))


def test_split_is_deterministic_per_seed():
    a = split_indices(100, (0.6, 0.2, 0.2), _rng(1))
    b = split_indices(100, (0.6, 0.2, 0.2), _rng(1))
    c = split_indices(100, (0.6, 0.2, 0.2), _rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[2], c[2])


def test_stratified_split_keeps_class_proportions():
    y = np.repeat(np.arange(3), [60, 30, 10])
    tr, va, te = split_indices(y.size, (0.6, 0.2, 0.2), _rng(), y=y)
    for part, frac in ((tr, 0.6), (va, 0.2), (te, 0.2)):
        counts = np.bincount(y[part], minlength=3)
        np.testing.assert_allclose(counts, frac * np.array([60, 30, 10]), atol=1)


def test_stratified_split_refuses_a_class_absent_from_a_split():
    y = np.array([0] * 50 + [1] * 2)
    with pytest.raises(
        DataError,
        match=r"split\.val = 0\.15 leaves an empty val split for class 1 \(2 rows -> train/val/test = 2/0/0\)",
    ):
        split_indices(y.size, (0.7, 0.15, 0.15), _rng(), y=y)


def test_official_test_split_is_kept():
    is_test = np.zeros(100, dtype=bool)
    is_test[80:] = True
    y = np.arange(100) % 2
    tr, va, te = split_indices(100, (0.7, 0.15, 0.15), _rng(), y=y, is_test=is_test)
    assert np.array_equal(te, np.arange(80, 100))
    assert tr.size + va.size == 80 and va.size == round(80 * 0.15 / 0.85)


def test_scaler_uses_train_statistics_and_handles_constant_columns():
    X = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]], dtype=np.float32)
    s = fit_scaler(X, 1.0, standardize=True)
    Z = apply_scaler(X, s)
    np.testing.assert_allclose(Z[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(Z[:, 0].std(), 1, atol=1e-6)
    np.testing.assert_array_equal(Z[:, 1], 0)
    off = fit_scaler(X, 0.5, standardize=False)
    np.testing.assert_array_equal(apply_scaler(X, off), X * 0.5)
