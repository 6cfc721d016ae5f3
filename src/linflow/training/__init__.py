"""Training by minibatch SGD: the two engines and the loop that drives them.

One DVC dependency of the ``train`` stage (``src/linflow/training``), three rooms:

- ``models.py``: the concise engine's ``nn.Module`` (d2l 3.5/4.5) and the shared init;
- ``scratch.py``: the from-scratch engine, hand-written forward, loss and gradients;
- ``loop.py``: ``fit`` (epochs, batches, lr schedule, early stopping, divergence
  guard) and ``make_engine``; re-exported here.

Pure: no files, no argv, no MLflow.
"""

from linflow.training.loop import (
    DivergenceError,
    TorchEngine,
    TrainResult,
    batch_starts,
    bound_name,
    fit,
    lr_at,
    lr_stability_bound,
    make_engine,
)

__all__ = [
    "DivergenceError",
    "TrainResult",
    "TorchEngine",
    "batch_starts",
    "bound_name",
    "fit",
    "lr_at",
    "lr_stability_bound",
    "make_engine",
]
