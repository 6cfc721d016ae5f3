"""One Fashion-MNIST-shaped epoch on a CUDA GPU, by each path ``train.device: cuda`` can take.

Shapes as our Fashion-MNIST train split: 49,410 x 784 float32, 10 classes,
batch 256 (193 batches, the remainder folded into the last). The values are
random (speed does not depend on them; the GPU machine has no dataset). Arms,
interleaved, after a warm-up, median of the repetitions:

- graph:   the scratch engine, the epoch replayed from one CUDA graph (what fit does)
- graph_momentum: the same with heavy-ball momentum 0.9 (Fashion-MNIST's recipe)
- eager:   the scratch engine, its steps launched one by one
- torch:   the torch engine (nn.Linear + autograd + torch.optim.SGD), eager
- replay:  the graph's replay alone (no permutation, validation or sync per epoch)
- floor:   the epoch's two GEMMs over all rows at once (X W^T and G^T X)

Writes benchmarks/results/cuda.json (and a copy where --out says) and prints a table.
Run on a GPU machine: python benchmarks/bench_cuda.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from linflow.training import loop  # noqa: E402
from linflow.training.cuda import deterministic  # noqa: E402

N, D, K, BATCH = 49410, 784, 10, 256


def _cfg(impl: str, epochs: int, momentum: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(
        impl=impl, loss="cross_entropy", lr=0.1, batch_size=BATCH, epochs=epochs,
        weight_decay=5e-4, momentum=momentum, patience=0, seed=0, lr_schedule="constant",
    )  # fmt: skip


def _epoch_seconds(
    impl: str, X, y, Xv, yv, graph: bool, epochs: int, momentum: float = 0.0
) -> float:
    """Median seconds per epoch of fit() over `epochs` epochs (fit times each epoch)."""
    cfg = _cfg(impl, epochs, momentum)
    real = loop.graph_capturable
    if not graph:
        loop.graph_capturable = lambda *a: False
    try:
        engine = loop.make_engine(impl, "classification", D, K, cfg, device="cuda")
        res = loop.fit(engine, X, y, Xv, yv, cfg)
    finally:
        loop.graph_capturable = real
    return statistics.median(res.seconds_per_epoch[1:])  # the first holds the capture


def _replay(X, y) -> float:
    from linflow.training.cuda import EpochGraph

    cfg = _cfg("scratch", 1)
    engine = loop.make_engine("scratch", "classification", D, K, cfg, device="cuda")
    graph = EpochGraph(engine, X, y, loop.batch_starts(N, BATCH))
    perm = torch.randperm(N, device="cuda")
    graph.run(perm)
    torch.cuda.synchronize()
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        graph.run(perm)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _floor(X) -> float:
    W = torch.randn(K, D, device="cuda")
    G = torch.randn(K, X.shape[0], device="cuda")
    for _ in range(3):
        torch.addmm(torch.zeros(K, 1, device="cuda"), W, X.T), G @ X
    torch.cuda.synchronize()
    reps, t0 = 50, time.perf_counter()
    for _ in range(reps):
        torch.addmm(torch.zeros(K, 1, device="cuda"), W, X.T), G @ X
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6, help="epochs per fit (the first is dropped)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA GPU here", file=sys.stderr)
        return 2
    deterministic()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g).cuda()
    y = torch.randint(0, K, (N,), generator=g).cuda()
    Xv, yv = X[:5000], y[:5000]
    arms = {
        "graph": lambda: _epoch_seconds("scratch", X, y, Xv, yv, True, args.epochs),
        "graph_momentum": lambda: _epoch_seconds("scratch", X, y, Xv, yv, True, args.epochs, 0.9),
        "eager": lambda: _epoch_seconds("scratch", X, y, Xv, yv, False, args.epochs),
        "torch": lambda: _epoch_seconds("torch", X, y, Xv, yv, False, args.epochs),
        "replay": lambda: _replay(X, y),
        "floor": lambda: _floor(X),
    }
    for fn in arms.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(args.reps):
        for name, fn in arms.items():
            times[name].append(fn())
    med = {a: statistics.median(t) for a, t in times.items()}
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "shape": {"rows": N, "features": D, "classes": K, "batch": BATCH},
        "reps": args.reps,
        "epoch_ms": {a: round(1e3 * s, 3) for a, s in med.items()},
        "ratios": {
            "eager/graph": round(med["eager"] / med["graph"], 2),
            "torch/graph": round(med["torch"] / med["graph"], 2),
            "graph/replay": round(med["graph"] / med["replay"], 2),
            "graph/floor": round(med["graph"] / med["floor"], 2),
        },
    }
    text = json.dumps(result, indent=2) + "\n"
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/cuda.json").write_text(text)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
