"""The GPU path: deterministic CUDA settings and an epoch captured as a CUDA graph.

At d2l's batch size a GPU is launch-bound: an epoch of Fashion-MNIST is ~190
steps of ~10 small kernels each, and launching them one by one costs more than
the arithmetic (issue 14 measured 53 ms an epoch eager against 7.6 ms replayed
from a graph on an H200). ``EpochGraph`` records one whole epoch of the scratch
engine's steps once -- gather the batch from a static permutation, forward,
hand-written gradients, update -- and replays it every epoch after writing that
epoch's permutation into the graph's input. The lr is a device scalar the step
reads (``ScratchEngine.set_lr`` writes it), so a schedule needs no re-capture.
Replay runs the very kernels eager execution runs, in the same order: a graph
epoch equals an eager GPU epoch bit for bit (tests/test_cuda.py).

Pure: no files, no MLflow.
"""

from __future__ import annotations

import os

import torch

__all__ = ["deterministic", "EpochGraph", "graph_capturable"]


def deterministic() -> None:
    """Make CUDA kernels deterministic for this process (before the first GEMM).

    cuBLAS needs a fixed workspace for reproducible results
    (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS starts); torch then refuses
    any op that has no deterministic kernel instead of running it silently.
    float32 matmuls stay in full precision (no TF32).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def graph_capturable(engine, X: torch.Tensor, batch_size: int) -> bool:
    """Whether fit may replay `engine`'s epochs from a CUDA graph.

    The scratch engine (with or without momentum: its velocity starts at zero,
    so every step is alike), on a GPU, with more than one batch an epoch.
    """
    from linflow.training.scratch import ScratchEngine

    return (
        X.is_cuda
        and isinstance(engine, ScratchEngine)
        and isinstance(engine.lr, torch.Tensor)
        and batch_size < X.shape[0]
    )


class EpochGraph:
    """One epoch of ``engine.step`` over fixed batch boundaries, as a CUDA graph.

    X (n, d) and y (n,) live on the GPU and stay put; ``run(perm)`` copies the
    epoch's permutation (n,) into the graph's input, replays, and returns the
    batch losses (float64, one per batch) on the GPU.
    """

    def __init__(self, engine, X: torch.Tensor, y: torch.Tensor, starts: list[int]):
        self.engine, self.X, self.y, self.starts = engine, X, y, starts
        device = X.device
        self.perm = torch.arange(X.shape[0], device=device)
        self.losses = torch.zeros(len(starts) - 1, dtype=torch.float64, device=device)
        self._warm_up()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._epoch()

    def _epoch(self) -> None:
        s, X, y, perm = self.starts, self.X, self.y, self.perm
        for i in range(len(s) - 1):
            idx = perm[s[i] : s[i + 1]]
            self.losses[i] = self.engine.step(X.index_select(0, idx), y.index_select(0, idx))

    def _warm_up(self) -> None:
        """Run the step's kernels once, on a side stream as capture requires, on
        the largest batch (so cached buffers are big enough), then restore the
        parameters and the momentum velocities: warming up must not train."""
        engine = self.engine
        state = [t.clone() for t in engine.state()]
        widest = max(range(len(self.starts) - 1), key=lambda i: self.starts[i + 1] - self.starts[i])
        idx = self.perm[self.starts[widest] : self.starts[widest + 1]]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            engine.step(self.X.index_select(0, idx), self.y.index_select(0, idx))
        torch.cuda.current_stream().wait_stream(side)
        for live, saved in zip(engine.state(), state, strict=True):
            live.copy_(saved)

    def run(self, perm: torch.Tensor) -> torch.Tensor:
        self.perm.copy_(perm, non_blocking=True)
        self.graph.replay()
        return self.losses
