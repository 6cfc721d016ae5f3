"""Deterministic (stratified) train/val/test split and the standard scaler's statistics.

Pure: index arithmetic on arrays. The scaler's statistics come from the train
split only, so nothing about val/test leaks into training. Applying the scaler is part of
the prepared-data contract that every later stage reads:
:func:`linflow.core.artifacts.apply_scaler`.
"""

from __future__ import annotations

import numpy as np

from linflow.core.errors import DataError

__all__ = ["split_indices", "fit_scaler", "fit_table", "table_split_error"]


def _counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    n_test = int(round(n * test))
    n_val = int(round(n * val))
    return n - n_val - n_test, n_val, n_test


def split_indices(
    n: int,
    fractions: tuple[float, float, float],
    rng: np.random.Generator,
    y: np.ndarray | None = None,
    is_test: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, val, test) row indices covering range(n).

    With labels `y`, the split is stratified: each class is split by the same
    fractions and must appear in every split. With `is_test`, those rows are
    the test split (an official split is kept) and val is carved from the rest
    in the ratio val / (train + val).
    """
    train_f, val_f, test_f = fractions
    if is_test is not None:
        rest = np.flatnonzero(~is_test)
        tr, va, _ = split_indices(
            rest.size,
            (train_f / (train_f + val_f), val_f / (train_f + val_f), 0.0),
            rng,
            None if y is None else y[rest],
            class_names=class_names,
        )
        return rest[tr], rest[va], np.flatnonzero(is_test)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for members in groups:
        counts = _counts(members.size, val_f, test_f)
        empty = [
            name
            for name, c, f in zip(("train", "val", "test"), counts, fractions, strict=True)
            if f > 0 and c < 1
        ]
        if empty:
            label = None if y is None else y[members[0]].item()
            if label is not None and class_names is not None:
                label = class_names[label]
            what = "the data" if y is None else f"class {label!r}"
            key = empty[0]
            raise DataError(
                f"split.{key} = {fractions[('train', 'val', 'test').index(key)]:g} leaves an empty "
                f"{key} split for {what} ({members.size} rows -> train/val/test = "
                f"{'/'.join(map(str, counts))}); use larger fractions or more data"
            )
        perm = members[rng.permutation(members.size)]
        a, b = counts[0], counts[0] + counts[1]
        for i, chunk in enumerate((perm[:a], perm[a:b], perm[b:])):
            parts[i].append(chunk)
    tr, va, te = (np.sort(np.concatenate(p)) for p in parts)
    return tr, va, te


def fit_scaler(
    X: np.ndarray, x_scale: float, standardize: bool, columns: int | None = None
) -> dict:
    """Per-feature mean/std of the (train) features X * x_scale; std 0 -> 1.

    With `columns`, only the first `columns` features are standardised (a table's
    numeric columns); the rest (its one-hot indicators) keep mean 0, std 1.
    """
    d = X.shape[1]
    if not standardize:
        return {"standardize": False, "x_scale": x_scale, "mean": [0.0] * d, "std": [1.0] * d}
    Xf = X.astype(np.float64) * x_scale  # (n, d)
    mean = Xf.mean(axis=0)
    std = Xf.std(axis=0)
    std[std == 0] = 1.0  # constant features (e.g. border pixels) stay 0 after centring
    if columns is not None:
        mean[columns:], std[columns:] = 0.0, 1.0
    return {"standardize": True, "x_scale": x_scale, "mean": mean.tolist(), "std": std.tolist()}


def table_split_error(path: str, target: str, exc: DataError) -> DataError:
    """split_indices' error for a table, naming its file and target column."""
    return DataError(
        f"{path}: target column {target!r}: {exc} (a stratified split puts every class in "
        "train, val and test: remove or merge rare classes)"
    )


def fit_table(
    X_num: np.ndarray,
    X_cat: np.ndarray,
    num_names: list[str],
    cat_names: list[str],
    missing: str,
    train: np.ndarray,
    standardize: bool,
) -> tuple[dict, np.ndarray, dict, dict]:
    """A table's encoder and scaler, both fitted on the `train` rows, and every row encoded.

    The one fit split writes and add-dataset's recipe reads (linflow.transform): returns
    (encoder, X of shape (n, d_encoded) float32 unscaled, {column: rows with an unseen
    level}, scaler; only the numeric columns are standardised, indicators stay 0/1).
    """
    from linflow.transform import encode, fit_encoder

    encoder = fit_encoder(X_num[train], X_cat[train], num_names, cat_names, missing)
    X, unseen = encode(encoder, X_num, X_cat)  # (n, d_encoded)
    del X_num, X_cat  # the raw columns go before the scaler's fit (split's peak memory)
    scaler = fit_scaler(X[train], 1.0, standardize, columns=len(encoder["numeric"]))
    return encoder, X, unseen, scaler
