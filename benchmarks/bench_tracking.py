"""What MLflow tracking adds to the training loop of the `digits` stage.

Both arms in this one process, interleaved (off, on, off, on, ...) after a
warm-up, median of the repetitions: the default-params digits training loop
(training.fit) without tracking, and with every epoch logged through
tracking.TrainingRun into a temporary sqlite store (as `linflow train` does).
Run creation/closing is outside the timed loop; it is a fixed cost per stage.

Needs data/prepared/digits (run `make run` first).
Run: python benchmarks/bench_tracking.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impl", choices=("scratch", "torch"), help="engine (default: params.yaml)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tracking.json"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="linflow-bench-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"

    import torch

    from linflow.core import tracking
    from linflow.core.artifacts import apply_scaler
    from linflow.core.config import load_params
    from linflow.core.storage import load_npz, read_json
    from linflow.training import fit, make_engine

    params = load_params(ROOT / "params.yaml")
    cfg = params.train_config("digits")
    if args.impl:
        cfg = cfg.model_copy(update={"impl": args.impl})
    torch.set_num_threads(params.train.threads)
    data = ROOT / "data/prepared/digits"
    scaler = read_json(data / "scaler.json")
    tr, va = load_npz(data / "train.npz"), load_npz(data / "val.npz")
    X, y = torch.from_numpy(apply_scaler(tr["X"], scaler)), torch.from_numpy(tr["y"])
    Xv, yv = torch.from_numpy(apply_scaler(va["X"], scaler)), torch.from_numpy(va["y"])
    n_classes = len(tr["class_names"])

    def loop(on_epoch=None) -> float:
        engine = make_engine(cfg.impl, "classification", X.shape[1], n_classes, cfg)
        t0 = time.perf_counter()
        fit(engine, X, y, Xv, yv, cfg, on_epoch=on_epoch)
        return time.perf_counter() - t0

    def tracked() -> float:
        with tracking.TrainingRun("bench-digits", "bench", {"lr": cfg.lr}, {}) as run:
            seconds = loop(run.log_epoch)
            t0 = time.perf_counter()
            run.flush()
            return seconds + (time.perf_counter() - t0)

    loop()
    tracked()  # warm-up: imports, store creation
    # As in a stage under DVC, which the warm worker forks after gc.freeze(): the
    # libraries' objects are out of the collector's way (else a full collection
    # triggered by the logging's allocations walks ~1M objects of torch and mlflow).
    import gc

    gc.freeze()
    off, on = [], []
    for _ in range(args.reps):
        off.append(loop())
        on.append(tracked())
    result = {
        "impl": cfg.impl,
        "epochs": cfg.epochs,
        "reps": args.reps,
        "loadavg_1m": os.getloadavg()[0],
        "seconds_off": off,
        "seconds_on": on,
        "median_off": statistics.median(off),
        "median_on": statistics.median(on),
        "overhead": statistics.median(on) / statistics.median(off) - 1.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"digits training loop ({cfg.impl}), {cfg.epochs} epochs, median of {args.reps}:")
    print(f"  tracking off {result['median_off']:.3f} s")
    print(f"  tracking on  {result['median_on']:.3f} s  (+{100 * result['overhead']:.1f}%)")
    print(f"  load average {result['loadavg_1m']:.2f}; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
