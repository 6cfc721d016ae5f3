"""Generated regression data: the y = 3x + 1 line and d2l's synthetic_data."""

from __future__ import annotations

import numpy as np

from linflow.datasets import RawData

# The line's ground truth g: y = slope * g(x) + intercept + noise. Only 'linear' is
# linear in x; the others make degree 1 too simple a model (the underfitting lesson).
TRUTHS = {
    "linear": lambda x: x,
    "quadratic": lambda x: x**2,
    "cubic": lambda x: x**3,
    "sine": lambda x: np.sin(np.pi * x),
}


def make_line(cfg, rng: np.random.Generator) -> RawData:
    """y = slope * g(x) + intercept + N(0, noise^2), x ~ U(x_min, x_max), n points,
    g(x) = x unless ``truth`` says otherwise (TRUTHS).

    Features x, x^2, ..., x^degree (degree 1: x alone): a polynomial model that is
    still linear in its weights, for the capacity lesson. The powers are taken in
    float64 before the cast, so degree 1 is the same bytes as plain x.
    """
    x = rng.uniform(cfg.x_min, cfg.x_max, size=cfg.n)  # (n,)
    y = cfg.slope * TRUTHS[cfg.truth](x) + cfg.intercept + cfg.noise * rng.standard_normal(cfg.n)
    powers = np.arange(1, cfg.degree + 1)  # (degree,)
    return RawData(
        task="regression",
        X=(x[:, None] ** powers).astype(np.float32),  # (n, degree)
        y=y.astype(np.float32),
        feature_names=["x", *(f"x^{k}" for k in powers[1:])],
    )


def make_synthetic(cfg, rng: np.random.Generator) -> RawData:
    """d2l's synthetic_data: X ~ N(0, 1) of shape (n, len(w)), y = X w + b + noise."""
    w = np.asarray(cfg.w, dtype=np.float64)  # (d,)
    X = rng.standard_normal((cfg.n, w.size))  # (n, d)
    y = X @ w + cfg.b + cfg.noise * rng.standard_normal(cfg.n)  # (n,)
    return RawData(
        task="regression",
        X=X.astype(np.float32),
        y=y.astype(np.float32),
        feature_names=[f"x{i}" for i in range(w.size)],
    )
