"""Data-parallel training with ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Each rank streams its own share of the chunks (linflow.training.stream); after every
backward pass the gradients of the two parameters are all-reduced in one flat
tensor, so every rank takes the same step and holds the same weights. With equal
per-rank batches of B / N rows, the average of the ranks' mean gradients is the
mean gradient of their B rows together: N ranks equal one process with batch B on
the same global order, up to the rounding of the sum (tests/test_distributed.py).

The process group comes from torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), read by the stage; every collective waits at most
``timeout_s`` for the others, so a hung or dead rank fails the rest in bounded time.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from linflow.core.errors import DistributedError

__all__ = ["start", "stop", "grad_sync", "allreduce_sum", "collective"]


def start(device: str, timeout_s: float) -> tuple[int, int]:
    """Join torchrun's process group: (rank, world size)."""
    global _DEVICE
    backend = "nccl" if device == "cuda" else "gloo"
    _DEVICE = torch.device("cpu")
    if device == "cuda":
        import os

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        _DEVICE = torch.device("cuda")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except Exception as exc:
        raise DistributedError(f"could not join the other ranks ({_line(exc)})") from None
    return dist.get_rank(), dist.get_world_size()


_DEVICE = torch.device("cpu")  # where collectives run: NCCL needs CUDA tensors


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _line(exc: BaseException) -> str:
    """The first line of an error, without gloo's '[/path/to/source.cc:78] ' prefix."""
    import re

    text = str(exc).strip().splitlines()
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text[0]) if text else type(exc).__name__


class collective:
    """Context: a failed or timed-out collective as one DistributedError line."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what, self.timeout_s = what, timeout_s

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, RuntimeError) or isinstance(exc, DistributedError):
            return False
        raise DistributedError(
            f"{self.what}: another rank died, hung or left (waited at most "
            f"train.timeout_s = {self.timeout_s:g} s): {_line(exc)}"
        ) from None


def grad_sync(world: int):
    """engine.sync: all-reduce the parameters' gradients in one flat tensor; average
    (minibatch: each rank's mean) or sum (full batch: each rank's sum / n)."""

    def sync(params: list[torch.Tensor], average: bool) -> None:
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        if average:
            flat /= world
        at = 0
        for g in grads:
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()

    return sync


def allreduce_sum(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks (a copy)."""
    out = t.to(_DEVICE, copy=True)
    dist.all_reduce(out)
    return out.cpu()
