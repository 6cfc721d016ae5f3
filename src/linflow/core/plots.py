"""Matplotlib figures, written atomically and byte-stably (no timestamps)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linflow.core.storage import atomic_path

__all__ = [
    "loss_curve",
    "confusion_png",
    "prediction_scatter",
    "distance_to_reference",
    "reference_fit",
]

MAX_SCATTER = 10000  # points per scatter plot


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _margins(fig) -> None:
    """Fixed margins that fit our labels: tight_layout measures every tick label first
    and cost more than the drawing itself (0.25 s for a log-scale plot)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / w, right=1 - 0.2 / w, bottom=0.55 / h, top=1 - 0.35 / h)


def _save(fig, path: str | Path) -> None:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            # No 'Software'/date metadata: the same figure gives the same bytes.
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)  # also when the write fails: no figure left open


def loss_curve(history: Sequence[dict], path: str | Path, title: str) -> None:
    """Train and validation loss per epoch (log scale when the range is wide)."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in history], label="val loss")
    losses = [r[k] for r in history for k in ("train_loss", "val_loss")]
    if min(losses) > 0 and max(losses) / min(losses) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _margins(fig)
    _save(fig, path)


def confusion_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Confusion matrix, rows = true class, columns = predicted class."""
    plt = _plt()
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def prediction_scatter(y: np.ndarray, y_hat: np.ndarray, path: str | Path, title: str) -> None:
    """Predicted vs actual targets with the identity line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, y_hat, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), y_hat.min())), float(max(y.max(), y_hat.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y_hat = y")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend()
    _margins(fig)
    _save(fig, path)


def distance_to_reference(
    epochs: np.ndarray,
    distance: np.ndarray,
    path: str | Path,
    title: str,
    tolerance: float | None = None,
) -> None:
    """||W_epoch - W*|| / ||W*|| against epoch (0 = initial weights), log scale."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    # A distance of exactly 0 has no place on a log axis; float32 weights never get there.
    ax.plot(epochs, np.maximum(distance, 1e-12), label="ours vs reference")
    if tolerance is not None and tolerance > 0:
        ax.axhline(tolerance, color="black", ls="--", lw=1, label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||W - W*|| / ||W*||")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    _margins(fig)
    _save(fig, path)


def reference_fit(
    ours: np.ndarray,
    ref: np.ndarray,
    path: str | Path,
    title: str,
    *,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    lines: tuple[tuple[float, float], tuple[float, float]] | None = None,
    curves: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    capacity: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None,
) -> None:
    """Our model against the reference.

    With one feature (`x`, `y`, `lines` = ((w, b) ours, (w, b) reference)): the data
    with both fitted lines. With the line's polynomial features (`x`, `y`, `curves` =
    (sorted x, ours, reference at those x)): the data with both fitted curves.
    Otherwise: the reference's outputs against ours on the test split (`ref`, `ours`
    of equal shape) with the identity line. `capacity` = (degrees, train MSE, test
    MSE, this model's degree) adds a panel: the error by degree, on a log scale.
    """
    plt = _plt()
    if capacity is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    else:
        fig, (ax, cap) = plt.subplots(1, 2, figsize=(11, 4.5))
        degrees, train_mse, test_mse, degree = capacity
        cap.semilogy(degrees, train_mse, "o-", label="train MSE")
        cap.semilogy(degrees, test_mse, "s-", label="test MSE")
        cap.axvline(degree, color="black", lw=1, ls=":", label=f"this model: degree {degree}")
        cap.set_xticks(degrees)
        cap.set_xlabel("polynomial degree (closed form on this split)")
        cap.set_ylabel("mean squared error")
        cap.set_title("error by model capacity")
        cap.legend()
        cap.grid(alpha=0.3, which="both")
    if curves is not None:
        grid, mine, theirs = curves
        degree = capacity[3] if capacity else "d"
        ax.scatter(x, y, s=10, alpha=0.5, color="tab:gray", label="train data")
        ax.plot(grid, mine, lw=3, alpha=0.6, label=f"ours: polynomial of degree {degree}")
        ax.plot(grid, theirs, "k--", lw=1, label="closed form (same features)")
        ax.set_xlabel("x (first feature)")
        ax.set_ylabel("y")
    elif lines is not None:
        ax.scatter(x, y, s=10, alpha=0.5, color="tab:gray", label="train data")
        grid = np.linspace(float(x.min()), float(x.max()), 2)
        (w, b), (wr, br) = lines
        ax.plot(grid, w * grid + b, lw=3, alpha=0.6, label=f"ours: y = {w:.4f} x + {b:.4f}")
        ax.plot(grid, wr * grid + br, "k--", lw=1, label=f"closed form: y = {wr:.4f} x + {br:.4f}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    else:
        ref, ours = np.ravel(ref), np.ravel(ours)
        # Tens of thousands of markers cost ~1 s to draw and show no more: every
        # step-th output, deterministically.
        step = -(-ref.size // MAX_SCATTER)
        ax.scatter(ref[::step], ours[::step], s=8, alpha=0.5)
        lo, hi = float(min(ref.min(), ours.min())), float(max(ref.max(), ours.max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="ours = reference")
        every = f", every {step}th" if step > 1 else ""
        ax.set_xlabel(f"reference output (test split{every})")
        ax.set_ylabel("our output (test split)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _margins(fig)
    _save(fig, path)
