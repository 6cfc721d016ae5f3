"""Minibatch SGD over tensors held in memory, with early stopping and guards.

Batches are slices of a seeded permutation (``torch.randperm`` +
``index_select``): no per-sample Dataset/DataLoader in the hot loop. The same
loop drives two engines that must agree to ~1e-6 from the same batches:
``TorchEngine`` (nn.Linear + loss + torch.optim.SGD, autograd) and
``linflow.training.scratch.ScratchEngine`` (hand-written gradients).

Pure: no files, no argv, no MLflow. Per-epoch progress goes to ``on_epoch``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from linflow.core.errors import DivergenceError
from linflow.training.cuda import EpochGraph, graph_capturable
from linflow.training.models import build_model
from linflow.training.scratch import ScratchEngine, log_softmax

__all__ = [
    "DivergenceError",
    "TrainResult",
    "fit",
    "batch_starts",
    "bound_name",
    "lr_at",
    "lr_stability_bound",
    "make_engine",
]


@dataclass
class TrainResult:
    weight: np.ndarray  # (k, d)
    bias: np.ndarray  # (k,)
    history: list[dict[str, float]]  # one row per epoch: epoch, train_loss, val_loss, val_<metric>
    best_epoch: int
    stopped_early: bool
    seconds_per_epoch: list[float] = field(default_factory=list)
    # With record_every: the parameters at epochs 0 (initial), r, 2r, ... and the last.
    trajectory_epoch: np.ndarray | None = None  # (m,)
    trajectory_weight: np.ndarray | None = None  # (m, k, d)
    trajectory_bias: np.ndarray | None = None  # (m, k)

    @property
    def epochs_run(self) -> int:
        return len(self.history)


_LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "cross_entropy": F.cross_entropy}
BLOWUP = 10.0  # a validation loss this many times its value before training = diverged


class TorchEngine:
    """impl: torch — nn.Linear, a torch loss, autograd and torch.optim.SGD."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss: str,
        lr: float,
        weight_decay: float,
        momentum: float = 0.0,
    ):
        self.model = model
        self.loss_fn = _LOSSES[loss]
        # Data-parallel ranks: called on the parameters after every backward pass
        # (all-reduce of their gradients: linflow.training.distributed); None: one process.
        self.sync: Callable[[list[torch.Tensor], bool], None] | None = None
        self.squeeze = model.task == "regression"
        lin = model.linear
        # Weight decay on the weights only: the bias (intercept) is not shrunk,
        # as in Ridge and LogisticRegression.
        self.opt = torch.optim.SGD(
            [
                {"params": [lin.weight], "weight_decay": weight_decay},
                {"params": [lin.bias], "weight_decay": 0.0},
            ],
            lr=lr,
            momentum=momentum,
        )

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(X), y)
        loss.backward()
        if self.sync is not None:
            self.sync(self.params, True)  # each rank's mean: the global mean is their average
        self.opt.step()
        return loss.detach()

    @property
    def params(self) -> list[torch.Tensor]:
        lin = self.model.linear
        return [lin.weight, lin.bias]

    def accumulate(self, X: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
        """Add the gradient of (sum of the rows' losses) / n to the parameters' .grad
        (a full-batch gradient over chunks of n rows in all); returns that sum."""
        loss = self.loss_fn(self.model(X), y, reduction="sum")
        (loss / n).backward()
        return loss.detach()

    def apply(self) -> None:
        """One step with the accumulated gradient (all-reduced first), then clear it."""
        if self.sync is not None:
            self.sync(self.params, False)  # sums over each rank's rows / n: add them
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def outputs(self, X: torch.Tensor) -> torch.Tensor:
        return self.model.linear(X)  # (n, k)

    @property
    def weight(self) -> torch.Tensor:
        """The live weight tensor W (k, d), for in-place proximal steps."""
        return self.model.linear.weight.data

    def get_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        lin = self.model.linear
        return lin.weight.detach().clone(), lin.bias.detach().clone()

    @torch.no_grad()
    def set_params(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.model.linear.weight.copy_(W)
        self.model.linear.bias.copy_(b)


def make_engine(
    impl: str, task: str, n_features: int, n_classes: int, cfg, dtype=torch.float32, device="cpu"
):
    """The engine for `impl`, with parameters initialised from cfg.seed on the CPU
    (the same numbers on every device) and then moved to `device`."""
    model = build_model(task, n_features, n_classes, cfg.seed, dtype).to(device)
    if impl == "torch":
        return TorchEngine(model, cfg.loss, cfg.lr, cfg.weight_decay, cfg.momentum)
    W, b = model.linear.weight.detach(), model.linear.bias.detach()
    return ScratchEngine(W, b, cfg.loss, cfg.lr, cfg.weight_decay, cfg.momentum)


def _val_scores(engine, X: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float]:
    """(validation loss, validation metric: rmse for regression, accuracy otherwise)."""
    Z = engine.outputs(X)  # (n, k)
    if loss == "cross_entropy":
        value = -log_softmax(Z).gather(1, y.view(-1, 1)).mean()
        return float(value), float((Z.argmax(dim=1) == y).double().mean())
    r = Z.squeeze(1) - y
    value = (r * r).mean() if loss == "mse" else r.abs().mean()
    return float(value), float((r * r).mean().sqrt())


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Boundaries of an epoch's minibatches: batch i is rows [starts[i], starts[i+1]).

    n // batch_size batches; a remainder of r < batch_size rows is folded into the
    last one (batch_size + r rows) rather than stepped on its own: a 2-row batch at
    full lr right before evaluation (d2l's Fashion-MNIST, 49410 rows at 256) is a
    step with ~100x the gradient noise of the others and swung validation accuracy
    by 0.64-0.80 between epochs. Every row is still seen exactly once per epoch.
    """
    nb = max(1, n // batch_size)
    return [i * batch_size for i in range(nb)] + [n]


def lr_at(cfg, epoch: int) -> float:
    """The learning rate of `epoch` (1-based) under cfg.lr_schedule."""
    if getattr(cfg, "lr_schedule", "constant") == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    return cfg.lr


GRAM_F32_ENTRIES = 1_000_000  # lr_stability_bound: above this many entries of X, a float32 Gram


def bound_name(momentum: float = 0.0) -> str:
    """How lr_stability_bound's bound is written in messages."""
    return "2(1+momentum)/lambda_max" if momentum else "2/lambda_max"


def lr_stability_bound(
    X: np.ndarray,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    *,
    loss: str = "mse",
    n_classes: int = 0,
) -> tuple[float, float]:
    """(lambda_max, 2 (1 + momentum) / lambda_max) of the loss Hessian on X (n, d).

    Full-batch gradient descent on a quadratic is stable for lr < 2 / lambda_max
    (heavy-ball momentum m: lr < 2 (1 + m) / lambda_max); on a smooth loss that is
    the bound near a point, with lambda_max of the Hessian there.

    - loss 'mse': L(w, b) = mean((X w + b - y)^2) + (wd/2)||w||^2 has the Hessian
      (2/n) [X 1]^T [X 1] + wd diag(1..1, 0) everywhere.
    - loss 'cross_entropy' with K = n_classes: the Hessian of the mean softmax
      cross-entropy is (1/n) sum_i (diag(p_i) - p_i p_i^T) kron x_i x_i^T (x with a 1
      for the bias), plus the decay. At the start of training (weights ~0, every
      p_i uniform) diag(p) - p p^T = (I - 1 1^T / K) / K, so lambda_max is that of
      [X 1]^T [X 1] / (n K) + wd diag(1..1, 0): the bound at the first step. Later
      the curvature follows p; it never exceeds that of [X 1]^T [X 1] / (2n)
      (Boehning 1992), a global bound K/2 times smaller (0.036 on Fashion-MNIST,
      where lr 0.5 still trains: cross-entropy flattens as predictions sharpen).
    """
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"no curvature bound for loss {loss!r}")
    n, d = X.shape
    # The Gram matrix in float64, or in float32 for a large float32 set: Fashion-MNIST's
    # 49410 x 785 then takes 0.75 s instead of 2.8 s, the same lambda_max to 5e-8.
    dtype = np.float32 if X.dtype == np.float32 and n * d > GRAM_F32_ENTRIES else np.float64
    Xa = np.hstack([X.astype(dtype), np.ones((n, 1), dtype)])  # (n, d+1)
    scale = 2.0 if loss == "mse" else 1.0 / n_classes
    H = (scale / n) * (Xa.T @ Xa).astype(np.float64)
    H[np.arange(d), np.arange(d)] += weight_decay
    lam = float(np.linalg.eigvalsh(H)[-1])
    return lam, 2.0 * (1.0 + momentum) / lam


@torch.no_grad()
def soft_threshold_(W: torch.Tensor, t: float) -> None:
    """In place: W <- sign(W) max(|W| - t, 0), the proximal step of t ||W||_1.

    After each gradient step on the smooth part (loss + L2) this is proximal
    gradient descent (ISTA), which reaches the Lasso optimum, exact zeros
    included; a subgradient of |w| would only make weights jitter around 0.
    """
    W.copy_(W.sign() * (W.abs() - t).clamp_(min=0.0))


class _InputDropout:
    """x -> x * mask / (1 - p), mask ~ Bernoulli(1 - p) per entry, fresh per call.

    The masks come from their own generator (seeded by cfg.seed, apart from the
    shuffle's), drawn on the CPU like the permutation, so both engines and every
    device see the same masked batches. p = 0 is the identity: no draw, no copy.
    """

    def __init__(self, p: float, seed: int, device: torch.device) -> None:
        self.p, self.device = float(p), device
        self.gen = torch.Generator().manual_seed(seed + 0x5EED) if self.p else None

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        if not self.p:
            return X
        keep = torch.rand(X.shape, generator=self.gen) >= self.p  # (rows, d) on the CPU
        return X * (keep.to(self.device, X.dtype) / (1.0 - self.p))


class _Augment:
    """Data augmentation of the training batches (never of validation rows).

    - noise: X + N(0, noise^2) per entry, fresh per batch;
    - flip: the first half of every batch mirrored left-right (rows of square images,
      side = sqrt(d)); a batch is a random draw of the shuffled split, so each image
      is flipped in about half of the epochs. The mirrored split is made once
      (``pool``: the split and its mirror image, 2x its memory) and a batch takes
      its first half from the mirror in the same row gather: flipping costs a batch
      nothing (a flip per batch cost ~25 us of its ~330 us, Fashion-MNIST at 256);
    - shift: the whole batch moved by (dy, dx), each uniform in [-shift, shift]
      pixels, zero fill (one shift per batch: a per-row shift gathers every pixel).

    Draws come from a generator of their own (cfg.seed, apart from the shuffle's and
    dropout's), on the CPU: both engines and every device see the same batches. Off
    (all zero) it is the identity, with no draw and no copy.
    """

    def __init__(self, cfg, n_features: int, device: torch.device) -> None:
        self.noise = float(getattr(cfg, "noise", 0.0))
        self.flip = bool(getattr(cfg, "flip", False))
        self.shift = int(getattr(cfg, "shift", 0))
        self.active = bool(self.noise or self.flip or self.shift)
        self.device = device
        self.gen = torch.Generator().manual_seed(cfg.seed + 0xA06) if self.active else None
        self.side = math.isqrt(n_features)
        self._buffers: dict[torch.Size, torch.Tensor] = {}
        if (self.flip or self.shift) and self.side * self.side != n_features:
            raise ValueError(
                f"flip and shift need square images: {n_features} features is no side^2"
            )

    def pool(self, X: torch.Tensor) -> torch.Tensor:
        """The rows batches are gathered from: X, and with flip X's mirror below it."""
        if not self.flip:
            return X
        n, s = X.shape[0], self.side
        pool = torch.empty((2 * n, s * s), dtype=X.dtype, device=X.device)
        pool[:n] = X
        mirror = torch.arange(s - 1, -1, -1, device=X.device)  # column c <- s - 1 - c
        torch.index_select(X.view(n * s, s), 1, mirror, out=pool[n:].view(n * s, s))
        return pool

    def rows(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Pool rows of a batch of split rows `idx`: with flip, its first half mirrored."""
        if not self.flip:
            return idx
        idx = idx.clone()
        idx[: idx.numel() // 2] += n
        return idx

    def __call__(self, Xb: torch.Tensor) -> torch.Tensor:
        """The rest of a gathered batch's augmentation: the shift, then the noise."""
        if self.shift:
            Xb = self._shift(Xb)
        if self.noise:
            eps = torch.randn(Xb.shape, generator=self.gen, dtype=torch.float64)  # CPU
            Xb = Xb + (self.noise * eps).to(self.device, Xb.dtype)
        return Xb

    def _shift(self, X: torch.Tensor) -> torch.Tensor:
        # A shift by (dy, dx) is a shift of each flattened row by dy * side + dx, one
        # contiguous copy; then the columns that wrapped round a row edge are zeroed
        # (the per-op overhead, not the bytes, is what a batch pays: slice copies of
        # the 2-D windows cost twice as much).
        n, s = X.shape[0], self.side
        draw = torch.randint(0, 2 * self.shift + 1, (2,), generator=self.gen).tolist()
        dy, dx = draw[0] - self.shift, draw[1] - self.shift
        off, size = dy * s + dx, s * s
        # One buffer per batch shape, reused: a fresh 0.8 MB batch every step costs its
        # page faults again (the step is done with a batch before the next is made).
        out = self._buffers.get(X.shape)
        if out is None or out.dtype != X.dtype or out.device != X.device:
            out = self._buffers[X.shape] = torch.empty_like(X)
        if off >= 0:
            out[:, off:] = X[:, : size - off]
            out[:, :off] = 0
        else:
            out[:, : size + off] = X[:, -off:]
            out[:, size + off :] = 0
        if dx > 0:
            out.view(n, s, s)[:, :, :dx] = 0
        elif dx < 0:
            out.view(n, s, s)[:, :, s + dx :] = 0
        return out


def _stream_epoch(engine, stream, drop, augment, threshold: float) -> tuple[torch.Tensor, int]:
    """One epoch over a streamed split: (sum of the rows' losses, rows stepped on)."""
    if stream.full:
        total = torch.zeros((), dtype=torch.float64)
        for Xc, yc in stream.chunks_of_epoch():
            total += engine.accumulate(drop(augment(Xc)), yc, stream.n).double().cpu()
        engine.apply()
        if threshold:
            soft_threshold_(engine.weight, threshold)
        return total, stream.n
    total, seen = torch.zeros((), dtype=torch.float64), 0
    for Xb, yb in stream.batches():
        loss = engine.step(drop(augment(Xb)), yb)
        if threshold:
            soft_threshold_(engine.weight, threshold)
        total += loss.double().cpu() * yb.shape[0]
        seen += yb.shape[0]
    return total, seen


def fit(
    engine,
    X: torch.Tensor,
    y: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    lr_bound: float | None = None,
    record_every: int = 0,
    stream=None,
    allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train `engine` by minibatch SGD for cfg.epochs (early stopping if cfg.patience).

    X (n, d), y (n,) float targets or int64 labels; the same for the val split.
    cfg.batch_size 'full' (or >= n) takes one full-batch gradient step per epoch.
    With `record_every` = r > 0 the parameters after every r-th epoch (and the
    initial and last ones) are kept in the result.
    `stream` (linflow.training.stream.StreamBatches): the train rows come from it,
    chunk by chunk (X, y are None); `allreduce` sums a float64 tensor over ranks
    (the train loss each rank saw), with the engine's ``sync`` doing the gradients.
    Raises DivergenceError on a non-finite loss, or a validation loss BLOWUP times
    its value before training.
    """
    n = stream.n if stream is not None else X.shape[0]
    bs = n if cfg.batch_size == "full" else min(cfg.batch_size, n)
    device = X_val.device  # the engine's parameters live there too (make_engine)
    metric = "val_accuracy" if cfg.loss == "cross_entropy" else "val_rmse"
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    seconds: list[float] = []
    best = (math.inf, 0, engine.get_params())
    trajectory = [(0, *engine.get_params())] if record_every else []
    stopped_early = False
    # A finite loss can still have blown up (softmax at lr 1000: loss ~1000, accuracy
    # 0.39): SGD that leaves the model BLOWUP times worse than its initialisation
    # has diverged.
    initial_loss = _val_scores(engine, X_val, y_val, cfg.loss)[0]
    starts = batch_starts(n, bs)
    # The permutation is drawn on the CPU on every device: the same batches, so a
    # GPU run differs from the CPU one by rounding only.
    sizes = torch.tensor(np.diff(starts), dtype=torch.float64, device=device)
    drop = _InputDropout(getattr(cfg, "dropout", 0.0), cfg.seed, device)
    augment = _Augment(cfg, X_val.shape[1], device)
    pool = augment.pool(X) if X is not None else None  # (n or 2n, d): with flip, X's mirror below
    # Full batch: the same rows every epoch (with flip, the first half mirrored).
    full = (
        pool.index_select(0, augment.rows(torch.arange(n, device=device), n)) if augment.flip else X
    )
    # The proximal threshold per step: lr l1, over (1 - momentum) with heavy ball,
    # whose velocity sums the gradients to g / (1 - m): then the fixed point is the
    # L1 optimum, not the one of l1 (1 - m) (measured: diabetes at l1 10 landed on
    # the optimum of l1 1 without it).
    l1 = getattr(cfg, "l1", 0.0) / (1.0 - cfg.momentum)
    # (a captured graph would replay one mask, one augmentation and no proximal step:
    # those step eagerly)
    eager = drop.p or l1 or augment.active
    graph = (
        EpochGraph(engine, X, y, starts)
        if stream is None and graph_capturable(engine, X, bs) and not eager
        else None
    )
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        engine.set_lr(lr)
        if stream is not None:
            total, seen = _stream_epoch(engine, stream, drop, augment, lr * l1)
            if allreduce is not None:
                both = allreduce(torch.tensor([float(total), float(seen)], dtype=torch.float64))
                total, seen = both[0], float(both[1])
            n_epoch = seen  # the rows stepped on this epoch (ranks skip a few: see stream.py)
        elif bs == n:
            # Full batch: the gradient is a mean over all rows, so the order is moot;
            # skipping the shuffle and the copy keeps thousands of epochs cheap.
            total = engine.step(drop(augment(full)), y).double() * n
            if l1:
                soft_threshold_(engine.weight, lr * l1)
        else:
            perm = torch.randperm(n, generator=g).to(device)
            if graph is not None:
                losses = graph.run(perm)
            else:
                # Batch losses go into one preallocated vector (one op per step, not
                # three): the small-batch hot loop is bound by per-op overhead.
                losses = torch.empty(len(starts) - 1, dtype=torch.float64, device=device)
                for i in range(losses.numel()):
                    idx = perm[starts[i] : starts[i + 1]]
                    Xb = drop(augment(pool.index_select(0, augment.rows(idx, n))))
                    losses[i] = engine.step(Xb, y.index_select(0, idx))
                    if l1:
                        soft_threshold_(engine.weight, lr * l1)
            total = losses @ sizes
        train_loss = float(total) / (n_epoch if stream is not None else n)
        val_loss, val_metric = _val_scores(engine, X_val, y_val, cfg.loss)
        seconds.append(time.perf_counter() - t0)
        hint = (
            f"; the full-batch stable step bound is {bound_name(cfg.momentum)} = {lr_bound:.4g}"
            if lr_bound is not None
            else ""
        )
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            # Name the loss that is non-finite: the train loss is the epoch's running
            # mean before the last step, so the validation loss can blow up first.
            which, bad = (
                ("loss", train_loss) if not math.isfinite(train_loss) else ("val loss", val_loss)
            )
            raise DivergenceError(
                f"training diverged: {which} became {bad} at epoch {epoch} with "
                f"lr={cfg.lr}{hint}; lower lr"
            )
        if val_loss > BLOWUP * initial_loss:
            raise DivergenceError(
                f"training diverged: val loss grew to {val_loss:.4g} at epoch {epoch}, over "
                f"{BLOWUP:g}x its {initial_loss:.4g} before training, with lr={cfg.lr}{hint}; "
                "lower lr"
            )
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, metric: val_metric}
        history.append(row)
        if record_every and (epoch % record_every == 0 or epoch == cfg.epochs):
            trajectory.append((epoch, *engine.get_params()))
        if on_epoch is not None:
            on_epoch(row)
        if val_loss < best[0]:
            best = (val_loss, epoch, engine.get_params() if cfg.patience else None)
        elif cfg.patience and epoch - best[1] >= cfg.patience:
            stopped_early = True
            break
    if record_every and trajectory[-1][0] != len(history):  # stopped early between records
        trajectory.append((len(history), *engine.get_params()))
    best_epoch = best[1]
    if cfg.patience:
        engine.set_params(*best[2])  # restore the best weights seen on validation
    W, b = (p.cpu() for p in engine.get_params())
    trajectory = [(e, w.cpu(), b_.cpu()) for e, w, b_ in trajectory]
    return TrainResult(
        weight=W.numpy().copy(),
        bias=b.numpy().copy(),
        history=history,
        best_epoch=best_epoch if cfg.patience else len(history),
        stopped_early=stopped_early,
        seconds_per_epoch=seconds,
        trajectory_epoch=np.array([e for e, _, _ in trajectory]) if trajectory else None,
        trajectory_weight=torch.stack([w for _, w, _ in trajectory]).numpy()
        if trajectory
        else None,
        trajectory_bias=torch.stack([b for _, _, b in trajectory]).numpy() if trajectory else None,
    )
