"""The hand-written gradients against autograd (micrograd's test, in float64).

The scratch engine and the torch engine get identical batches and must end with
the same parameters; a central finite difference checks loss_and_grads
directly; extreme logits must stay finite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linflow.core.config import ClassificationTrain, RegressionTrain
from linflow.training import TorchEngine, fit, make_engine
from linflow.training.scratch import ScratchEngine, forward, log_softmax, loss_and_grads, sgd_step

CASES = [("regression", "mse"), ("regression", "mae"), ("classification", "cross_entropy")]
N, D, K = 48, 5, 4


def make_data(task: str, seed: int = 0, n: int = N, d: int = D, k: int = K):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)  # (n, d)
    if task == "regression":
        w = torch.randn(d, generator=g, dtype=torch.float64)
        y = X @ w + 0.5 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)  # (n,)
    else:
        y = torch.randint(0, k, (n,), generator=g)  # (n,) int64
    return X, y


def make_cfg(task: str, loss: str, **kw):
    base = dict(loss=loss, lr=0.1, batch_size=8, epochs=5, weight_decay=0.05, seed=3)
    base.update(kw)
    return RegressionTrain(**base) if task == "regression" else ClassificationTrain(**base)


def engines(task: str, loss: str, cfg, k: int = K):
    n_classes = k if task == "classification" else 0
    torch_engine = make_engine("torch", task, D, n_classes, cfg, dtype=torch.float64)
    scratch_engine = make_engine("scratch", task, D, n_classes, cfg, dtype=torch.float64)
    assert isinstance(torch_engine, TorchEngine)
    assert isinstance(scratch_engine, ScratchEngine)
    return torch_engine, scratch_engine


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["sgd", "momentum"])
@pytest.mark.parametrize(("task", "loss"), CASES)
def test_scratch_and_torch_agree_step_by_step(task, loss, momentum):
    X, y = make_data(task)
    cfg = make_cfg(task, loss, momentum=momentum)
    torch_engine, scratch_engine = engines(task, loss, cfg)
    W0, _ = scratch_engine.get_params()
    g = torch.Generator().manual_seed(1)
    for _ in range(12):  # identical random batches of 8 rows
        idx = torch.randint(0, N, (8,), generator=g)
        loss_t = torch_engine.step(X[idx], y[idx])
        loss_s = scratch_engine.step(X[idx], y[idx])
        assert float(loss_s) == pytest.approx(float(loss_t), rel=1e-12, abs=1e-12)
    Wt, bt = torch_engine.get_params()
    Ws, bs = scratch_engine.get_params()
    assert Wt.dtype == Ws.dtype == torch.float64
    assert not torch.equal(Ws, W0)  # it trained
    torch.testing.assert_close(Ws, Wt, rtol=0, atol=1e-6)
    torch.testing.assert_close(bs, bt, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("task", "loss"), CASES)
def test_scratch_and_torch_agree_through_fit(task, loss):
    """The whole loop: same seed -> same permutation -> same minibatches -> same parameters."""
    X, y = make_data(task)
    Xv, yv = make_data(task, seed=9, n=16)
    cfg = make_cfg(task, loss, epochs=6)
    torch_engine, scratch_engine = engines(task, loss, cfg)
    rt = fit(torch_engine, X, y, Xv, yv, cfg)
    rs = fit(scratch_engine, X, y, Xv, yv, cfg)
    np.testing.assert_allclose(rs.weight, rt.weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rs.bias, rt.bias, rtol=0, atol=1e-6)
    for a, b in zip(rs.history, rt.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)


def test_weight_decay_is_applied_to_weights_not_bias():
    W = torch.ones(2, 3, dtype=torch.float64)
    b = torch.ones(2, dtype=torch.float64)
    sgd_step(W, b, torch.zeros_like(W), torch.zeros_like(b), lr=0.5, weight_decay=0.2)
    torch.testing.assert_close(W, torch.full((2, 3), 0.9, dtype=torch.float64))
    torch.testing.assert_close(b, torch.ones(2, dtype=torch.float64))


def test_scratch_engine_needs_no_autograd():
    """Under inference_mode autograd cannot run: scratch trains, torch's engine cannot."""
    X, y = make_data("classification")
    cfg = make_cfg("classification", "cross_entropy")
    torch_engine, scratch_engine = engines("classification", "cross_entropy", cfg)
    with torch.inference_mode():
        scratch_engine.step(X[:8], y[:8])
        with pytest.raises(RuntimeError):
            torch_engine.step(X[:8], y[:8])


def numeric_grads(X, y, W, b, loss, h=1e-6):
    """Central differences of the data loss w.r.t. every entry of W and b."""
    grads = []
    for P in (W, b):
        G = torch.zeros_like(P)
        flat, gflat = P.view(-1), G.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + h
            up = float(loss_and_grads(X, y, W, b, loss)[0])
            flat[i] = old - h
            down = float(loss_and_grads(X, y, W, b, loss)[0])
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        grads.append(G)
    return grads


@pytest.mark.parametrize(("task", "loss"), CASES)
def test_gradients_match_finite_differences(task, loss):
    X, y = make_data(task, n=20)
    k = K if task == "classification" else 1
    g = torch.Generator().manual_seed(5)
    W = torch.randn(k, D, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    _, dW, db = loss_and_grads(X, y, W, b, loss)
    nW, nb = numeric_grads(X, y, W, b, loss)
    torch.testing.assert_close(dW, nW, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(db, nb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("task", "loss"), CASES)
def test_gradients_match_autograd(task, loss):
    X, y = make_data(task, n=20)
    k = K if task == "classification" else 1
    W = torch.randn(k, D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True)
    Z = X @ W.T + b  # (n, k)
    ref = {
        "mse": lambda: F.mse_loss(Z.squeeze(1), y),
        "mae": lambda: F.l1_loss(Z.squeeze(1), y),
        "cross_entropy": lambda: F.cross_entropy(Z, y),
    }[loss]()
    ref.backward()
    value, dW, db = loss_and_grads(X, y, W.detach(), b.detach(), loss)
    assert float(value) == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(dW, W.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(db, b.grad, rtol=1e-10, atol=1e-12)


def test_logits_of_plus_minus_1000_give_finite_loss_and_gradients():
    X = torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)  # (3, 1)
    W = torch.tensor([[1000.0], [-1000.0], [0.0]], dtype=torch.float64)  # logits +-1000
    b = torch.zeros(3, dtype=torch.float64)
    y = torch.tensor([1, 1, 0])  # rows 0 and 2 get a hopeless class: loss ~2000
    Z = forward(X, W, b)
    assert Z.abs().max() == 1000
    value, dW, db = loss_and_grads(X, y, W, b, "cross_entropy")
    assert torch.isfinite(log_softmax(Z)).all()
    assert torch.isfinite(value) and torch.isfinite(dW).all() and torch.isfinite(db).all()
    assert float(value) == pytest.approx(float(F.cross_entropy(Z, y)), rel=1e-12)
    assert float(value) == pytest.approx(2000 / 3, rel=1e-9)
    # float32, where a naive exp(1000) is inf
    value32, dW32, _ = loss_and_grads(X.float(), y, W.float(), b.float(), "cross_entropy")
    assert torch.isfinite(value32) and torch.isfinite(dW32).all()


@pytest.mark.parametrize("batch_size", [8, "full"])
@pytest.mark.parametrize(("task", "loss"), [CASES[0], CASES[2]])
def test_input_dropout_masks_training_identically_for_both_engines(task, loss, batch_size):
    """Both engines see the same masked batches (fit draws the masks); the masks
    change the fit, evaluation stays unmasked, and a seed repeats it exactly."""
    X, y = make_data(task)
    Xv, yv = make_data(task, seed=1)
    cfg = make_cfg(task, loss, dropout=0.3, batch_size=batch_size)
    torch_engine, scratch_engine = engines(task, loss, cfg)
    a = fit(torch_engine, X, y, Xv, yv, cfg)
    b = fit(scratch_engine, X, y, Xv, yv, cfg)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-9, atol=1e-12)
    again = fit(engines(task, loss, cfg)[1], X, y, Xv, yv, cfg)
    np.testing.assert_array_equal(again.weight, b.weight)
    plain = fit(engines(task, loss, cfg)[1], X, y, Xv, yv, cfg.model_copy(update={"dropout": 0.0}))
    assert np.abs(plain.weight - b.weight).max() > 1e-3  # the masks did something
    # the reported val loss is the unmasked model's on clean inputs
    engine = engines(task, loss, cfg)[1]
    engine.set_params(torch.from_numpy(b.weight), torch.from_numpy(b.bias))
    from linflow.training.loop import _val_scores

    assert _val_scores(engine, Xv, yv, loss)[0] == pytest.approx(b.history[-1]["val_loss"])


def test_augment_flips_half_the_batch_and_shifts_it_with_zero_fill():
    from linflow.training.loop import _Augment

    cfg = make_cfg("classification", "cross_entropy", flip=True, shift=2)
    aug = _Augment(cfg, 16, torch.device("cpu"))  # 4x4 images
    X = torch.arange(4 * 16, dtype=torch.float64).reshape(4, 16) + 1  # no zero pixel

    def batch(a):  # as fit gathers one: rows of the pool, then the rest
        return a(a.pool(X).index_select(0, a.rows(torch.arange(4), 4)))

    out = batch(aug).view(4, 4, 4)
    # The first half mirrored, then every row the same shift of its image.
    src = X.view(4, 4, 4).clone()
    src[:2] = src[:2].flip(2)
    shifts = [
        (dy, dx)
        for dy in range(-2, 3)
        for dx in range(-2, 3)
        if torch.equal(out, _shifted(src, dy, dx))
    ]
    assert len(shifts) == 1  # one (dy, dx) for the whole batch, in [-2, 2]
    # Seeded: the same config draws the same shifts; off, it is the identity.
    a, b = _Augment(cfg, 16, torch.device("cpu")), _Augment(cfg, 16, torch.device("cpu"))
    assert all(torch.equal(batch(a), batch(b)) for _ in range(5))
    off = _Augment(make_cfg("classification", "cross_entropy"), 16, torch.device("cpu"))
    assert off(X) is X and off.pool(X) is X and not off.active
    with pytest.raises(ValueError, match="square images: 15 features"):
        _Augment(cfg, 15, torch.device("cpu"))


def _shifted(src, dy, dx):
    s = src.shape[1]
    out = torch.zeros_like(src)
    for i in range(s):
        for j in range(s):
            if 0 <= i - dy < s and 0 <= j - dx < s:
                out[:, i, j] = src[:, i - dy, j - dx]
    return out


@pytest.mark.parametrize("batch_size", [8, "full"])
@pytest.mark.parametrize(
    ("task", "loss", "augment"),
    [
        ("regression", "mse", {"noise": 0.3}),
        ("classification", "cross_entropy", {"flip": True, "shift": 1, "noise": 0.1}),
    ],
    ids=["noise", "images"],
)
def test_augmentation_reaches_both_engines_alike_and_only_the_train_rows(
    task, loss, augment, batch_size
):
    X, y = make_data(task, d=16)
    Xv, yv = make_data(task, seed=1, d=16)
    cfg = make_cfg(task, loss, batch_size=batch_size, **augment)

    def pair(c):
        n_classes = K if task == "classification" else 0
        return [
            make_engine(i, task, 16, n_classes, c, dtype=torch.float64)
            for i in ("torch", "scratch")
        ]

    a, b = (fit(e, X, y, Xv, yv, cfg) for e in pair(cfg))
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-9, atol=1e-12)
    again = fit(pair(cfg)[1], X, y, Xv, yv, cfg)
    np.testing.assert_array_equal(again.weight, b.weight)  # seeded
    off = cfg.model_copy(update=dict.fromkeys(augment, 0))
    plain = fit(pair(off)[1], X, y, Xv, yv, off)
    assert np.abs(plain.weight - b.weight).max() > 1e-3  # it did something
    from linflow.training.loop import _val_scores

    engine = pair(cfg)[1]
    engine.set_params(torch.from_numpy(b.weight), torch.from_numpy(b.bias))
    assert _val_scores(engine, Xv, yv, loss)[0] == pytest.approx(b.history[-1]["val_loss"])
