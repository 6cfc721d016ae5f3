"""add-dataset's training recipe (linflow.recipe): heavy ball from the train split's
curvature reaches the closed form, on an ill-conditioned table where the defaults stall."""

from __future__ import annotations

import numpy as np
import pytest

from linflow.recipe import classification_recipe, regression_recipe


def _heavy_ball(X, y, lr, momentum, epochs):
    """Full-batch heavy ball on mean((X w + b - y)^2), as torch.optim.SGD steps it."""
    Xa = np.hstack([X, np.ones((X.shape[0], 1))])
    w = np.zeros(Xa.shape[1])
    v = np.zeros_like(w)
    for _ in range(epochs):
        g = 2 * Xa.T @ (Xa @ w - y) / X.shape[0]
        v = momentum * v + g
        w -= lr * v
    return w


@pytest.mark.parametrize("spread", [1.0, 30.0, 300.0])
def test_the_regression_recipe_reaches_the_closed_form(spread):
    rng = np.random.default_rng(0)
    n, d = 500, 8
    base = rng.normal(size=(n, d))
    X = base @ np.diag(np.linspace(1, spread, d) ** -0.5)  # eigenvalues spread ~ `spread`
    X[:, 1] = 0.9 * X[:, 0] + 0.1 * X[:, 1]  # and two correlated columns
    X = (X - X.mean(0)) / X.std(0)
    y = X @ rng.normal(size=d) + 3 + rng.normal(scale=0.1, size=n)
    r = regression_recipe(X)
    assert r["lr"] < 2 * (1 + r["momentum"]) / r["lambda_max"]  # inside the stable bound
    w = _heavy_ball(X, y, r["lr"], r["momentum"], r["epochs"])
    exact = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), y, rcond=None)[0]
    assert np.linalg.norm(w - exact) / np.linalg.norm(exact) < 1e-4
    # The default recipe (lr 0.2, plain GD, 300 epochs) is far from it when conditioning is bad.
    if r["condition"] > 1000:
        w0 = _heavy_ball(X, y, 0.2, 0.0, 300)
        assert np.linalg.norm(w0 - exact) / np.linalg.norm(exact) > 1e-3


def test_the_classification_recipe_is_full_batch_heavy_ball_with_decay_and_defaults_without():
    X = np.random.default_rng(1).normal(size=(40, 3))
    r = classification_recipe(X, 1e-3, 0.3, 64, 200)
    assert r["batch_size"] == "full" and 0 < r["momentum"] < 1
    assert r["lr"] == pytest.approx(1 / r["L"], rel=1e-3) and r["epochs"] >= 100
    plain = classification_recipe(X, 0.0, 0.3, 64, 200)
    assert (plain["lr"], plain["batch_size"], plain["epochs"]) == (0.3, 40, 200)  # batch fits
