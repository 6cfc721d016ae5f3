import numpy as np
import pytest
import torch

from linflow.core.config import ClassificationTrain, RegressionTrain
from linflow.training import DivergenceError, fit, lr_stability_bound, make_engine


def _reg_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    y = X @ torch.tensor([2.0, -3.4]) + 4.2 + 0.01 * torch.randn(n, generator=g)
    return X, y


def _cfg(**kw):
    base = {"lr": 0.1, "batch_size": 10, "epochs": 30}
    base.update(kw)
    return RegressionTrain(**base)


def test_minibatch_sgd_recovers_d2l_weights():
    X, y = _reg_data()
    cfg = _cfg()
    res = fit(
        make_engine("torch", "regression", 2, 0, cfg), X[:150], y[:150], X[150:], y[150:], cfg
    )
    np.testing.assert_allclose(res.weight[0], [2.0, -3.4], atol=0.01)
    np.testing.assert_allclose(res.bias, [4.2], atol=0.01)
    assert [r["epoch"] for r in res.history] == list(range(1, 31))
    assert res.history[-1]["val_loss"] < 1e-3


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_training_is_deterministic(impl):
    X, y = _reg_data()
    cfg = _cfg(epochs=3)
    a = fit(make_engine(impl, "regression", 2, 0, cfg), X, y, X, y, cfg)
    b = fit(make_engine(impl, "regression", 2, 0, cfg), X, y, X, y, cfg)
    assert a.weight.tobytes() == b.weight.tobytes() and a.history == b.history


def test_early_stopping_restores_best_weights():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 20, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)  # noise labels: val loss rises as it overfits
    Xv, yv = torch.randn(60, 20, generator=g), torch.randint(0, 3, (60,), generator=g)
    cfg = ClassificationTrain(lr=0.5, batch_size=10, epochs=200, patience=3)
    engine = make_engine("torch", "classification", 20, 3, cfg)
    res = fit(engine, X, y, Xv, yv, cfg)
    assert res.stopped_early and res.epochs_run == res.best_epoch + 3 < 200
    best = min(r["val_loss"] for r in res.history)
    assert res.history[res.best_epoch - 1]["val_loss"] == best
    Z = Xv.double() @ torch.from_numpy(res.weight).double().T + torch.from_numpy(res.bias).double()
    restored = torch.nn.functional.cross_entropy(Z, yv).item()
    assert restored == pytest.approx(best, rel=1e-5)


def test_divergence_stops_with_clear_error():
    X, y = _reg_data()
    cfg = _cfg(lr=50.0)
    _, bound = lr_stability_bound(X.numpy())
    with pytest.raises(DivergenceError, match=r"at epoch \d+ with lr=50\.0.*2/lambda_max = 0\.\d+"):
        fit(make_engine("torch", "regression", 2, 0, cfg), X, y, X, y, cfg, lr_bound=bound)


def test_lr_bound_matches_hessian_of_mean_squared_loss():
    X = np.diag([1.0, 2.0]).repeat(2, axis=0)  # columns with different scales
    lam, bound = lr_stability_bound(X)
    Xa = np.hstack([X, np.ones((4, 1))])
    assert lam == pytest.approx(np.linalg.eigvalsh(2 / 4 * Xa.T @ Xa).max())
    assert bound == pytest.approx(2 / lam)


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_softmax_at_a_huge_lr_is_a_divergence_not_a_silent_bad_model(impl):
    """digits at lr 1000 once trained to loss ~1000 and accuracy 0.39 without a word."""
    from sklearn.datasets import load_digits

    from linflow.core.config import ClassificationTrain
    from linflow.core.errors import DivergenceError

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / np.maximum(X.std(0), 1e-9)).astype(np.float32)
    Xt, yt = torch.from_numpy(X[:1200]), torch.from_numpy(y[:1200].astype(np.int64))
    Xv, yv = torch.from_numpy(X[1200:]), torch.from_numpy(y[1200:].astype(np.int64))
    cfg = ClassificationTrain(lr=1000.0, batch_size=64, epochs=5)
    engine = make_engine(impl, "classification", 64, 10, cfg)
    with pytest.raises(
        DivergenceError,
        match=r"^training diverged: val loss grew to .* at epoch 1, over 10x its 2\.\d+ before training, with lr=1000\.0; lower lr$",
    ):
        fit(engine, Xt, yt, Xv, yv, cfg)
    ok = ClassificationTrain(lr=0.3, batch_size=64, epochs=5)  # the default lr trains fine
    fit(make_engine(impl, "classification", 64, 10, ok), Xt, yt, Xv, yv, ok)
