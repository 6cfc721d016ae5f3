"""The maths of streamed datasets: sums over chunks of rows (docs/streaming.md).

A streamed table never sits in memory whole: every stage sees it as chunks of
rows (Parquet row groups), and everything fitted or measured on it is a sum
over chunks in float64, merged in a fixed order, which is also what makes it
all-reducible across ``torchrun`` ranks:

- the split: each row's split from a hash of (seed, row position), so it does
  not depend on chunk sizes or file layout (:func:`split_codes`);
- the scaler's mean and variance: Chan's merge of chunk moments (:class:`Moments`);
- the exact regression reference: centred normal equations merged chunk by
  chunk, solved once (:class:`NormalSums`);
- the classification reference: L-BFGS on the same objective as
  LogisticRegression, one streamed pass per evaluation (:func:`fit_softmax_streamed`);
- test metrics, train objectives and agreement (:class:`MetricSums`).

Pure: arrays in, numbers out; the chunks come from the caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

__all__ = [
    "split_codes",
    "split_key",
    "Moments",
    "NormalSums",
    "MetricSums",
    "fit_softmax_streamed",
    "softmax_loss_grad",
]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def split_key(seed: int, dataset: str) -> int:
    """A 64-bit key from the seed and the dataset's name (stable across processes)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}/split/{dataset}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixed hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def split_codes(
    start: int, count: int, key: int, fractions: tuple[float, float, float]
) -> np.ndarray:
    """The split of rows [start, start + count): uint8 0 train, 1 val, 2 test.

    Row i goes by u = hash(key, i) / 2^64, uniform in [0, 1): train when u < train,
    val when u < train + val, test otherwise. Each row's split depends only on the
    key (seed, dataset) and its position in the table: not on chunk sizes, file
    layout or which process reads it. The split sizes are binomial around the
    fractions (a table of a million rows lands within ~0.1% of them).
    """
    pos = np.arange(start, start + count, dtype=np.uint64)
    h = _splitmix64(pos ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF))
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # [0, 1), 53 bits
    train, val, _ = fractions
    codes = np.full(count, 2, dtype=np.uint8)
    codes[u < train + val] = 1
    codes[u < train] = 0
    return codes


class Moments:
    """Count, mean and centred sum of squares per column, in float64, mergeable.

    Chan, Golub & LeVeque's pairwise update: merging (n_a, mean_a, M2_a) and
    (n_b, mean_b, M2_b) gives M2 = M2_a + M2_b + delta^2 n_a n_b / n, which keeps
    the variance accurate where the textbook sum(x^2) - n mean^2 cancels.
    """

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)

    def update(self, X: np.ndarray) -> None:
        if X.shape[0] == 0:
            return
        Xf = X.astype(np.float64)
        other = Moments(X.shape[1])
        other.n = X.shape[0]
        other.mean = Xf.mean(axis=0)
        other.m2 = ((Xf - other.mean) ** 2).sum(axis=0)
        self.merge(other)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.n = n

    def std(self) -> np.ndarray:
        """Population standard deviation (np.std's ddof 0), as the in-memory scaler."""
        return np.sqrt(self.m2 / self.n) if self.n else np.zeros_like(self.m2)


class NormalSums:
    """The regression normal equations, accumulated chunk by chunk in float64.

    Holds n, the means of x and y and the centred cross-products
    Cxx = sum (x - mean_x)(x - mean_x)^T, Cxy = sum (x - mean_x)(y - mean_y), merged
    as :class:`Moments` merges variances. The minimiser of
    mean((X w + b - y)^2) + (wd / 2)||w||^2 is then (Cxx + n wd / 2 I) w = Cxy,
    b = mean_y - mean_x w: the closed form of linflow.reference.fit_normal_equations.
    """

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mx = np.zeros(d)
        self.my = 0.0
        self.cxx = np.zeros((d, d))
        self.cxy = np.zeros(d)

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        if X.shape[0] == 0:
            return
        Xf, yf = X.astype(np.float64), y.astype(np.float64)
        part = NormalSums(X.shape[1])
        part.n = X.shape[0]
        part.mx, part.my = Xf.mean(axis=0), float(yf.mean())
        Xc, yc = Xf - part.mx, yf - part.my
        part.cxx, part.cxy = Xc.T @ Xc, Xc.T @ yc
        self.merge(part)

    def merge(self, other: NormalSums) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        f = self.n * other.n / n
        dx, dy = other.mx - self.mx, other.my - self.my
        self.cxx = self.cxx + other.cxx + f * np.outer(dx, dx)
        self.cxy = self.cxy + other.cxy + f * dx * dy
        self.mx = self.mx + dx * (other.n / n)
        self.my = self.my + dy * (other.n / n)
        self.n = n

    def as_array(self) -> np.ndarray:
        """Every field in one float64 vector (what ranks all-reduce); see from_array."""
        return np.concatenate([[self.n, self.my], self.mx, self.cxy, self.cxx.ravel()])

    @classmethod
    def from_array(cls, a: np.ndarray, d: int) -> NormalSums:
        s = cls(d)
        s.n, s.my = int(a[0]), float(a[1])
        s.mx, s.cxy = a[2 : 2 + d].copy(), a[2 + d : 2 + 2 * d].copy()
        s.cxx = a[2 + 2 * d :].reshape(d, d).copy()
        return s

    def solve(self, weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(W (1, d), b (1,)): the regression optimum. lstsq on the d x d system gives
        the minimum-norm solution when the centred features are rank-deficient."""
        d = self.mx.size
        A = self.cxx + (self.n * weight_decay / 2.0) * np.eye(d)
        w, *_ = np.linalg.lstsq(A, self.cxy, rcond=None)
        b = self.my - self.mx @ w
        return w.reshape(1, d), np.array([b])


def _log_softmax(Z: np.ndarray) -> np.ndarray:
    z = Z - Z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class MetricSums:
    """Test metrics, train objectives and agreement as sums over chunks (float64).

    ``add(X, y, outputs...)``: outputs are (n, k) float64 model outputs for the rows.
    Regression: squared and absolute errors and the sums behind R2 (via the
    mean-centred total of squares, merged as :class:`Moments` does);
    classification: correct predictions, cross-entropy, the confusion matrix.
    """

    def __init__(self, task: str, n_classes: int = 0) -> None:
        self.task, self.k = task, n_classes
        self.n = 0
        self.sse = self.sae = self.ce = 0.0
        self.correct = 0
        self.y = Moments(1)
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64) if n_classes else None

    def add(self, y: np.ndarray, Z: np.ndarray) -> None:
        self.n += y.shape[0]
        if self.task == "regression":
            yf = y.astype(np.float64)
            r = Z[:, 0] - yf
            self.sse += float(r @ r)
            self.sae += float(np.abs(r).sum())
            self.y.update(yf.reshape(-1, 1))
            return
        yi = y.astype(np.int64)
        pred = Z.argmax(axis=1)
        self.correct += int(np.count_nonzero(pred == yi))
        self.ce -= float(_log_softmax(Z)[np.arange(yi.size), yi].sum())
        self.confusion += np.bincount(yi * self.k + pred, minlength=self.k * self.k).reshape(
            self.k, self.k
        )

    def data_loss(self, loss: str) -> float:
        """The mean loss the model was trained on (mse, mae or cross-entropy)."""
        if loss == "cross_entropy":
            return self.ce / self.n
        return (self.sse if loss == "mse" else self.sae) / self.n

    def metrics(self) -> dict[str, float]:
        """The in-memory metric names: mse/rmse/mae/r2 or accuracy/cross_entropy."""
        if self.task == "regression":
            mse = self.sse / self.n
            ss_tot = float(self.y.m2[0])
            r2 = 1.0 - self.sse / ss_tot if ss_tot > 0 else float("nan")
            return {"mse": mse, "rmse": math.sqrt(mse), "mae": self.sae / self.n, "r2": r2}
        return {"accuracy": self.correct / self.n, "cross_entropy": self.ce / self.n}

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(axis=1)
        return [float(c / t) if t else float("nan") for c, t in zip(np.diag(self.confusion), totals, strict=True)]  # fmt: skip


def softmax_loss_grad(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(sum of cross-entropies, its gradient in W (k, d), in b (k,)) over rows X, y; float64."""
    Xf = X.astype(np.float64)
    Z = Xf @ W.T + b  # (n, k)
    logp = _log_softmax(Z)
    rows = np.arange(y.size)
    loss = -float(logp[rows, y].sum())
    P = np.exp(logp)
    P[rows, y] -= 1.0  # dCE/dZ
    return loss, P.T @ Xf, P.sum(axis=0)


def fit_softmax_streamed(
    passes: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    n: int,
    d: int,
    k: int,
    weight_decay: float,
    max_iter: int,
    tol: float,
    max_seconds: float | None = None,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool, str | None]:
    """The minimiser of J = mean CE + (wd / 2)||W||^2 (bias unpenalised) by L-BFGS.

    The objective of linflow.reference.fit_logistic_regression (scikit-learn's
    multinomial LogisticRegression with C matched to wd). `passes()` yields the
    train rows (X float32, y int labels) chunk by chunk: every evaluation of J and
    its gradient is one streamed pass in float64, ``reduce`` (all-reduce over ranks)
    summing the per-rank sums. Stops when max |grad J| <= tol * max(wd, 1/n) (the
    scale of scikit-learn's gradient test on C sum CE + ||W||^2 / 2, divided by C n),
    after `max_iter` iterations, or once `max_seconds` have passed.
    `sample` (rows held in memory, e.g. the first row groups): L-BFGS first solves the
    same objective on them, no pass over the table, and the streamed iterations start
    from that solution, near the optimum (the objective is strictly convex with wd > 0:
    the start changes how many passes it takes, not where it ends).
    Returns (W centred across classes (k, d), b centred (k,), streamed iterations,
    converged, stopped_by).
    """
    theta0 = np.zeros(k * d + k)
    if sample is not None and sample[0].shape[0]:
        Ws, bs, *_ = fit_softmax_streamed(
            lambda: [sample], sample[0].shape[0], d, k, weight_decay, max_iter, tol, max_seconds
        )
        theta0 = np.concatenate([Ws.ravel(), bs])
    from scipy.optimize import minimize

    size = k * d + k
    evals = [0]
    t0 = time.perf_counter()

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: k * d].reshape(k, d), theta[k * d :]
        acc = np.zeros(1 + size)
        for X, y in passes():
            loss, gW, gb = softmax_loss_grad(X, y, W, b)
            acc[0] += loss
            acc[1 : 1 + k * d] += gW.ravel()
            acc[1 + k * d :] += gb
        if reduce is not None:
            acc = reduce(acc)
        evals[0] += 1
        value = acc[0] / n + 0.5 * weight_decay * float(W.ravel() @ W.ravel())
        grad = acc[1:] / n
        grad[: k * d] += weight_decay * W.ravel()
        return value, grad

    gtol = tol * max(weight_decay, 1.0 / n)
    state = {"nit": 0, "stopped": None}

    def callback(intermediate_result) -> None:
        state["nit"] += 1
        seconds = time.perf_counter() - t0
        if on_progress is not None and state["nit"] % 10 == 0:
            on_progress(state["nit"], seconds)
        if max_seconds is not None and seconds > max_seconds:
            state["stopped"] = "max_seconds"
            raise StopIteration

    res = minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxiter": max_iter, "gtol": gtol, "ftol": 0.0, "maxcor": 20},
    )
    theta = res.x
    grad = fun(theta)[1]
    converged = bool(np.max(np.abs(grad)) <= gtol)
    stopped = None if converged else (state["stopped"] or "max_iter")
    W, b = theta[: k * d].reshape(k, d), theta[k * d :].copy()
    W = W - W.mean(axis=0, keepdims=True)
    b = b - b.mean()
    return W, b, int(res.nit), converged, stopped


def chunked(
    X: np.ndarray, y: np.ndarray, rows: int = 1 << 16
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-memory arrays as chunks of `rows` rows (the streamed maths on a table that fits)."""
    for start in range(0, X.shape[0], rows):
        yield X[start : start + rows], y[start : start + rows]


def _outputs(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return X.astype(np.float64) @ np.asarray(W, dtype=np.float64).T + np.asarray(b, dtype=np.float64)  # fmt: skip


def objective_streamed(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    task: str,
    k: int,
    models: list[tuple[np.ndarray, np.ndarray]],
    loss: str,
    weight_decay: float,
    l1: float = 0.0,
) -> list[tuple[float, float]]:
    """(data loss, objective) of each model in one pass: linflow.reference.objective
    summed over chunks."""
    sums = [MetricSums(task, k) for _ in models]
    for X, y in chunks:
        for s, (W, b) in zip(sums, models, strict=True):
            s.add(y, _outputs(X, W, b))
    out = []
    for s, (W, _) in zip(sums, models, strict=True):
        value = s.data_loss(loss)
        W = np.asarray(W, dtype=np.float64)
        out.append((value, value + 0.5 * weight_decay * float(np.sum(W**2)) + l1 * float(np.sum(np.abs(W)))))  # fmt: skip
    return out


def test_streamed(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    task: str,
    k: int,
    models: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[dict[str, float]], float | None]:
    """(test metrics of each model, share of rows where the first two predict the same
    class (classification) or None), in one pass."""
    sums = [MetricSums(task, k) for _ in models]
    same = n = 0
    for X, y in chunks:
        outs = [_outputs(X, W, b) for W, b in models]
        for s, Z in zip(sums, outs, strict=True):
            s.add(y, Z)
        if task == "classification" and len(outs) > 1:
            same += int(np.count_nonzero(outs[0].argmax(axis=1) == outs[1].argmax(axis=1)))
            n += y.shape[0]
    return [s.metrics() for s in sums], (same / n if n else None)
