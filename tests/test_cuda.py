"""The GPU path (train.device: cuda), checked where a CUDA GPU exists.

Skipped without one (the CPU-only CI); run on a GPU machine with
``pytest tests/test_cuda.py``. Without a GPU, ``device: cuda`` is a one-line
config error (tests/stages/test_stage_train.py).

Stated tolerance: a GPU run and a CPU run from the same seed take the same
batches (the permutation is drawn on the CPU) and differ by float32 rounding
only, amplified by SGD: their weights agree to 1e-4 relatively (L2) and their
losses to 1e-4 after a few epochs. A graph-replayed epoch equals an eager GPU
epoch bit for bit.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from linflow.training import fit, make_engine
from linflow.training import loop as loop_module

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _deterministic():
    if torch.cuda.is_available():
        from linflow.training.cuda import deterministic

        deterministic()


def _cfg(**kw):
    base = dict(
        impl="scratch", loss="cross_entropy", lr=0.1, batch_size=256, epochs=3,
        weight_decay=5e-4, momentum=0.0, patience=0, seed=0, lr_schedule="constant",
    )  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def _images(n=5000, d=784, k=10, seed=0):
    """Fashion-MNIST-shaped data: n is not a multiple of 256, so the last batch
    carries the folded remainder (a batch of a different shape)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, d, generator=g)
    X = torch.randn(n, d, generator=g)
    y = (X @ W.T + 3 * torch.randn(n, k, generator=g)).argmax(dim=1)
    return X, y


def _fit(device, cfg, X, y, task="classification", k=10):
    dev = torch.device(device)
    engine = make_engine(cfg.impl, task, X.shape[1], k, cfg, device=dev)
    Xd, yd = X.to(dev), y.to(dev)
    return engine, fit(engine, Xd, yd, Xd[:1000], yd[:1000], cfg)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@cuda
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_the_engines_parameters_live_on_the_gpu(impl):
    engine = make_engine(impl, "classification", 784, 10, _cfg(impl=impl), device="cuda")
    params = engine.model.parameters() if impl == "torch" else (engine.W, engine.b)
    assert all(p.device.type == "cuda" for p in params)


@cuda
@pytest.mark.parametrize("impl", ["torch", "scratch"])
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gpu_and_cpu_runs_agree_within_the_stated_tolerance(impl, schedule, momentum):
    X, y = _images()
    cfg = _cfg(impl=impl, lr_schedule=schedule, momentum=momentum)
    _, cpu = _fit("cpu", cfg, X, y)
    _, gpu = _fit("cuda", cfg, X, y)
    assert _rel(gpu.weight, cpu.weight) < TOL and _rel(gpu.bias, cpu.bias) < TOL
    for a, b in zip(gpu.history, cpu.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=TOL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=TOL)


@cuda
@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regression_on_the_gpu_agrees_with_the_cpu(loss):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3000, 8, generator=g)
    y = X @ torch.arange(1.0, 9.0) + 0.1 * torch.randn(3000, generator=g)
    cfg = _cfg(loss=loss, lr=0.01, batch_size=64, epochs=4)
    _, cpu = _fit("cpu", cfg, X, y, "regression", 0)
    _, gpu = _fit("cuda", cfg, X, y, "regression", 0)
    assert _rel(gpu.weight, cpu.weight) < TOL


@cuda
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])  # 0.9: Fashion-MNIST's recipe
def test_a_graph_epoch_equals_an_eager_gpu_epoch_bit_for_bit(monkeypatch, schedule, momentum):
    X, y = _images()
    cfg = _cfg(lr_schedule=schedule, epochs=4, momentum=momentum)
    captured = []
    real = loop_module.EpochGraph

    def spy(*a, **kw):
        captured.append(real(*a, **kw))
        return captured[-1]

    monkeypatch.setattr(loop_module, "EpochGraph", spy)
    _, graphed = _fit("cuda", cfg, X, y)
    assert len(captured) == 1  # captured once, replayed every epoch (the lr is a device scalar)
    monkeypatch.setattr(loop_module, "graph_capturable", lambda *a: False)
    _, eager = _fit("cuda", cfg, X, y)
    assert graphed.weight.tobytes() == eager.weight.tobytes()
    assert graphed.history == eager.history


@cuda
def test_early_stopping_restores_the_best_weights_on_the_gpu():
    X, y = _images()
    cfg = _cfg(epochs=12, patience=2)
    dev = torch.device("cuda")
    engine = make_engine(cfg.impl, "classification", X.shape[1], 10, cfg, device=dev)
    Xd, yd = X.to(dev), y.to(dev)
    # Validation labels that are noise: the more the model learns, the worse its
    # validation loss, so training stops early and the best weights come back.
    noise = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(5)).to(dev)
    res = fit(engine, Xd, yd, Xd[:1000], noise, cfg, record_every=1)
    assert res.stopped_early and res.best_epoch < res.epochs_run
    assert engine.W.device.type == "cuda"
    at_best = list(res.trajectory_epoch).index(res.best_epoch)
    assert res.weight.tobytes() == res.trajectory_weight[at_best].tobytes()
