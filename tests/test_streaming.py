"""The streaming maths and batch scheme (linflow.streaming, linflow.training.stream).

Against the in-memory code on the same rows: the split does not depend on chunking,
merged moments and normal equations equal the whole-array ones, a split held in one
buffer trains exactly as ``fit`` on arrays, and the streamed references agree with
today's (regression weights to 1e-6 relative; classification agreement >= 0.999 and
objective within 1e-6 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linflow import reference, streaming
from linflow.training import fit, make_engine
from linflow.training.stream import StreamBatches


def test_split_codes_do_not_depend_on_chunks():
    key = streaming.split_key(0, "big")
    whole = streaming.split_codes(0, 10_000, key, (0.7, 0.15, 0.15))
    parts = [streaming.split_codes(s, c, key, (0.7, 0.15, 0.15)) for s, c in ((0, 3), (3, 4_000), (4_003, 5_997))]  # fmt: skip
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    shares = np.bincount(whole, minlength=3) / whole.size
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.015)
    other = streaming.split_codes(0, 10_000, streaming.split_key(1, "big"), (0.7, 0.15, 0.15))
    assert np.mean(other != whole) > 0.3  # another seed, another split


def test_moments_and_normal_sums_merge_to_the_whole():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(5_000, 6)) * [1, 10, 100, 1e3, 1e4, 1e-3] + 1e4).astype(np.float32)
    y = (X.astype(np.float64) @ rng.normal(size=6) + 3.0).astype(np.float32)
    m, s = streaming.Moments(6), streaming.NormalSums(6)
    for start in range(0, 5_000, 777):
        m.update(X[start : start + 777])
        s.update(X[start : start + 777], y[start : start + 777])
    Xf = X.astype(np.float64)
    np.testing.assert_allclose(m.mean, Xf.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.std(), Xf.std(axis=0), rtol=1e-10)
    Z = (Xf - Xf.mean(axis=0)) / Xf.std(axis=0)
    for wd in (0.0, 0.1):
        part = streaming.NormalSums(6)
        for start in range(0, 5_000, 1_000):
            part.update(Z[start : start + 1_000], y[start : start + 1_000])
        W, b = part.solve(wd)
        ref = reference.fit_normal_equations(Z, y, wd)
        assert reference.relative_l2(W, ref.weight) < 1e-6
        assert abs(b[0] - ref.bias[0]) < 1e-6 * abs(ref.bias[0])
    again = streaming.NormalSums.from_array(s.as_array(), 6)
    np.testing.assert_array_equal(again.cxx, s.cxx)
    assert again.n == s.n == 5_000


def _cfg(**kw):
    from linflow.core.config import ClassificationTrain, RegressionTrain

    task = kw.pop("task", "classification")
    base = ClassificationTrain() if task == "classification" else RegressionTrain()
    return base.model_copy(update=kw)


def _data(task: str, n: int = 3_000, d: int = 5, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    if task == "classification":
        y = np.argmax(X @ rng.normal(size=(d, k)) + rng.normal(size=(n, k)), axis=1)
    else:
        y = (X @ rng.normal(size=d) + 1.0 + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


def _train(task, X, y, Xv, yv, cfg, stream=None):
    k = int(y.max()) + 1 if task == "classification" else 1
    engine = make_engine("torch", task, X.shape[1], k, cfg)
    target = torch.int64 if task == "classification" else torch.float32

    def t(a, dt=torch.float32):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dt)

    Xt, yt = (None, None) if stream else (t(X), t(y, target))
    return fit(engine, Xt, yt, t(Xv), t(yv, target), cfg, stream=stream)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_split_in_one_buffer_trains_as_in_memory(task):
    """Chunks of 700 rows, all in one buffer: the in-memory permutation, batches and
    weights (the full batch: its mean as a sum over chunks, rounding apart)."""
    X, y = _data(task)
    Xv, yv = _data(task, 500, seed=1)
    cfg = _cfg(task=task, epochs=4, batch_size=64, lr=0.1) if task == "classification" else _cfg(task=task, epochs=20)  # fmt: skip
    bounds = list(range(0, X.shape[0], 700)) + [X.shape[0]]
    counts = np.diff(bounds)

    def read(c):
        return X[bounds[c] : bounds[c + 1]], y[bounds[c] : bounds[c + 1]]

    target = torch.int64 if task == "classification" else torch.float32
    stream = StreamBatches(counts, read, cfg.batch_size, cfg.seed, buffer_rows=10**9, target=target)
    ours = _train(task, X, y, Xv, yv, cfg, stream)
    whole = _train(task, X, y, Xv, yv, cfg)
    if task == "classification":
        np.testing.assert_array_equal(ours.weight, whole.weight)
        assert [r["val_loss"] for r in ours.history] == [r["val_loss"] for r in whole.history]
    else:
        assert reference.relative_l2(ours.weight, whole.weight) < 1e-6


def test_a_small_buffer_sees_every_row_once_per_epoch():
    X = np.arange(1_000, dtype=np.float32).reshape(-1, 1)
    y = np.arange(1_000)
    counts = np.array([100, 0, 250, 300, 350])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    stream = StreamBatches(
        counts, lambda c: (X[bounds[c] : bounds[c + 1]], y[bounds[c] : bounds[c + 1]]),
        64, 0, buffer_rows=300, target=torch.int64,
    )  # fmt: skip
    for _ in range(2):
        seen = torch.cat([yb for _, yb in stream.batches()]).numpy()
        np.testing.assert_array_equal(np.sort(seen), y)
    sizes = [yb.numel() for _, yb in stream.batches()]
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 64 <= sizes[-1] < 128


def test_simulated_ranks_concatenate_rank_batches():
    """One process replaying 2 ranks: global batch k = rank 0's batch k + rank 1's."""
    X = np.arange(2_000, dtype=np.float32).reshape(-1, 1)
    y = np.arange(2_000)
    counts = np.full(8, 250)

    def read(c):
        return X[c * 250 : (c + 1) * 250], y[c * 250 : (c + 1) * 250]

    def make(**kw):
        return StreamBatches(counts, read, 100, 3, buffer_rows=400, target=torch.int64, **kw)

    sim = [yb.numpy() for _, yb in make(world=2, simulate=True).batches()]
    ranks = [[yb.numpy() for _, yb in make(world=2, rank=r).batches()] for r in (0, 1)]
    assert len(sim) == len(ranks[0]) == len(ranks[1]) == 20  # 1000 rows a rank, 50 a batch
    for k, batch in enumerate(sim):
        np.testing.assert_array_equal(batch, np.concatenate([ranks[0][k], ranks[1][k]]))
    assert not set(np.concatenate(ranks[0])) & set(np.concatenate(ranks[1]))


def test_streamed_softmax_reference_agrees_with_logistic_regression():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1)).astype(np.float32)
    Xtr, ytr, Xte = X[:1_200], y[:1_200], X[1_200:]
    wd = 1e-3
    ref = reference.fit_logistic_regression(Xtr, ytr, 10, wd, 5_000, 1e-6)
    W, b, nit, converged, _ = streaming.fit_softmax_streamed(
        lambda: streaming.chunked(Xtr, ytr, 300), 1_200, 64, 10, wd, 5_000, 1e-6
    )
    assert converged and nit > 10
    _, j_ref = reference.objective(Xtr, ytr, ref.weight, ref.bias, "cross_entropy", wd)
    _, j_ours = reference.objective(Xtr, ytr, W, b, "cross_entropy", wd)
    assert abs(j_ours - j_ref) / j_ref < 1e-6
    same = np.mean((Xte @ W.T + b).argmax(1) == (Xte @ ref.weight.T + ref.bias).argmax(1))
    assert same >= 0.999
