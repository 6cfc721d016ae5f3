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


def _softmax_hessian(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, wd):
    """The Hessian of mean cross-entropy + (wd/2)||W||^2 in (W, b), by autograd."""
    k, d = W.shape

    def objective(theta):
        Wt, bt = theta[: k * d].view(k, d), theta[k * d :]
        z = X @ Wt.T + bt
        return torch.nn.functional.cross_entropy(z, y) + 0.5 * wd * (Wt**2).sum()

    return torch.autograd.functional.hessian(objective, torch.cat([W.ravel(), b]))


@pytest.mark.parametrize(("wd", "momentum"), [(0.0, 0.0), (0.3, 0.9)])
def test_cross_entropy_bound_is_the_hessians_eigenvalue_at_the_start(wd, momentum):
    """At weights 0 every prediction is uniform: lambda_max of the exact Hessian there."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 4, generator=g, dtype=torch.float64) * 2 + 0.5
    y = torch.randint(0, 3, (60,), generator=g)
    lam, bound = lr_stability_bound(X.numpy(), wd, momentum, loss="cross_entropy", n_classes=3)
    H = _softmax_hessian(X, y, torch.zeros(3, 4, dtype=torch.float64),
                         torch.zeros(3, dtype=torch.float64), wd)  # fmt: skip
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(H).max()), rel=1e-10)
    assert bound == pytest.approx(2 * (1 + momentum) / lam)


def test_cross_entropy_curvature_never_exceeds_boehnings_bound():
    """Anywhere else it stays under lambda_max([X 1]^T [X 1] / (2n)) (Boehning 1992)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    Xa = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], dim=1)
    global_bound = float(torch.linalg.eigvalsh(Xa.T @ Xa / 80).max())
    start, _ = lr_stability_bound(X.numpy(), loss="cross_entropy", n_classes=4)
    seen = []
    for scale in (0.0, 0.3, 1.0, 3.0):
        W = scale * torch.randn(4, 3, generator=g, dtype=torch.float64)
        b = scale * torch.randn(4, generator=g, dtype=torch.float64)
        seen.append(float(torch.linalg.eigvalsh(_softmax_hessian(X, y, W, b, 0.0)).max()))
    assert max(seen) <= global_bound * (1 + 1e-12)
    assert seen[0] == pytest.approx(start) and seen[-1] < start  # sharper predictions, flatter


def test_no_bound_for_mae():
    with pytest.raises(ValueError, match="no curvature bound for loss 'mae'"):
        lr_stability_bound(np.ones((3, 2)), loss="mae")
