"""Linear and softmax regression from scratch: forward, loss, hand-written
gradients and the SGD update, with no autograd anywhere on this path.

Conventions match torch exactly, so both implementations produce the same
parameters from the same batches (the gradient check in the tests):

- squared loss  L = mean((y_hat - y)^2)         dL/dW = (2/n) r^T X, r = y_hat - y
- absolute loss L = mean(|y_hat - y|)           dL/dW = (1/n) sign(r)^T X
- cross-entropy L = mean(-log softmax(z)_y)     dL/dW = ((p - onehot(y)) / n)^T X
- weight decay as torch.optim.SGD(weight_decay=wd) on W only (not the bias):
  W <- W - lr (dL/dW + wd W), b <- b - lr dL/db,
  i.e. minimising L + (wd / 2) ||W||^2.
"""

from __future__ import annotations

import torch

__all__ = ["forward", "loss_and_grads", "sgd_step", "ScratchEngine"]


def forward(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """X (n, d), W (k, d), b (k,) -> outputs (n, k)."""
    return torch.addmm(b, X, W.T)  # (n, k)


def log_softmax(Z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax by log-sum-exp: finite for logits of +-1000."""
    m = Z.amax(dim=1, keepdim=True)  # (n, 1)
    Z = Z - m
    return Z - Z.exp().sum(dim=1, keepdim=True).log()  # (n, k)


def loss_and_grads(
    X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data loss (without weight decay) and its gradients (dW (k, d), db (k,))."""
    n = X.shape[0]
    Z = forward(X, W, b)  # (n, k)
    if loss == "cross_entropy":
        logp = log_softmax(Z)  # (n, k)
        value = -logp.gather(1, y.view(-1, 1)).mean()
        G = logp.exp()  # p, (n, k)
        G[torch.arange(n), y] -= 1.0  # p - onehot(y)
        G /= n
    else:
        r = Z.squeeze(1) - y  # (n,)
        if loss == "mse":
            value = (r * r).mean()
            G = (2.0 / n) * r.view(-1, 1)  # (n, 1)
        elif loss == "mae":
            value = r.abs().mean()
            G = r.sign().view(-1, 1) / n  # (n, 1)
        else:
            raise ValueError(f"unknown loss {loss!r}")
    dW = G.T @ X  # (k, d)
    db = G.sum(dim=0)  # (k,)
    return value, dW, db


def sgd_step(W, b, dW, db, lr: float, weight_decay: float) -> None:
    """In place: W -= lr (dW + wd W); b -= lr db."""
    if weight_decay:
        dW = dW.add(W, alpha=weight_decay)
    W.sub_(dW, alpha=lr)
    b.sub_(db, alpha=lr)


class ScratchEngine:
    """The training engine for impl: scratch (same interface as TorchEngine)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, loss: str, lr: float, weight_decay: float):
        self.W, self.b = W.clone(), b.clone()
        self.loss, self.lr, self.weight_decay = loss, lr, weight_decay

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    @torch.no_grad()
    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value, dW, db = loss_and_grads(X, y, self.W, self.b, self.loss)
        sgd_step(self.W, self.b, dW, db, self.lr, self.weight_decay)
        return value

    @torch.no_grad()
    def outputs(self, X: torch.Tensor) -> torch.Tensor:
        return forward(X, self.W, self.b)  # (n, k)

    def get_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W.clone(), self.b.clone()

    def set_params(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.W.copy_(W)
        self.b.copy_(b)
