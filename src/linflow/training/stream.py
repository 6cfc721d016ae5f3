"""Batches of a streamed table for ``fit``: chunk order, a bounded shuffle buffer, ranks.

The scheme (docs/streaming.md), deterministic from ``cfg.seed``:

1. Each epoch draws a permutation of the chunks (Parquet row groups holding train
   rows) from its own generator (seed + CHUNK_SEED); with ``world`` ranks, rank r
   takes every world-th chunk of it, starting at r.
2. Chunks fill a buffer of at most ``buffer_rows`` rows (at least one chunk).
   A full buffer is put in file order (so that a buffer holding the whole split
   is the in-memory split, row for row), permuted by the shuffle generator (seeded
   by cfg.seed, as the in-memory loop's), and cut into batches; rows that do not
   fill a last batch are carried into the next buffer.
3. The epoch's last buffer folds its remainder into its last batch (as
   ``batch_starts`` does), so every row is seen once per epoch. With several ranks
   every rank takes the same number of batches (the smallest share's), each of
   batch_size / world rows, and the rows left over are skipped that epoch.

A whole split in one buffer is the in-memory case: the same permutation, the same
batches, the same weights as ``fit`` on arrays. One process can replay an N-rank
run exactly (``simulate``): its global batch k is the concatenation of every rank's
batch k, the batch whose mean gradient the ranks' all-reduce computes.

Pure: the chunks come from ``read(c) -> (X, y)`` (the caller's IO); collectives from
``allreduce``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from linflow.training.loop import batch_starts

__all__ = ["StreamBatches", "CHUNK_SEED"]

CHUNK_SEED = 0xC0C0  # the chunk order's generator: cfg.seed + this, apart from the shuffle's


class StreamBatches:
    """Train batches of a streamed split, epoch by epoch, for one rank (or all, simulated).

    counts: train rows per chunk (every chunk of the table, in file order);
    read(c): chunk c's train rows as (X float32 (m, d), y) numpy arrays, scaled;
    batch_size: the global batch (int) or 'full'; per rank batch_size / world.
    """

    def __init__(
        self,
        counts: np.ndarray,
        read: Callable[[int], tuple[np.ndarray, np.ndarray]],
        batch_size: int | str,
        seed: int,
        buffer_rows: int,
        *,
        rank: int = 0,
        world: int = 1,
        simulate: bool = False,
        device: str | torch.device = "cpu",
        target: torch.dtype = torch.float32,
    ) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.read = read
        self.n = int(self.counts.sum())  # train rows of every rank together
        self.full = batch_size == "full" or batch_size >= self.n
        self.world, self.rank, self.simulate = world, rank, simulate
        if not self.full and batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes")
        self.batch = self.n if self.full else batch_size // world  # rows per rank and step
        self.buffer_rows = max(1, int(buffer_rows))
        self.device, self.target = torch.device(device), target
        self.chunk_gen = torch.Generator().manual_seed(seed + CHUNK_SEED)
        self.gens = [torch.Generator().manual_seed(seed) for _ in range(world if simulate else 1)]
        self.chunks = [c for c in range(self.counts.size) if self.counts[c] > 0]

    # --- the epoch's plan -----------------------------------------------------------------

    def order(self) -> list[int]:
        """This epoch's chunk order (draws from the chunk generator: once per epoch)."""
        perm = torch.randperm(len(self.chunks), generator=self.chunk_gen).tolist()
        return [self.chunks[i] for i in perm]

    def shares(self, order: list[int]) -> list[list[int]]:
        return [order[r :: self.world] for r in range(self.world)]

    def steps(self, shares: list[list[int]]) -> int | None:
        """Batches per rank this epoch: None (one rank: every row once) or the smallest
        share's whole batches."""
        if self.world == 1:
            return None
        return min(int(self.counts[s].sum()) // self.batch for s in shares)

    # --- rows -------------------------------------------------------------------------------

    def _tensors(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.read(c)
        return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64 if self.target == torch.int64 else np.float32))  # fmt: skip

    def _rank_batches(self, share: list[int], steps: int | None, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """One rank's batches of an epoch from its chunks (see the module's scheme)."""
        held: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        carry: tuple[torch.Tensor, torch.Tensor] | None = None
        rows, done = 0, 0
        pending = list(share)
        while pending or held:
            while pending and (rows < self.buffer_rows or not held):
                c = pending.pop(0)
                X, y = self._tensors(c)
                held.append((c, X, y))
                rows += X.shape[0]
            final = not pending
            held.sort(key=lambda t: t[0])  # file order: a whole split is the in-memory one
            parts = ([carry] if carry is not None else []) + [(X, y) for _, X, y in held]
            X = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
            held, rows, carry = [], 0, None
            m = X.shape[0]
            perm = torch.randperm(m, generator=gen)
            if final and steps is None:
                starts = batch_starts(m, self.batch) if m >= self.batch else [0, m]
            else:
                starts = list(range(0, m - self.batch + 1, self.batch)) + [m // self.batch * self.batch]  # fmt: skip
                if m // self.batch * self.batch < m and not final:
                    rest = perm[starts[-1] :]
                    carry = (X.index_select(0, rest), y.index_select(0, rest))
            for i in range(len(starts) - 1):
                if steps is not None and done >= steps:
                    return
                idx = perm[starts[i] : starts[i + 1]]
                if idx.numel() == 0:
                    continue
                done += 1
                yield X.index_select(0, idx), y.index_select(0, idx)
            if final:
                return

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's (X, y) batches for this rank; simulated: the global batches."""
        order = self.order()
        shares = self.shares(order)
        steps = self.steps(shares)
        if not self.simulate:
            share = shares[self.rank]
            for Xb, yb in self._rank_batches(share, steps, self.gens[0]):
                yield Xb.to(self.device), yb.to(self.device)
            return
        streams = [self._rank_batches(shares[r], steps, self.gens[r]) for r in range(self.world)]
        for parts in zip(*streams, strict=False):
            yield (
                torch.cat([p[0] for p in parts]).to(self.device),
                torch.cat([p[1] for p in parts]).to(self.device),
            )

    def chunks_of_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Full batch: this rank's chunks (all of them, simulated), in this epoch's order."""
        order = self.order()
        share = order if self.simulate or self.world == 1 else self.shares(order)[self.rank]
        for c in share:
            X, y = self._tensors(c)
            yield X.to(self.device), y.to(self.device)
