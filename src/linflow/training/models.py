"""LinearRegression and SoftmaxRegression: thin wrappers over ``nn.Linear``.

The weight layout is ``(n_outputs, n_features)`` everywhere (nn.Linear,
scikit-learn's ``coef_``, our saved files), so weights compare without
transposes. Models carry what is needed to rebuild them (task and sizes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearRegression", "SoftmaxRegression", "build_model", "init_params"]


def init_params(n_outputs: int, n_features: int, seed: int, dtype=torch.float32):
    """d2l's initialisation: W ~ N(0, 0.01^2), b = 0. Returns (W, b)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.normal(0.0, 0.01, (n_outputs, n_features), generator=g, dtype=torch.float64)
    return W.to(dtype), torch.zeros(n_outputs, dtype=dtype)  # (k, d), (k,)


class LinearRegression(nn.Module):
    """y_hat = X w^T + b for X of shape (n, d); returns shape (n,)."""

    task = "regression"

    def __init__(self, n_features: int):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X).squeeze(-1)  # (n,)


class SoftmaxRegression(nn.Module):
    """Logits X W^T + b for X of shape (n, d); returns shape (n, k).

    Softmax itself lives in the loss (cross-entropy on logits, log-sum-exp stable).
    """

    task = "classification"

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X)  # (n, k)


def build_model(task: str, n_features: int, n_classes: int, seed: int, dtype=torch.float32):
    """The model for `task`, initialised reproducibly from `seed`."""
    if task == "regression":
        model = LinearRegression(n_features)
        k = 1
    else:
        model = SoftmaxRegression(n_features, n_classes)
        k = n_classes
    W, b = init_params(k, n_features, seed, dtype)
    model = model.to(dtype)
    with torch.no_grad():
        model.linear.weight.copy_(W)
        model.linear.bias.copy_(b)
    return model
