"""The classical solutions a trained model is checked against, and the checks.

Every reference minimises the model's own training objective on the same
(standardised) train split, so "how far is SGD from the optimum" has an exact
answer. With ``wd`` the weight decay (torch SGD style, on W only; see
``linflow.training.scratch``) the objectives are::

    regression      J(W, b) = mean((X W^T + b - y)^2) + (wd / 2) ||W||^2 [+ l1 ||W||_1]
    classification  J(W, b) = mean(-log softmax(X W^T + b)_y) + (wd / 2) ||W||^2

- Regression: the normal-equation solution (least squares on the centred
  data, solved by SVD-based lstsq, never an explicit inverse), scikit-learn's
  ``LinearRegression`` and ``Ridge`` with ``alpha`` mapped from ``wd``; with an
  L1 penalty, scikit-learn's ``Lasso`` (``ElasticNet`` with ``wd``) instead.
- Classification: scikit-learn's multinomial ``LogisticRegression`` (lbfgs)
  with ``C`` mapped from ``wd``; it must converge.

Softmax weights are defined only up to adding the same vector to every class
row (the probabilities do not change), so classification weights are compared
after centring each feature's weights across classes.

Pure: arrays in, arrays and dicts out; no files, no MLflow. Weights use the
layout ``W (n_outputs, n_features)``, ``b (n_outputs,)`` everywhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from linflow.core.errors import ToleranceError
from linflow.metrics import log_softmax, predict_linear, regression_metrics

__all__ = [
    "capacity_curve",
    "ToleranceError",
    "ReferenceFit",
    "ridge_alpha",
    "logistic_C",
    "fit_normal_equations",
    "fit_sklearn_linear",
    "fit_sklearn_ridge",
    "lasso_alpha",
    "fit_sklearn_lasso",
    "fit_logistic_regression",
    "centre_softmax",
    "relative_l2",
    "objective",
    "split_metrics",
    "compare_to_reference",
    "gap_values",
    "check_tolerances",
    "failure_message",
    "why_a_gap",
    "trajectory_distance",
]


@dataclass(frozen=True)
class ReferenceFit:
    """A fitted reference: W (k, d), b (k,), and solver facts."""

    weight: np.ndarray
    bias: np.ndarray
    n_iter: int | None = None
    converged: bool = True
    stopped_by: str | None = None  # "max_iter" or "max_seconds" when not converged
    precision: str | None = None  # the arithmetic an iterative fit ran in


# --- the weight-decay mappings --------------------------------------------------


def ridge_alpha(n_train: int, weight_decay: float) -> float:
    """Ridge's alpha for our regression objective.

    Ridge minimises ``||y - X w - b||^2 + alpha ||w||^2`` (a sum over rows, the
    intercept unpenalised). Multiplying J by n (which does not move the minimiser):
    ``n J = ||y - X w - b||^2 + (n wd / 2) ||w||^2``, hence ``alpha = n wd / 2``.
    """
    return n_train * weight_decay / 2.0


def logistic_C(n_train: int, weight_decay: float, n_classes: int) -> float:
    """LogisticRegression's C for our classification objective (math.inf: no penalty).

    scikit-learn's lbfgs objective (sklearn/linear_model/_logistic.py, 1.8+) is
    ``C * sum_i CE_i + (1/2) ||W||^2`` with the intercept unpenalised. Dividing
    by C n: ``mean CE + (1 / (2 C n)) ||W||^2``, equal to J when
    ``1 / (C n) = wd``, i.e. ``C = 1 / (n wd)``.

    Two classes are special: scikit-learn then fits one binary weight vector
    v = w_1 - w_0 with penalty ``(1/2) ||v||^2``, while our penalty at the
    (centred) optimum W = [-v/2, v/2] is ``(wd / 2) ||v||^2 / 2``; matching gives
    ``C = 2 / (n wd)``.
    """
    if weight_decay == 0:
        return math.inf  # sklearn >= 1.8 spells penalty=None as C=np.inf
    factor = 2.0 if n_classes == 2 else 1.0
    return factor / (n_train * weight_decay)


# --- regression references ------------------------------------------------------


def _f64(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)


def fit_normal_equations(X: np.ndarray, y: np.ndarray, weight_decay: float = 0.0) -> ReferenceFit:
    """The minimiser of the regression objective J, exactly.

    X : ndarray of shape (n_samples, n_features); y : ndarray of shape (n_samples,).

    The bias is unpenalised, so it drops out after centring: b = mean(y) - mean(X) w.
    The normal equations (Xc^T Xc + alpha I) w = Xc^T yc are solved as the least-squares
    problem ``|| [Xc; sqrt(alpha) I] w - [yc; 0] ||^2`` by lstsq (SVD): no explicit
    inverse, no squared condition number, and the minimum-norm solution when Xc is
    rank-deficient.
    """
    X, y = _f64(X, y)
    n, d = X.shape
    x_mean, y_mean = X.mean(axis=0), y.mean()
    Xc, yc = X - x_mean, y - y_mean  # (n, d), (n,)
    alpha = ridge_alpha(n, weight_decay)
    if alpha > 0:
        Xc = np.vstack([Xc, math.sqrt(alpha) * np.eye(d)])  # (n + d, d)
        yc = np.concatenate([yc, np.zeros(d)])
    w, *_ = np.linalg.lstsq(Xc, yc, rcond=None)  # (d,)
    b = y_mean - x_mean @ w
    return ReferenceFit(w.reshape(1, d), np.array([b]))


def fit_sklearn_linear(X: np.ndarray, y: np.ndarray) -> ReferenceFit:
    """scikit-learn's ordinary least squares (no weight decay)."""
    from sklearn.linear_model import LinearRegression

    X, y = _f64(X, y)
    model = LinearRegression().fit(X, y)
    return ReferenceFit(model.coef_.reshape(1, -1), np.atleast_1d(model.intercept_))


def fit_sklearn_ridge(X: np.ndarray, y: np.ndarray, weight_decay: float) -> ReferenceFit:
    """scikit-learn's Ridge with alpha = n wd / 2 (see ridge_alpha)."""
    from sklearn.linear_model import Ridge

    X, y = _f64(X, y)
    model = Ridge(alpha=ridge_alpha(X.shape[0], weight_decay), solver="svd").fit(X, y)
    return ReferenceFit(model.coef_.reshape(1, -1), np.atleast_1d(model.intercept_))


def lasso_alpha(weight_decay: float, l1: float) -> tuple[float, float]:
    """(alpha, l1_ratio) of scikit-learn's ElasticNet for our objective with L1.

    ElasticNet minimises ``(1/2n) ||y - X w - b||^2 + alpha rho ||w||_1 +
    (alpha (1 - rho) / 2) ||w||^2``; half of our J with L1,
    ``(1/2n) ||r||^2 + (wd / 4) ||w||^2 + (l1 / 2) ||w||_1``, matches it with
    ``alpha rho = l1 / 2`` and ``alpha (1 - rho) = wd / 2``. rho = 1 is Lasso.
    """
    alpha = (l1 + weight_decay) / 2.0
    return alpha, (l1 / (l1 + weight_decay) if alpha > 0 else 1.0)


def fit_sklearn_lasso(
    X: np.ndarray, y: np.ndarray, weight_decay: float, l1: float, max_iter: int = 100_000
) -> ReferenceFit:
    """scikit-learn's Lasso (ElasticNet with weight decay) on our L1 objective.

    Coordinate descent to a duality gap of 1e-12 (relative to ||y||^2 / n):
    compare holds SGD to 1e-3 of it, so it must be far tighter than that.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet, Lasso

    X, y = _f64(X, y)
    alpha, rho = lasso_alpha(weight_decay, l1)
    model = (
        Lasso(alpha=alpha, tol=1e-12, max_iter=max_iter)
        if rho == 1.0
        else ElasticNet(alpha=alpha, l1_ratio=rho, tol=1e-12, max_iter=max_iter)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return ReferenceFit(
        model.coef_.reshape(1, -1),
        np.atleast_1d(model.intercept_),
        n_iter=int(model.n_iter_),
        converged=converged,
        stopped_by=None if converged else "max_iter",
    )


# --- classification reference ---------------------------------------------------


CHUNK = 400  # lbfgs iterations per call: more than any default fit needs (digits 52, fashion 203)


def fit_logistic_regression(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    weight_decay: float,
    max_iter: int,
    tol: float,
    max_seconds: float | None = None,
    on_progress=None,
) -> ReferenceFit:
    """scikit-learn's multinomial LogisticRegression (lbfgs), L2 matched to wd.

    X (n, d), y (n,) int labels in [0, n_classes), every class present.
    Returns centred softmax weights W (n_classes, d), b (n_classes,).

    Float32 first: the features are float32 (what the model sees), and each lbfgs
    iteration is two passes over X, bound by memory bandwidth, so float32 halves
    its cost (Fashion-MNIST: 263 iterations in 13 s vs 295 in 30 s at tol 1e-5).
    Float64 has the last word: the fit resumes in float64, on X as given, from
    where float32 stopped, whether float32 ran out of precision (a call that ends
    short of its iteration limit unconverged: no step the float32 loss can tell
    from the last) or says it converged (lbfgs also says so when the float32 loss
    stops changing); that call takes 0 iterations when the float64 gradient is
    already within tol. ``precision`` records which ran.

    Bounded: lbfgs runs in calls of CHUNK iterations (``warm_start``: each call
    resumes from the last weights), and stops after `max_iter` iterations or the
    first call that ends past `max_seconds`; ``on_progress(iterations, seconds)``
    hears about each call that did not converge. Unbounded (every default fit),
    it is one plain LogisticRegression fit on the centred float32 features, then
    one warm-started fit on the same features in float64.
    ``converged`` is False, and ``stopped_by`` says which bound stopped it, when
    lbfgs raised a ConvergenceWarning in the last call (the warnings themselves
    are swallowed: the caller decides what a non-converged reference means).
    Unpenalised (weight_decay 0) fits of separable classes have no finite
    optimum and end so.
    """
    import time

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=np.int64)
    present = np.unique(y)
    if present.size != n_classes or (present != np.arange(n_classes)).any():
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        raise ValueError(f"every class must occur in the train split; missing {missing}")
    model = LogisticRegression(
        C=logistic_C(X.shape[0], weight_decay, n_classes),
        solver="lbfgs",
        max_iter=min(CHUNK, max_iter),
        tol=tol,
        warm_start=True,
    )
    # Fit on centred features: the intercept is unpenalised, so x.W + b = (x - mu).W
    # + (b + mu.W) is the same model and the optimum W is unchanged, while lbfgs
    # converges much faster without the mean direction (Fashion-MNIST pixels: 135
    # iterations / 17 s instead of 224 / 30 s at tol 1e-4).
    mu = np.asarray(X.mean(axis=0, dtype=np.float64), dtype=np.float32)  # (d,)
    Xc = np.array(X, dtype=np.float32)  # (n, d), our own copy: centred in place
    Xc -= mu
    t0, total, stopped_by, in_float64 = time.monotonic(), 0, None, None
    while True:
        model.max_iter = min(CHUNK, max_iter - total)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(Xc, y)
        done = int(np.max(model.n_iter_))
        total += done
        if in_float64 is not None:
            in_float64 += done
        converged = True
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                converged = False
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if in_float64 is None and (converged or done < model.max_iter) and total < max_iter:
            # float32 is done: converged (or its loss stopped changing), or out of precision
            Xc, in_float64 = X.astype(np.float64), 0  # one new copy, centred in place
            Xc -= mu.astype(np.float64)
            continue
        if converged:
            break
        elapsed = time.monotonic() - t0
        if total >= max_iter:
            stopped_by = "max_iter"
        elif max_seconds is not None and elapsed >= max_seconds:
            stopped_by = "max_seconds"
        if on_progress is not None:
            on_progress(total, elapsed)
        if stopped_by:
            break
    precision = "float32, then float64" if in_float64 else "float32"
    del Xc
    W = np.asarray(model.coef_, dtype=np.float64)
    b = np.asarray(model.intercept_, dtype=np.float64) - W @ mu.astype(np.float64)
    if n_classes == 2:  # one binary vector v = w_1 - w_0 -> softmax rows [-v/2, v/2]
        W, b = np.vstack([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    W, b = centre_softmax(W, b)
    return ReferenceFit(
        W, b, n_iter=total, converged=converged, stopped_by=stopped_by, precision=precision
    )


def centre_softmax(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each feature's mean over classes: W (k, d), b (k,) -> same shapes.

    softmax(z + c) = softmax(z), so this representative changes no prediction.
    """
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return W - W.mean(axis=0, keepdims=True), b - b.mean()


# --- measures -------------------------------------------------------------------


def relative_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| (Frobenius); the plain distance when ref is 0."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    dist = float(np.linalg.norm(a - ref))
    norm = float(np.linalg.norm(ref))
    return dist / norm if norm > 0 else dist


def objective(
    X: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    loss: str,
    weight_decay: float,
    l1: float = 0.0,
) -> tuple[float, float]:
    """(data loss, data loss + (wd / 2) ||W||^2 + l1 ||W||_1) in float64 on (X, y)."""
    Z = predict_linear(X, W, b)  # (n, k)
    if loss == "cross_entropy":
        y = np.asarray(y, dtype=np.int64)
        value = float(-np.mean(log_softmax(Z)[np.arange(y.size), y]))
    else:
        r = Z[:, 0] - np.asarray(y, dtype=np.float64)  # (n,)
        value = float(np.mean(r * r)) if loss == "mse" else float(np.mean(np.abs(r)))
    W = np.asarray(W, dtype=np.float64)
    penalty = 0.5 * weight_decay * float(np.sum(W**2)) + l1 * float(np.sum(np.abs(W)))
    return value, value + penalty


def split_metrics(task: str, X: np.ndarray, y: np.ndarray, W, b) -> dict[str, float]:
    """Regression: mse/rmse/mae/r2; classification: accuracy/cross_entropy."""
    Z = predict_linear(X, W, b)  # (n, k)
    if task == "regression":
        return regression_metrics(y, Z[:, 0])
    y = np.asarray(y, dtype=np.int64)
    return {
        "accuracy": float(np.mean(Z.argmax(axis=1) == y)),
        "cross_entropy": float(-np.mean(log_softmax(Z)[np.arange(y.size), y])),
    }


def _comparable(task: str, W, b) -> tuple[np.ndarray, np.ndarray]:
    if task == "classification":
        return centre_softmax(W, b)
    return np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)


def compare_to_reference(
    task: str,
    loss: str,
    weight_decay: float,
    ours: tuple[np.ndarray, np.ndarray],
    ref: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    l1: float = 0.0,
) -> dict:
    """Every gap between our (W, b) and the reference's, as a JSON-ready dict.

    ours/ref: (W (k, d), b (k,)); train/test: (X (n, d), y (n,)).
    Gaps are ours minus reference; weights are compared after centring for softmax.
    """
    _check_shapes(task, ours, ref)
    objectives = (
        objective(*train, *ours, loss, weight_decay, l1),
        objective(*train, *ref, loss, weight_decay, l1),
    )
    metrics = (split_metrics(task, *test, *ours), split_metrics(task, *test, *ref))
    agreement = None
    if task == "classification":
        X_test = test[0]
        same = predict_linear(X_test, *ours).argmax(axis=1) == predict_linear(X_test, *ref).argmax(
            axis=1
        )
        agreement = float(np.mean(same))
    return _gap_doc(task, ours, ref, objectives, metrics, agreement)


def compare_streamed(
    task: str,
    loss: str,
    weight_decay: float,
    ours: tuple[np.ndarray, np.ndarray],
    ref: tuple[np.ndarray, np.ndarray],
    train: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    test: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    k: int,
    l1: float = 0.0,
) -> dict:
    """compare_to_reference's document, with train and test streamed (one pass each):
    the same keys, the same gaps, as sums over chunks (linflow.streaming)."""
    from linflow.streaming import objective_streamed, test_streamed

    _check_shapes(task, ours, ref)
    objectives = objective_streamed(train(), task, k, [ours, ref], loss, weight_decay, l1)
    metrics, agreement = test_streamed(test(), task, k, [ours, ref])
    return _gap_doc(task, ours, ref, objectives, metrics, agreement)


def _check_shapes(task: str, ours, ref) -> None:
    W, Wr = _comparable(task, *ours)[0], _comparable(task, *ref)[0]
    if W.shape != Wr.shape:
        raise ValueError(f"weight shapes differ: ours {W.shape}, reference {Wr.shape}")


def _gap_doc(task: str, ours, ref, objectives, metrics, agreement: float | None) -> dict:
    """The compare document from ((loss, objective) of ours and the reference on the
    train split, (their test metrics), the test agreement of their classes)."""
    W, b = _comparable(task, *ours)
    Wr, br = _comparable(task, *ref)
    (loss_ours, obj_ours), (loss_ref, obj_ref) = objectives
    gap = obj_ours - obj_ref
    # Relative to the optimum's objective; an exact fit (objective 0) allows no gap.
    rel_gap = gap / obj_ref if obj_ref > 0 else (0.0 if gap == 0 else math.inf)
    m_ours, m_ref = metrics
    out = {
        "weight_rel_l2": relative_l2(W, Wr),
        "bias_abs_diff": float(np.max(np.abs(b - br))),
        "train_loss": {"ours": loss_ours, "reference": loss_ref, "gap": loss_ours - loss_ref},
        "train_objective": {
            "ours": obj_ours,
            "reference": obj_ref,
            "gap": gap,
            "rel_gap": rel_gap,
        },
        "test": {
            "ours": m_ours,
            "reference": m_ref,
            "delta": {k: m_ours[k] - m_ref[k] for k in m_ours},
        },
    }
    if task == "classification":
        out["agreement"] = agreement
    return out


# --- tolerances -----------------------------------------------------------------


def gap_values(result: Mapping) -> dict[str, float]:
    """The checkable numbers of a compare result, by the names tolerances use."""
    values = {
        "weight_rel_l2": result["weight_rel_l2"],
        "train_objective_rel_gap": result["train_objective"]["rel_gap"],
    }
    for k, v in result["test"]["delta"].items():
        values[f"test_{k}_delta"] = abs(v)
    if "agreement" in result:
        values["agreement"] = result["agreement"]
    return values


def check_tolerances(
    values: Mapping[str, float], tolerances: Mapping[str, float | None]
) -> dict[str, dict]:
    """One check per tolerance: ``min_<name>`` is a lower bound, any other key an upper one.

    A None tolerance reports the value without checking it (passed: None).
    """
    checks: dict[str, dict] = {}
    for key, tol in tolerances.items():
        lower = key.startswith("min_")
        name = key[4:] if lower else key
        value = values[name]
        if tol is None:
            passed = None
        elif not math.isfinite(value):
            passed = False
        else:
            passed = bool(value >= tol) if lower else bool(value <= tol)
        checks[name] = {
            "value": value,
            "tolerance": tol,
            "bound": "min" if lower else "max",
            "key": key,
            "passed": passed,
        }
    return checks


def failure_message(dataset: str, task: str, checks: Mapping[str, dict], train_cfg) -> str | None:
    """One line naming each failed gap, its tolerance and why it is there; None if all pass."""
    failed = [(n, c) for n, c in checks.items() if c["passed"] is False]
    if not failed:
        return None
    parts = []
    for name, c in failed:
        where = "is below" if c["bound"] == "min" else "exceeds"
        parts.append(
            f"{name} = {c['value']:.3g} {where} compare.{task}.{c['key']} = {c['tolerance']:g}"
        )
    now = f"epochs={train_cfg.epochs}, lr={train_cfg.lr:g}, batch_size={train_cfg.batch_size}"
    if train_cfg.patience:
        now += f", patience={train_cfg.patience} (early stopping)"
    return (
        f"{dataset} is further from the reference than allowed: {'; '.join(parts)}; "
        f"{why_a_gap(train_cfg)} (now train.{task}: {now})"
    )


def why_a_gap(train_cfg) -> str:
    """Why SGD with these settings is expected to land where it did, in a few words."""
    if getattr(train_cfg, "loss", None) == "mae":
        return (
            "loss mae: the least-squares reference is not the optimum of the MAE objective "
            "(it has no closed form), so a gap is expected"
        )
    if getattr(train_cfg, "dropout", 0.0):
        return (
            f"input dropout {train_cfg.dropout:g}: training minimises the loss under dropped "
            "inputs, which for a linear model adds a data-dependent L2 penalty (Wager et al. "
            "2013), not the reference's objective, so a gap is expected"
        )
    if train_cfg.patience:
        return "early stopping halts before the optimum of the train objective by design"
    if (
        train_cfg.batch_size != "full"
        and getattr(train_cfg, "lr_schedule", "constant") == "constant"
    ):
        return (
            "minibatch SGD at a constant lr keeps jittering around the optimum, so a gap is "
            "expected; full batch, a smaller lr or lr_schedule cosine get closer"
        )
    return "not at the optimum yet: try more epochs, a smaller lr or full batch"


def capacity_curve(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, max_degree: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(degrees, train MSE, test MSE) of the least-squares polynomial in one feature,
    degree 1..max_degree: d2l 4.4's training and test error against model capacity.

    A polynomial's span does not depend on where x is centred or how it is scaled, so
    the feature may be x or the standardised x. Fitted in the Legendre basis over the
    train range (the plain powers are nearly collinear: lambda_min/lambda_max ~ 6e-7
    at degree 8), in float64.
    """
    x, x_test = np.asarray(x, np.float64).ravel(), np.asarray(x_test, np.float64).ravel()
    y, y_test = np.asarray(y, np.float64).ravel(), np.asarray(y_test, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    half = (hi - lo) / 2 or 1.0
    u, u_test = (x - lo) / half - 1, (x_test - lo) / half - 1  # train range -> [-1, 1]
    degrees = np.arange(1, max_degree + 1)
    train_mse, test_mse = np.empty(max_degree), np.empty(max_degree)
    for i, k in enumerate(degrees):
        A = np.polynomial.legendre.legvander(u, int(k))  # (n, k + 1): the bias is P_0
        coef = np.linalg.lstsq(A, y, rcond=None)[0]
        train_mse[i] = np.mean((A @ coef - y) ** 2)
        test_mse[i] = np.mean(
            (np.polynomial.legendre.legvander(u_test, int(k)) @ coef - y_test) ** 2
        )
    return degrees, train_mse, test_mse


def trajectory_distance(task: str, weights: np.ndarray, ref_weight: np.ndarray) -> np.ndarray:
    """||W_e - W*|| / ||W*|| for every recorded epoch e: weights (E, k, d) -> (E,)."""
    Wr = _comparable(task, ref_weight, np.zeros(ref_weight.shape[0]))[0]
    norm = float(np.linalg.norm(Wr)) or 1.0
    W = np.asarray(weights, dtype=np.float64)  # (E, k, d)
    if task == "classification":
        W = W - W.mean(axis=1, keepdims=True)
    return np.linalg.norm((W - Wr).reshape(W.shape[0], -1), axis=1) / norm  # (E,)
