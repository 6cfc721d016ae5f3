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
        features: int | None = None,
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
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (stream, slot)
        self._slots: dict[int, int] = {}  # the buffer each stream fills next
        self.features = features  # the chunks' width (None: read from the first chunk)

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

    def _layout(self, groups: list[list[int]], steps: int | None) -> list[tuple[int, int]]:
        """(rows carried in from the fill before, rows of the fill) of each fill: the
        carry is what does not make a whole batch, known from the counts alone, so a
        fill can be written to its place while the one before still trains."""
        out, carry = [], 0
        for i, group in enumerate(groups):
            rows = int(self.counts[group].sum())
            out.append((carry, rows))
            final = i == len(groups) - 1
            carry = 0 if final else (carry + rows) % self.batch
        return out

    def _buffer(self, key: tuple, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A persistent (X, y) buffer of at least `rows` rows: reused fill after fill, so
        its pages are faulted in once, not every fill."""
        buf = self._buffers.get(key)
        if buf is None or buf[0].shape[0] < rows:
            if self.features is None:  # learnt from a chunk, once
                self.features = self._tensors(self.chunks[0])[0].shape[1]
            buf = (
                torch.empty((rows, self.features), dtype=torch.float32),
                torch.empty((rows,), dtype=self.target),
            )
            self._buffers[key] = buf
        return buf

    def _fill(self, group: list[int], buf, at: int) -> int:
        """Read `group`'s chunks in file order into buf from row `at` (the reading
        thread); returns the row after the last."""
        Xb, yb = buf
        for c in sorted(group):  # file order: a whole split is the in-memory one
            X, y = self._tensors(c)
            Xb[at : at + X.shape[0]] = X
            yb[at : at + X.shape[0]] = y
            at += X.shape[0]
        return at

    def _pool_(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="linflow-read")
        return self._pool

    def _submit_fill(self, stream: int, group: list[int], carry: int, rows: int):
        """Start reading a fill into the next of the stream's two buffers: (future, buffer)."""
        slot = self._slots.get(stream, 0)
        self._slots[stream] = slot ^ 1
        buf = self._buffer((stream, slot), carry + rows + self.batch)
        return self._pool_().submit(self._fill, group, buf, carry), buf

    def _rank_batches(self, groups: list[list[int]], steps: int | None, gen: torch.Generator, stream: int = 0, first=None, then=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """One rank's batches of an epoch from its buffer fills (see the module's scheme).

        The next fill is read on a thread into the other buffer while this one trains
        (Parquet decoding releases the GIL), so an epoch costs about the larger of
        reading and training, not their sum; `first`: the first fill's read, already
        started (the epoch before did); `then()`: called when the last fill is handed
        out (it starts the next epoch's first)."""
        layout = self._layout(groups, steps)
        done = 0
        ahead = first if first is not None else self._submit_fill(stream, groups[0], *layout[0])
        for g in range(len(groups)):
            future, (Xbuf, ybuf) = ahead
            m = future.result()
            final = g == len(groups) - 1
            if not final:
                ahead = self._submit_fill(stream, groups[g + 1], *layout[g + 1])
            elif then is not None:
                then()
            X, y = Xbuf[:m], ybuf[:m]
            perm = torch.randperm(m, generator=gen)
            if final and steps is None:
                starts = batch_starts(m, self.batch) if m >= self.batch else [0, m]
            else:
                whole = m // self.batch * self.batch
                starts = list(range(0, whole + 1, self.batch)) if whole else [0]
                if whole < m and not final:  # the rest opens the next fill
                    rest = perm[whole:]
                    nX, ny = ahead[1]
                    torch.index_select(X, 0, rest, out=nX[: rest.numel()])
                    torch.index_select(y, 0, rest, out=ny[: rest.numel()])
            for i in range(len(starts) - 1):
                if steps is not None and done >= steps:
                    return
                idx = perm[starts[i] : starts[i + 1]]
                done += 1
                yield X.index_select(0, idx), y.index_select(0, idx)

    def close(self) -> None:
        """Let a read of an epoch that will not run finish, and stop the reading thread."""
        if self._next is not None:
            self._next[-1][0].result()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _plan(self, full: bool) -> tuple:
        """(groups of this rank, every share (simulated), steps per rank, first fill's
        read or None) of an epoch."""
        if self._next is not None:
            plan, self._next = self._next, None
            return plan
        order = self.order()
        shares = self.shares(order)
        share = order if full and (self.simulate or self.world == 1) else shares[self.rank]
        groups = [[c] for c in share] if full else self._groups(share)
        return groups, (shares if self.simulate else None), self.steps(shares), None

    def _ahead(self, full: bool):
        """then(): plan the next epoch now (the chunk order draws the same numbers
        whenever it is drawn) and start reading its first fill."""
        if self.epochs_left is not None:
            self.epochs_left -= 1
        if self.simulate or full or not self.epochs_left:
            return None

        def start() -> None:
            groups, shares, steps, _ = self._plan(full)
            first = self._submit_fill(0, groups[0], *self._layout(groups, steps)[0])
            self._next = (groups, shares, steps, first)

        return start

    def _tensors(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.read(c)
        return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64 if self.target == torch.int64 else np.float32))  # fmt: skip

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's (X, y) batches for this rank; simulated: the global batches."""
        groups, shares, steps, first = self._plan(False)
        if not self.simulate:
            then = self._ahead(False)
            for Xb, yb in self._rank_batches(groups, steps, self.gens[0], 0, first, then):
                yield self._to_device(Xb), self._to_device(yb)
            return
        streams = [
            self._rank_batches(self._groups(shares[r]), steps, self.gens[r], r)
            for r in range(self.world)
        ]
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
        """Full batch: this rank's chunks (all of them, simulated), in this epoch's order,
        the next chunk read on the thread while this one's gradient is computed."""
        groups, _, _, _ = self._plan(True)
        self._ahead(True)
        from linflow.core.chunks import one_ahead

        for X, y in one_ahead(self._tensors, [g[0] for g in groups], self._pool_()):
            yield self._to_device(X), self._to_device(y)
