"""Gradient descent on plain functions: the step-size lesson without any data.

The course minimises f(x) = 2x² and f(x, y, z) = x² + y² + z² by hand (numpy,
the gradient written out) and with torch autograd, and shows that too large a
step diverges. For a quadratic f(x) = ½ xᵀAx the update x ← x − lr·Ax scales
the component along each eigenvector of A by (1 − lr·λ): descent converges iff
|1 − lr·λ| < 1 for every λ, i.e. lr < 2/λ_max (the same bound as
``training.lr_stability_bound`` for least squares).

Pure: no files, no MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FUNCTIONS", "Quadratic", "descend_numpy", "descend_torch", "torch_function"]


@dataclass(frozen=True)
class Quadratic:
    """f(x) = Σ_i c_i x_i² (a diagonal quadratic): Hessian diag(2c), λ_max = 2 max(c)."""

    name: str
    coef: tuple[float, ...]

    def value(self, x: np.ndarray) -> float:
        return float(np.dot(self.coef, np.asarray(x, dtype=np.float64) ** 2))

    def grad(self, x: np.ndarray) -> np.ndarray:
        """∇f = 2 c ⊙ x, written out (no autograd)."""
        return 2.0 * np.asarray(self.coef) * x

    @property
    def lambda_max(self) -> float:
        return 2.0 * max(self.coef)

    @property
    def lr_bound(self) -> float:
        """Gradient descent converges for lr < 2 / λ_max and diverges above it."""
        return 2.0 / self.lambda_max


# The course's two functions, by the name params.yaml uses.
FUNCTIONS = {
    "2x^2": Quadratic("2x^2", (2.0,)),
    "x^2+y^2+z^2": Quadratic("x^2+y^2+z^2", (1.0, 1.0, 1.0)),
}


def descend_numpy(f: Quadratic, start: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """x_0 = start, x_{k+1} = x_k − lr ∇f(x_k) with the hand-written gradient.

    Returns the trajectory (steps + 1, dim), float64. A diverging run is returned
    as it went (values grow by |1 − lr λ_max| per step), not stopped: that is the lesson.
    """
    x = np.array(start, dtype=np.float64)
    path = [x.copy()]
    for _ in range(steps):
        x = x - lr * f.grad(x)
        path.append(x.copy())
    return np.stack(path)


def descend_torch(
    fn: Callable, start: np.ndarray, lr: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same descent with the gradient from torch autograd (float64).

    fn maps a tensor x (dim,) to a scalar tensor. Returns (trajectory
    (steps + 1, dim), values (steps + 1,)).
    """
    import torch

    x = torch.tensor(np.asarray(start, dtype=np.float64), requires_grad=True)
    path, values = [x.detach().clone()], []
    for _ in range(steps):
        y = fn(x)
        values.append(float(y.detach()))
        (g,) = torch.autograd.grad(y, x)
        with torch.no_grad():
            x -= lr * g
        path.append(x.detach().clone())
    values.append(float(fn(x).detach()))
    return torch.stack(path).numpy(), np.array(values)


def torch_function(f: Quadratic) -> Callable:
    """f as torch operations, for autograd: Σ c_i x_i²."""
    import torch

    coef = torch.tensor(f.coef, dtype=torch.float64)
    return lambda x: (coef * x * x).sum()
