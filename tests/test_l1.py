"""L1 (Lasso): proximal SGD in both engines lands on scikit-learn's Lasso / ElasticNet.

J(W, b) = mean((X W^T + b - y)^2) + (wd / 2) ||W||^2 + l1 ||W||_1; the bias is not
penalised. The reference's mapping (lasso_alpha) is checked on its own against the
optimality conditions, so the two sides cannot agree by sharing a mistake.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linflow.core.config import ConfigError, RegressionTrain, parse_params
from linflow.reference import compare_to_reference, fit_sklearn_lasso, objective
from linflow.training import fit, make_engine


def _data(n: int = 120, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = np.array([3.0, -2.0, 0.0, 0.0, 0.5, 0.0])[:d]
    y = X @ w + 1.0 + 0.5 * rng.standard_normal(n)
    return X, y


@pytest.mark.parametrize("wd", [0.0, 0.2], ids=["lasso", "elastic-net"])
def test_the_reference_meets_the_optimality_conditions_of_our_objective(wd):
    """At the minimiser of J: the gradient of the smooth part is -l1 sign(w_j) where
    w_j != 0 and within [-l1, l1] where w_j = 0; the bias gradient is 0."""
    X, y = _data()
    l1 = 0.8
    ref = fit_sklearn_lasso(X, y, wd, l1)
    assert ref.converged
    w, b = ref.weight[0], ref.bias[0]
    r = X @ w + b - y
    grad = 2.0 * X.T @ r / len(y) + wd * w  # d/dw of mean(r^2) + wd/2 ||w||^2
    nz = w != 0
    assert (~nz).sum() >= 1, "the example should have exact zeros"
    np.testing.assert_allclose(grad[nz], -l1 * np.sign(w[nz]), atol=1e-8)
    assert np.all(np.abs(grad[~nz]) <= l1 + 1e-8)
    assert abs(2.0 * r.mean()) < 1e-8


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["gd", "heavy-ball"])
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_proximal_gradient_descent_lands_on_the_lasso_with_its_zeros(impl, momentum):
    X, y = _data()
    wd, l1 = 0.05, 0.8
    cfg = RegressionTrain(
        lr=0.2, batch_size="full", epochs=600, weight_decay=wd, momentum=momentum, l1=l1, seed=1
    )
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    engine = make_engine(impl, "regression", X.shape[1], 0, cfg, dtype=torch.float64)
    res = fit(engine, Xt, yt, Xt, yt, cfg)
    ref = fit_sklearn_lasso(X, y, wd, l1)
    np.testing.assert_array_equal(res.weight == 0, ref.weight == 0)  # the same exact zeros
    np.testing.assert_allclose(res.weight, ref.weight, atol=1e-7)
    gaps = compare_to_reference(
        "regression", "mse", wd, (res.weight, res.bias), (ref.weight, ref.bias),
        (X, y), (X, y), l1,
    )  # fmt: skip
    assert gaps["train_objective"]["rel_gap"] < 1e-10
    # and the objective counts the penalty: without it the reference is not the minimum
    assert (
        objective(X, y, ref.weight, ref.bias, "mse", wd, l1)[1]
        > objective(X, y, ref.weight, ref.bias, "mse", wd)[1]
    )


def test_l1_is_for_regression_only(params):
    params["datasets"]["digits"]["train"]["l1"] = 0.1
    with pytest.raises(ConfigError, match="datasets.digits.train.l1 must be null or 0.0"):
        parse_params(params)
    params["datasets"]["digits"]["train"]["l1"] = None
    params["train"]["classification"]["l1"] = 0.1
    with pytest.raises(ConfigError, match="train.classification.l1 must be 0.0: L1 is for"):
        parse_params(params)
