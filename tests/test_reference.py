"""The references against the closed form, the weight-decay mappings, and the checks.

The mapping tests are the ones that matter: at each reference the gradient of
*our* objective vanishes, and full-batch training with weight decay lands on
scikit-learn's Ridge / LogisticRegression solution.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from linflow import reference as R
from linflow.core.config import ClassificationTrain, RegressionTrain
from linflow.training import fit, make_engine
from linflow.training.scratch import loss_and_grads

# Converged far below scikit-learn's default tol, so gradients can be compared to ~1e-6.
TIGHT = {"max_iter": 5000, "tol": 1e-8}


def regression_data(seed: int, n: int = 60, d: int = 4, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    w = rng.normal(size=d)
    y = X @ w + 1.5 + noise * rng.normal(size=n)
    return X, y


def classification_data(seed: int, n: int = 90, d: int = 3, k: int = 3):
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.normal(size=(k, d))
    y = np.arange(n) % k
    X = centres[y] + rng.normal(size=(n, d))
    return X, y


def objective_grads(X, y, W, b, loss, wd):
    """Gradient of our objective J = loss + (wd/2)||W||^2 (float64, hand-written)."""
    Xt, Wt, bt = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (X, W, b))
    yt = torch.as_tensor(y)
    _, dW, db = loss_and_grads(Xt, yt, Wt, bt, loss)
    return (dW + wd * Wt).numpy(), db.numpy()


# --- regression ---------------------------------------------------------------------


def closed_form(X, y, wd):
    """Textbook normal equations on [X 1] with the bias unpenalised, via np.linalg.solve."""
    n, d = X.shape
    Xa = np.hstack([X, np.ones((n, 1))])
    P = np.diag([n * wd / 2] * d + [0.0])
    theta = np.linalg.solve(Xa.T @ Xa + P, Xa.T @ y)
    return theta[:d], theta[d]


@pytest.mark.parametrize("wd", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_equations_match_closed_form_and_sklearn(wd, seed):
    X, y = regression_data(seed)
    ref = R.fit_normal_equations(X, y, wd)
    assert ref.weight.shape == (1, X.shape[1]) and ref.bias.shape == (1,)
    w, b = closed_form(X, y, wd)
    np.testing.assert_allclose(ref.weight[0], w, rtol=1e-9, atol=1e-12)
    assert ref.bias[0] == pytest.approx(b, rel=1e-9)
    ridge = R.fit_sklearn_ridge(X, y, wd)
    assert R.relative_l2(ridge.weight, ref.weight) < 1e-9
    np.testing.assert_allclose(ridge.bias, ref.bias, rtol=1e-9)
    if wd == 0:
        ols = R.fit_sklearn_linear(X, y)
        assert R.relative_l2(ols.weight, ref.weight) < 1e-9


@pytest.mark.parametrize("wd", [0.0, 0.02, 0.4])
def test_objective_gradient_vanishes_at_the_regression_references(wd):
    X, y = regression_data(3)
    for ref in (R.fit_normal_equations(X, y, wd), R.fit_sklearn_ridge(X, y, wd)):
        dW, db = objective_grads(X, y, ref.weight, ref.bias, "mse", wd)
        assert np.abs(dW).max() < 1e-9 and np.abs(db).max() < 1e-9


def test_ridge_alpha_mapping():
    assert R.ridge_alpha(200, 0.01) == pytest.approx(1.0)
    assert R.ridge_alpha(200, 0.0) == 0.0


def test_normal_equations_handle_a_rank_deficient_design():
    X, y = regression_data(4, d=3)
    X = np.hstack([X, X[:, :1]])  # a duplicated column: X^T X is singular
    ref = R.fit_normal_equations(X, y)
    # the minimum-norm solution splits the duplicated weight evenly
    assert ref.weight[0, 0] == pytest.approx(ref.weight[0, 3], rel=1e-9)
    dW, db = objective_grads(X, y, ref.weight, ref.bias, "mse", 0.0)
    assert np.abs(dW).max() < 1e-9 and np.abs(db).max() < 1e-9


@pytest.mark.parametrize("impl", ["torch", "scratch"])
@pytest.mark.parametrize("wd", [0.05, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_full_batch_training_with_weight_decay_converges_to_ridge(impl, wd, seed):
    """Must hold #5: the alpha = n wd / 2 mapping, checked by the training loop itself."""
    X, y = regression_data(seed)
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # standardised, as the pipeline does
    ridge = R.fit_sklearn_ridge(X, y, wd)
    cfg = RegressionTrain(lr=0.2, batch_size="full", epochs=400, weight_decay=wd, seed=seed)
    engine = make_engine(impl, "regression", X.shape[1], 0, cfg)
    Xt, yt = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    result = fit(engine, Xt, yt, Xt[:8], yt[:8], cfg)
    assert R.relative_l2(result.weight, ridge.weight) < 1e-4
    assert result.bias[0] == pytest.approx(ridge.bias[0], rel=1e-4)
    # and without the mapping it would not be: Ridge at alpha = n wd is visibly elsewhere
    wrong = R.fit_sklearn_ridge(X, y, 2 * wd)
    assert R.relative_l2(result.weight, wrong.weight) > 1e-3


# --- classification -------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("wd", [0.01, 0.1])
def test_objective_gradient_vanishes_at_logistic_regression(k, wd):
    """The C = 1 / (n wd) mapping (2 / (n wd) for two classes) is exact."""
    X, y = classification_data(k, k=k)
    ref = R.fit_logistic_regression(X, y, k, wd, **TIGHT)
    assert ref.converged
    assert ref.weight.shape == (k, X.shape[1]) and ref.bias.shape == (k,)
    np.testing.assert_allclose(ref.weight.sum(axis=0), 0, atol=1e-12)  # centred
    dW, db = objective_grads(X, y, ref.weight, ref.bias, "cross_entropy", wd)
    assert np.abs(dW).max() < 1e-6 and np.abs(db).max() < 1e-6


def test_full_batch_training_converges_to_logistic_regression():
    X, y = classification_data(5)
    wd = 0.05
    ref = R.fit_logistic_regression(X, y, 3, wd, **TIGHT)
    cfg = ClassificationTrain(lr=1.0, batch_size="full", epochs=600, weight_decay=wd)
    engine = make_engine("scratch", "classification", X.shape[1], 3, cfg, dtype=torch.float64)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    result = fit(engine, Xt, yt, Xt[:9], yt[:9], cfg)
    W, _ = R.centre_softmax(result.weight, result.bias)
    assert R.relative_l2(W, ref.weight) < 1e-4


def test_logistic_regression_reports_non_convergence_without_warning():
    X, y = classification_data(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape, ConvergenceWarning included
        ref = R.fit_logistic_regression(X, y, 3, 0.01, max_iter=2, tol=1e-8)
    assert not ref.converged and ref.stopped_by == "max_iter" and ref.n_iter == 2


def test_a_fit_longer_than_one_call_resumes_and_reports_progress(monkeypatch):
    X, y = classification_data(6)
    one_call = R.fit_logistic_regression(X, y, 3, 0.01, max_iter=5000, tol=1e-10)
    monkeypatch.setattr(R, "CHUNK", 5)  # calls of 5 iterations, each resuming the last
    heard = []
    ref = R.fit_logistic_regression(
        X, y, 3, 0.01, max_iter=5000, tol=1e-10, on_progress=lambda i, s: heard.append(i)
    )
    assert heard[:3] == [5, 10, 15] and ref.n_iter > heard[-1]
    assert ref.converged and ref.stopped_by is None
    assert R.relative_l2(ref.weight, one_call.weight) < 1e-5  # the same optimum


def test_a_time_bound_stops_the_fit_after_the_call_that_crosses_it(monkeypatch):
    X, y = classification_data(6)
    monkeypatch.setattr(R, "CHUNK", 5)
    ref = R.fit_logistic_regression(X, y, 3, 0.01, max_iter=5000, tol=1e-10, max_seconds=1e-9)
    assert (ref.converged, ref.stopped_by, ref.n_iter) == (False, "max_seconds", 5)


def test_a_fit_is_plain_logistic_regression_in_float32_then_checked_in_float64():
    """Unbounded, the fit is one plain float32 LogisticRegression fit on the centred
    features, resumed by one float64 fit (warm start) that has the last word."""
    from sklearn.linear_model import LogisticRegression

    X, y = classification_data(6)
    ref = R.fit_logistic_regression(X, y, 3, 0.01, max_iter=5000, tol=1e-5)
    mu = X.mean(axis=0).astype(np.float32)
    plain = LogisticRegression(
        C=R.logistic_C(X.shape[0], 0.01, 3), max_iter=5000, tol=1e-5, warm_start=True
    )
    plain.fit(X.astype(np.float32) - mu, y)  # the float32 features, centred
    assert plain.coef_.dtype == np.float32  # scikit-learn fitted in float32, not a copy in float64
    in_float32 = int(plain.n_iter_[0])
    plain.fit(X - mu.astype(np.float64), y)
    assert plain.coef_.dtype == np.float64
    W, _ = R.centre_softmax(plain.coef_, plain.intercept_)
    assert ref.converged and ref.n_iter == in_float32 + int(plain.n_iter_[0])
    # float32 stopped at 22 iterations saying "converged"; float64 disagreed and took 6 more
    assert int(plain.n_iter_[0]) > 0 and ref.precision == "float32, then float64"
    np.testing.assert_array_equal(ref.weight, W)


def test_a_float64_check_that_agrees_takes_no_iteration():
    X, y = classification_data(6)
    ref = R.fit_logistic_regression(X, y, 3, 0.01, max_iter=5000, tol=1e-3)
    assert ref.converged and ref.precision == "float32"


def test_a_tolerance_beyond_float32_is_finished_in_float64():
    """tol 1e-8 is below what float32 losses resolve: lbfgs stops short of its iteration
    limit, and the fit resumes in float64 to the same optimum a float64 fit reaches."""
    from sklearn.linear_model import LogisticRegression

    X, y = classification_data(6)
    ref = R.fit_logistic_regression(X, y, 3, 0.01, **TIGHT)
    assert ref.converged and ref.precision == "float32, then float64"
    plain = LogisticRegression(C=R.logistic_C(X.shape[0], 0.01, 3), **TIGHT)
    plain.fit(X - X.mean(axis=0), y)
    W, _ = R.centre_softmax(plain.coef_, plain.intercept_)
    assert R.relative_l2(ref.weight, W) < 1e-6


def test_logistic_regression_without_weight_decay_is_unpenalised():
    assert R.logistic_C(100, 0.0, 10) == math.inf
    assert R.logistic_C(100, 0.01, 10) == pytest.approx(1.0)
    assert R.logistic_C(100, 0.01, 2) == pytest.approx(2.0)


def test_logistic_regression_needs_every_class():
    X, y = classification_data(7)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        R.fit_logistic_regression(X, y, 4, 0.01, **TIGHT)


def test_centring_changes_no_prediction():
    rng = np.random.default_rng(0)
    X, W, b = rng.normal(size=(20, 3)), rng.normal(size=(4, 3)) + 5.0, rng.normal(size=4)
    Wc, bc = R.centre_softmax(W, b)
    np.testing.assert_allclose(Wc.sum(axis=0), 0, atol=1e-12)
    Z, Zc = X @ W.T + b, X @ Wc.T + bc
    np.testing.assert_allclose(Z - Z.max(axis=1, keepdims=True), Zc - Zc.max(axis=1, keepdims=True))


# --- measures and checks ------------------------------------------------------------


def test_relative_l2():
    assert R.relative_l2(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert R.relative_l2(np.array([3.0, 4.5]), np.array([3.0, 4.0])) == pytest.approx(0.1)
    assert R.relative_l2(np.array([1.0, 0.0]), np.zeros(2)) == 1.0  # plain distance


def test_compare_to_reference_reports_every_gap():
    X, y = classification_data(8)
    ref = R.fit_logistic_regression(X, y, 3, 0.01, **TIGHT)
    shifted = (ref.weight + 7.0, ref.bias - 2.0)  # the same classifier, not centred
    out = R.compare_to_reference(
        "classification", "cross_entropy", 0.01, shifted, (ref.weight, ref.bias), (X, y), (X, y)
    )
    assert out["weight_rel_l2"] < 1e-12  # centring removes the shift
    assert out["agreement"] == 1.0
    assert out["test"]["delta"]["accuracy"] == 0.0
    # the penalty is not shift-invariant, so the uncentred weights cost more
    assert out["train_objective"]["gap"] > 0
    assert out["train_loss"]["gap"] == pytest.approx(0.0, abs=1e-12)


def test_check_tolerances_bounds():
    values = {"weight_rel_l2": 2e-3, "agreement": 0.96, "test_r2_delta": 0.001, "x": math.inf}
    checks = R.check_tolerances(
        values,
        {"weight_rel_l2": 1e-3, "min_agreement": 0.97, "test_r2_delta": None, "x": 1.0},
    )
    assert checks["weight_rel_l2"]["passed"] is False
    assert checks["agreement"]["passed"] is False and checks["agreement"]["bound"] == "min"
    assert checks["test_r2_delta"]["passed"] is None  # reported, not checked
    assert checks["x"]["passed"] is False  # a non-finite gap never passes
    ok = R.check_tolerances(values, {"weight_rel_l2": 1e-2, "min_agreement": 0.95})
    assert all(c["passed"] for c in ok.values())


def test_failure_message_names_gap_tolerance_and_what_to_try():
    cfg = RegressionTrain(lr=0.05, batch_size=32, epochs=200)
    checks = R.check_tolerances(
        {"weight_rel_l2": 0.0123, "test_r2_delta": 0.0},
        {"weight_rel_l2": 1e-3, "test_r2_delta": 0.005},
    )
    msg = R.failure_message("line", "regression", checks, cfg)
    assert "\n" not in msg
    with pytest.raises(
        R.ToleranceError,
        match=(
            r"line .*weight_rel_l2 = 0\.0123 exceeds compare\.regression\.weight_rel_l2 = 0\.001; "
            r"minibatch SGD at a constant lr keeps jittering around the optimum, so a gap is "
            r"expected; .*epochs=200, lr=0\.05, batch_size=32"
        ),
    ):
        raise R.ToleranceError(msg)
    assert "test_r2_delta" not in msg
    full = RegressionTrain(lr=0.05, batch_size="full", epochs=3)
    assert "try more epochs, a smaller lr or full batch" in R.failure_message(
        "line", "regression", checks, full
    )
    mae = RegressionTrain(lr=0.05, batch_size="full", epochs=300, loss="mae")
    assert "not the optimum of the MAE objective" in R.failure_message(
        "line", "regression", checks, mae
    )
    passing = R.check_tolerances({"weight_rel_l2": 1e-4}, {"weight_rel_l2": 1e-3})
    assert R.failure_message("line", "regression", passing, cfg) is None


def test_trajectory_distance_is_relative_and_centred():
    ref = np.array([[1.0, -1.0], [-1.0, 1.0]])
    traj = np.stack([np.zeros((2, 2)), ref + 3.0, ref * 1.1])  # (3, 2, 2)
    dist = R.trajectory_distance("classification", traj, ref)
    np.testing.assert_allclose(dist, [1.0, 0.0, 0.1], atol=1e-12)
    dist_reg = R.trajectory_distance("regression", traj[:, :1], ref[:1])
    assert dist_reg[1] > 1  # no centring for regression


def test_capacity_curve_is_the_least_squares_polynomial_of_each_degree():
    from linflow.reference import capacity_curve

    rng = np.random.default_rng(0)
    x, xt = rng.uniform(-1, 1, 70), rng.uniform(-1, 1, 30)
    f = lambda v: 1 + 3 * v**2  # noqa: E731
    y, yt = f(x) + 0.1 * rng.standard_normal(70), f(xt) + 0.1 * rng.standard_normal(30)
    degrees, train, test = capacity_curve(x, y, xt, yt, max_degree=6)
    assert degrees.tolist() == [1, 2, 3, 4, 5, 6]
    for k in (1, 3):  # the same numbers as np.polyfit in the plain powers
        coef = np.polyfit(x, y, k)
        assert train[k - 1] == pytest.approx(np.mean((np.polyval(coef, x) - y) ** 2), rel=1e-9)
        assert test[k - 1] == pytest.approx(np.mean((np.polyval(coef, xt) - yt) ** 2), rel=1e-9)
    assert train[0] > 0.5 and test[0] > 0.5  # degree 1 underfits the parabola ...
    assert train[1] < 0.012 and test[1] < 0.02  # ... degree 2 is at the noise (0.01)
    assert all(np.diff(train) <= 1e-12)  # more capacity never fits the train rows worse
    # The span of a polynomial ignores where x is centred and how it is scaled.
    again = capacity_curve((x - 0.3) / 0.57, y, (xt - 0.3) / 0.57, yt, max_degree=6)
    np.testing.assert_allclose(again[1], train, rtol=1e-9)
    np.testing.assert_allclose(again[2], test, rtol=1e-9)
