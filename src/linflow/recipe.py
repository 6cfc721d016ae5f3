"""A training recipe for a new table, from the curvature of its train split.

Pure maths used by ``linflow add-dataset`` (not by a DVC stage): the params.yaml
defaults were tuned on the built-in sets, and a user's table can be far worse
conditioned (correlated columns, rare one-hot levels) or have a larger
lambda_max, where the default step stalls or diverges.

- Regression (full-batch, squared loss): the Hessian ``H = (2/n) [X 1]^T [X 1]``
  is constant, with extreme eigenvalues L and mu (condition number kappa = L/mu).
  Heavy-ball momentum with ``lr = 4 / (sqrt L + sqrt mu)^2`` and
  ``momentum = ((sqrt kappa - 1) / (sqrt kappa + 1))^2`` contracts every direction
  by ``(sqrt kappa - 1)/(sqrt kappa + 1)`` per step (Polyak 1964), so about
  ``6 sqrt(kappa)`` full-batch epochs take the weights within 1e-5 of the
  closed form, well inside compare's 1e-3.
- Classification (minibatch softmax): the default step, halved while it is above
  half the cross-entropy stable-step bound at the start; a batch no larger than
  the train split.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["regression_recipe", "classification_recipe", "EPOCHS_MAX"]

EPOCHS_MAX = 20000  # full-batch epochs of a small table cost ~0.1 ms each
EPOCHS_MIN = 100


def _gram(X: np.ndarray) -> np.ndarray:
    """[X 1]^T [X 1] / n in float64, shape (d + 1, d + 1)."""
    n = X.shape[0]
    Xa = np.hstack([X.astype(np.float64), np.ones((n, 1))])
    return Xa.T @ Xa / n


def regression_recipe(X: np.ndarray) -> dict:
    """lr, momentum, epochs (and the eigenvalues behind them) for full-batch heavy ball.

    X : ndarray of shape (n, d), the standardised, encoded train features.
    """
    eig = np.linalg.eigvalsh(2.0 * _gram(X))
    L, mu = float(eig[-1]), float(max(eig[0], 0.0))
    kappa = L / mu if mu > 0 else math.inf
    if not math.isfinite(kappa) or kappa > 1e12:
        kappa = 1e12
        mu = L / kappa
    root = math.sqrt(kappa)
    momentum = ((root - 1) / (root + 1)) ** 2
    lr = 4.0 / (math.sqrt(L) + math.sqrt(mu)) ** 2
    epochs = int(min(EPOCHS_MAX, max(EPOCHS_MIN, math.ceil(6 * root / 10) * 10)))
    return {
        "lr": float(f"{lr:.4g}"),
        "momentum": float(f"{min(momentum, 0.999):.4g}"),
        "epochs": epochs,
        "lambda_max": L,
        "lambda_min": mu,
        "condition": kappa,
    }


def classification_recipe(X: np.ndarray, n_classes: int, lr: float, batch_size) -> dict:
    """The default lr, halved until it is under half the stable bound at the start,
    and a batch size that fits the train split."""
    lam = float(np.linalg.eigvalsh(_gram(X) / n_classes)[-1])
    bound = 2.0 / lam
    while lr > bound / 2:
        lr /= 2
    n = X.shape[0]
    if batch_size != "full" and batch_size > n:
        batch_size = n
    return {"lr": float(f"{lr:.4g}"), "batch_size": batch_size, "lambda_max": lam, "bound": bound}
