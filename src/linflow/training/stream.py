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
        epochs: int | None = None,
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
        self.epochs_left = epochs  # None: unknown, no read-ahead across epochs
        self._pool = None  # the reading thread
        self._next = None  # the next epoch's plan, its first fill already being read

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

    def _groups(self, share: list[int]) -> list[list[int]]:
        """The share's chunks cut into buffer fills: consecutive chunks until their train
        rows reach buffer_rows (known from the counts before reading anything)."""
        groups: list[list[int]] = []
        rows = self.buffer_rows
        for c in share:
            if rows >= self.buffer_rows:
                groups.append([])
                rows = 0
            groups[-1].append(c)
            rows += int(self.counts[c])
        return groups

    def _read(self, group: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        return [(c, *self._tensors(c)) for c in group]

    def _read_ahead(self, groups: list[list[int]], first=None, then=None) -> Iterator[list[tuple[int, torch.Tensor, torch.Tensor]]]:  # fmt: skip
        """Each group's chunks [(c, X, y)], the next group read on a thread while the
        caller trains on this one (Parquet decoding releases the GIL), so an epoch costs
        about the larger of reading and training, not their sum. `first`: the first
        group's read, already submitted; `then()`: called as the last group is handed
        out (it starts reading the next epoch's first fill). One fill ahead: memory
        holds two buffers."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="linflow-read")
        ahead = first if first is not None else self._pool.submit(self._read, groups[0])
        for i in range(len(groups)):
            held = ahead.result()
            if i + 1 < len(groups):
                ahead = self._pool.submit(self._read, groups[i + 1])
            elif then is not None:
                then()
            yield held
            del held

    def close(self) -> None:
        """Let a read of an epoch that will not run finish, and stop the reading thread."""
        if self._next is not None:
            self._next[-1].result()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _plan(self, full: bool) -> tuple:
        """(groups of this rank, steps per rank, first fill's read or None) of an epoch."""
        if self._next is not None:
            plan, self._next = self._next, None
            return plan
        order = self.order()
        shares = self.shares(order)
        share = order if full and (self.simulate or self.world == 1) else shares[self.rank]
        groups = [[c] for c in share] if full else self._groups(share)
        return groups, (shares if self.simulate else None), self.steps(shares), None

    def _ahead(self, full: bool):
        """then() for _read_ahead: plan the next epoch now (the chunk order draws the same
        numbers whenever it is drawn) and start reading its first fill."""
        if self.epochs_left is not None:
            self.epochs_left -= 1
        if self.simulate or not self.epochs_left:
            return None

        def start() -> None:
            groups, shares, steps, _ = self._plan(full)
            self._next = (groups, shares, steps, self._pool.submit(self._read, groups[0]))

        return start

    def _tensors(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.read(c)
        return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64 if self.target == torch.int64 else np.float32))  # fmt: skip

    def _rank_batches(self, groups: list[list[int]], steps: int | None, gen: torch.Generator, fills=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """One rank's batches of an epoch from its buffer fills (see the module's scheme)."""
        carry: tuple[torch.Tensor, torch.Tensor] | None = None
        done = 0
        for g, held in enumerate(fills if fills is not None else self._read_ahead(groups)):
            final = g == len(groups) - 1
            held.sort(key=lambda t: t[0])  # file order: a whole split is the in-memory one
            parts = ([carry] if carry is not None else []) + [(X, y) for _, X, y in held]
            X = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
            del held, parts
            carry = None
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
        groups, shares, steps, first = self._plan(False)
        if not self.simulate:
            fills = self._read_ahead(groups, first, self._ahead(False))
            for Xb, yb in self._rank_batches(groups, steps, self.gens[0], fills):
                yield self._to_device(Xb), self._to_device(yb)
            return
        streams = [
            self._rank_batches(self._groups(shares[r]), steps, self.gens[r]) for r in range(self.world)
        ]  # fmt: skip
        for parts in zip(*streams, strict=False):
            yield (
                self._to_device(torch.cat([p[0] for p in parts])),
                self._to_device(torch.cat([p[1] for p in parts])),
            )

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """On the CPU, the tensor itself; on CUDA, copied from pinned memory without
        blocking, so the copy of the next batch overlaps the kernels of this one."""
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def chunks_of_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Full batch: this rank's chunks (all of them, simulated), in this epoch's order."""
        groups, _, _, first = self._plan(True)
        for held in self._read_ahead(groups, first, self._ahead(True)):
            for _, X, y in held:
                yield self._to_device(X), self._to_device(y)
