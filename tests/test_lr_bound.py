"""lambda_max and the full-batch stable step 2/lambda_max, checked by training itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linflow.core.config import RegressionTrain
from linflow.training import DivergenceError, fit, lr_stability_bound, make_engine


def data(seed: int = 0, n: int = 50):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * np.array([1.0, 2.0, 0.5]) + 0.3  # (n, 3)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 + 0.1 * rng.normal(size=n)
    return torch.from_numpy(X), torch.from_numpy(y)


def train(lr: float, X, y, wd: float = 0.0, epochs: int = 400, bound=None):
    cfg = RegressionTrain(lr=lr, batch_size="full", epochs=epochs, weight_decay=wd)
    engine = make_engine("scratch", "regression", X.shape[1], 0, cfg, dtype=torch.float64)
    return fit(engine, X, y, X, y, cfg, lr_bound=bound)


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_bound_is_the_hessian_eigenvalue(wd):
    X, _ = data()
    lam, bound = lr_stability_bound(X.numpy(), wd)
    n = X.shape[0]
    Xa = np.hstack([X.numpy(), np.ones((n, 1))])
    H = 2 / n * Xa.T @ Xa + np.diag([wd] * 3 + [0.0])
    assert lam == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-12)
    assert bound == pytest.approx(2 / lam)


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_full_batch_descent_is_stable_just_below_the_bound_and_not_above(wd):
    X, y = data()
    _, bound = lr_stability_bound(X.numpy(), wd)
    below = train(0.98 * bound, X, y, wd)
    assert below.history[-1]["train_loss"] < below.history[0]["train_loss"]
    # Above it the top Hessian direction grows by |1 - lr lambda_max| = 1.1 per step,
    # until the loss is 10x its value before training: a divergence, not a bad model.
    with pytest.raises(DivergenceError, match=r"val loss grew to .* over 10x its .* before"):
        train(1.05 * bound, X, y, wd, epochs=60)


@pytest.mark.parametrize("lr", [1e200, 1e180])  # float64 overflows within the first epoch
def test_divergence_error_names_the_non_finite_loss(lr):
    X, y = data()
    with pytest.raises(DivergenceError, match=r"(loss|val loss) became (inf|nan) at epoch \d+"):
        train(lr, X, y, epochs=500)


def test_divergence_error_cites_the_bound():
    X, y = data()
    _, bound = lr_stability_bound(X.numpy())
    with pytest.raises(
        DivergenceError,
        match=rf"lr=1000\.0; the full-batch stable step bound "
        rf"is 2/lambda_max = {bound:.4g}; lower lr",
    ):
        train(1e3, X, y, epochs=500, bound=bound)


@pytest.mark.parametrize(
    ("every", "epochs", "expected"), [(1, 7, [0, 1, 2, 3, 4, 5, 6, 7]), (3, 7, [0, 3, 6, 7])]
)
def test_fit_records_the_trajectory_on_request(every, epochs, expected):
    X, y = data()
    result = train(0.1, X, y, epochs=epochs)
    assert result.trajectory_weight is None  # only on request
    cfg = RegressionTrain(lr=0.1, batch_size="full", epochs=epochs)
    engine = make_engine("scratch", "regression", 3, 0, cfg, dtype=torch.float64)
    recorded = fit(engine, X, y, X, y, cfg, record_every=every)
    assert recorded.trajectory_epoch.tolist() == expected
    assert recorded.trajectory_weight.shape == (len(expected), 1, 3)
    assert recorded.trajectory_bias.shape == (len(expected), 1)
    np.testing.assert_array_equal(recorded.trajectory_weight[-1], result.weight)


def test_momentum_widens_the_bound_and_reaches_the_optimum_sooner():
    """Heavy ball on a quadratic is stable for lr < 2 (1 + m) / lambda_max and, on an
    ill-conditioned problem, gets as close in far fewer epochs than plain GD."""
    g = np.random.default_rng(0)
    X = g.normal(size=(200, 3)) @ np.diag([1.0, 0.1, 0.03])  # condition number ~1e3
    y = X @ np.array([1.0, -2.0, 3.0]) + 0.5
    lam, plain = lr_stability_bound(X)
    _, heavy = lr_stability_bound(X, momentum=0.9)
    assert heavy == pytest.approx(1.9 * plain) and plain == pytest.approx(2 / lam)
    Xa = np.hstack([X, np.ones((200, 1))])
    w_star = np.linalg.lstsq(Xa, y, rcond=None)[0]

    def error(momentum: float, epochs: int) -> float:
        cfg = RegressionTrain(
            lr=0.9 * plain, batch_size="full", epochs=epochs, momentum=momentum, seed=0
        )
        engine = make_engine("scratch", "regression", 3, 0, cfg, dtype=torch.float64)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        res = fit(engine, Xt, yt, Xt, yt, cfg)
        w = np.concatenate([res.weight.ravel(), res.bias.ravel()])
        return float(np.linalg.norm(w - w_star) / np.linalg.norm(w_star))

    assert error(0.9, 600) < 1e-3 < error(0.0, 600)
