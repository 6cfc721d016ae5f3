"""Test and validation metrics in NumPy (no torch needed to evaluate a linear model).

Regression: mse, rmse, mae, r2. Classification: accuracy, cross-entropy
(log-sum-exp stable), per-class accuracy and the confusion matrix
(rows = true class, columns = predicted class).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "predict_linear",
    "log_softmax",
    "regression_metrics",
    "classification_metrics",
    "confusion_matrix",
]


_ROWS = 4096  # rows per block in predict_linear


def predict_linear(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X (n, d), W (k, d), b (k,) -> outputs (n, k) in float64."""
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if X.dtype == np.float64:
        return X @ W.T + b  # (n, k)
    # float32 features go to float64 a block of rows at a time: converting all of
    # Fashion-MNIST's train split at once costs 0.4 s of fresh memory per call.
    out = np.empty((X.shape[0], W.shape[0]))  # (n, k)
    for start in range(0, X.shape[0], _ROWS):
        out[start : start + _ROWS] = X[start : start + _ROWS].astype(np.float64) @ W.T
    out += b
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax via log-sum-exp: finite for logits of +-1000."""
    z = logits - logits.max(axis=1, keepdims=True)  # (n, k)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def regression_metrics(y: np.ndarray, y_hat: np.ndarray) -> dict[str, float]:
    """y, y_hat of shape (n,)."""
    y = y.astype(np.float64)
    err = y_hat.astype(np.float64) - y
    mse = float(np.mean(err**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err))), "r2": r2}


def confusion_matrix(y: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(k, k) counts; rows = true class, columns = predicted class."""
    return np.bincount(y * n_classes + y_pred, minlength=n_classes**2).reshape(n_classes, n_classes)


def classification_metrics(y: np.ndarray, logits: np.ndarray) -> dict[str, object]:
    """y (n,) int labels, logits (n, k)."""
    n_classes = logits.shape[1]
    y = y.astype(np.int64)
    y_pred = logits.argmax(axis=1)
    ce = float(-np.mean(log_softmax(logits.astype(np.float64))[np.arange(y.size), y]))
    cm = confusion_matrix(y, y_pred, n_classes)
    support = cm.sum(axis=1)
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": float(np.mean(y_pred == y)),
        "cross_entropy": ce,
        "per_class_accuracy": [float(v) for v in per_class],
        "confusion_matrix": cm.tolist(),
    }
