"""Fashion-MNIST softmax-regression trainer, side by side with the usual ways.

Every arm runs in this one process, interleaved (arm A rep 1, arm B rep 1, ...),
after a warm-up, and reports the median of the repetitions, so machine noise
hits all arms alike and the ratios are what count. Arms, one epoch over the
54000 training rows at batch 256 unless said otherwise:

- d2l:     a per-sample Dataset that turns uint8 images into float tensors (like
           torchvision's ToTensor) + DataLoader + nn.Linear + autograd + SGD
- tensords: TensorDataset + DataLoader over float tensors, same model
- ours:    linflow's trainer (training.fit with the configured engine)
- floor:   the epoch's 1.88 GFLOP (forward X W^T and dW = G^T X) at the sgemm rate
           measured on large matrices in this run
- busy:    ours again while another process keeps one core busy
- sklearn: LogisticRegression (the reference) fit time vs our full training
           (default params), with both test accuracies

Writes benchmarks/results/trainer.json and prints a table.
Run: `make bench` (or python benchmarks/bench_trainer.py --reps 3).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from linflow.core.artifacts import apply_scaler  # noqa: E402
from linflow.core.config import load_params  # noqa: E402
from linflow.datasets import fashion_mnist  # noqa: E402
from linflow.split import fit_scaler, split_indices  # noqa: E402
from linflow.training import fit, make_engine  # noqa: E402


def _burn(stop):  # pragma: no cover - runs in a child process
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


from machine import cpu_model  # noqa: E402


def _cpu() -> dict[str, str]:
    """Which CPU and which kernels this ran on: the ratios hold per CPU kind."""
    model = cpu_model()
    return {
        "model": model,
        "torch_isa": torch.backends.cpu.get_cpu_capability(),  # DEFAULT, AVX2, AVX512
        "mkl_cbwr": os.environ.get("MKL_CBWR", "auto"),
        "cores": str(os.cpu_count()),
    }


class ToTensorDataset(torch.utils.data.Dataset):
    """d2l / torchvision style: one uint8 image at a time -> float tensor in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        # torchvision's FashionMNIST.__getitem__ + transforms.ToTensor(), without torchvision
        from PIL import Image

        pic = Image.fromarray(self.images[i].reshape(28, 28))  # mode "L"
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(28, 28, 1)
        img = img.permute(2, 0, 1).contiguous().float().div(255)
        return img, int(self.labels[i])


def _autograd_epoch(loader, cfg) -> None:
    """One epoch of d2l's loop with our recipe's optimiser (the same SGD steps as ours:
    lr, heavy-ball momentum, weight decay), so the arms differ in how, not in what."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    for X, y in loader:
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()


def _sgemm_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / min(times) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per arm (median reported)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/trainer.json"))
    ap.add_argument("--skip-sklearn", action="store_true", help="skip the (slow) sklearn arm")
    args = ap.parse_args()

    params = load_params(ROOT / "params.yaml")
    # The fashion_mnist training config (train.classification + its overrides).
    cfg = (
        params.train_config("fashion_mnist")
        if "fashion_mnist" in params.datasets
        else params.train.classification
    )
    torch.set_num_threads(params.train.threads)
    ds_cfg = params.datasets.get("fashion_mnist")
    if ds_cfg is None:
        from linflow.core.config import FashionMnistSource

        ds_cfg = FashionMnistSource(source="fashion_mnist", task="classification")
    raw = fashion_mnist.load(ds_cfg.data)
    s = params.split
    tr, va, te = split_indices(
        raw.y.size,
        (s.train, s.val, s.test),
        np.random.default_rng(0),
        y=raw.y,
        is_test=raw.is_test,
    )
    scaler = fit_scaler(raw.X[tr], raw.x_scale, ds_cfg.standardize)
    X, y = torch.from_numpy(apply_scaler(raw.X[tr], scaler)), torch.from_numpy(raw.y[tr])
    Xv, yv = torch.from_numpy(apply_scaler(raw.X[va], scaler)), torch.from_numpy(raw.y[va])
    n = X.shape[0]
    # Every arm: one epoch at batch 256 (d2l's setting), whatever params.yaml says.
    one_epoch = cfg.model_copy(update={"epochs": 1, "patience": 0, "batch_size": 256})

    def ours(c=one_epoch):
        engine = make_engine(cfg.impl, "classification", 784, 10, c)
        fit(engine, X, y, Xv[:1], yv[:1], c)

    # The augmentation lesson's setting (flip + shift up to 2 pixels): an epoch at most
    # 1.3x ours. Timed per epoch by fit itself (seconds_per_epoch, 3 epochs a call):
    # the mirrored copy of the split that flip makes once per training is not an
    # epoch's cost; it is timed on its own (augment_pool).
    three = one_epoch.model_copy(update={"epochs": 3})
    augmented = three.model_copy(update={"flip": True, "shift": 2})
    epoch_times: dict[str, list[float]] = {"plain_epoch": [], "augmented_epoch": []}

    def epochs(c, key):
        engine = make_engine(cfg.impl, "classification", 784, 10, c)
        epoch_times[key] += fit(engine, X, y, Xv[:1], yv[:1], c).seconds_per_epoch

    def pool():
        from linflow.training.loop import _Augment

        _Augment(augmented, 784, torch.device("cpu")).pool(X)

    d2l_loader = torch.utils.data.DataLoader(
        ToTensorDataset(raw.X[tr], raw.y[tr]), batch_size=256, shuffle=True
    )
    tds_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=256, shuffle=True
    )
    arms = {
        "d2l": lambda: _autograd_epoch(d2l_loader, cfg),
        "tensords": lambda: _autograd_epoch(tds_loader, cfg),
        "ours": ours,
        "epochs_plain": lambda: epochs(three, "plain_epoch"),
        "epochs_augmented": lambda: epochs(augmented, "augmented_epoch"),
        "augment_pool": pool,
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    for fn in arms.values():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    gflops = _sgemm_gflops()
    epoch_gflop = 4 * n * 784 * 10 / 1e9
    floor = epoch_gflop / gflops

    stop = mp.Event()
    burner = mp.Process(target=_burn, args=(stop,), daemon=True)
    burner.start()
    time.sleep(0.5)
    busy = []
    try:
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ours()
            busy.append(time.perf_counter() - t0)
    finally:
        stop.set()
        burner.join(5)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "cpu": _cpu(),
        "n_train": n,
        "batch_size": cfg.batch_size,
        "impl": cfg.impl,
        "threads": params.train.threads,
        "reps": args.reps,
        "loadavg_1m": os.getloadavg()[0],
        "seconds": {
            **med,
            "floor": floor,
            "ours_busy": statistics.median(busy),
            **{k: statistics.median(v) for k, v in epoch_times.items()},
        },
        "all_seconds": {**times, "ours_busy": busy},
        "sgemm_gflops": gflops,
        "epoch_gflop": epoch_gflop,
        "ratios": {
            "d2l / ours": med["d2l"] / med["ours"],
            "tensords / ours": med["tensords"] / med["ours"],
            "ours / floor": med["ours"] / floor,
            "ours busy / ours idle": statistics.median(busy) / med["ours"],
            "augmented epoch / epoch": statistics.median(epoch_times["augmented_epoch"])
            / statistics.median(epoch_times["plain_epoch"]),
        },
    }

    if not args.skip_sklearn:
        from sklearn.exceptions import ConvergenceWarning

        from linflow import reference

        Xte, yte = apply_scaler(raw.X[te], scaler), raw.y[te]
        t0 = time.perf_counter()
        engine = make_engine(cfg.impl, "classification", 784, 10, cfg)
        res = fit(engine, X, y, Xv, yv, cfg)
        ours_full = time.perf_counter() - t0
        ours_acc = float(((Xte @ res.weight.T + res.bias).argmax(1) == yte).mean())
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        # As a user runs it: LogisticRegression with scikit-learn's default tol (1e-4),
        # enough max_iter to converge, the same L2 as our weight decay, on one thread
        # like our trainer (train.threads: 1). It must converge: a warning is an error.
        C = reference.logistic_C(X.shape[0], cfg.weight_decay, 10)
        Xn, yn = X.numpy().astype(np.float64), y.numpy()
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("error", ConvergenceWarning)
            t0 = time.perf_counter()
            model = LogisticRegression(C=C, max_iter=5000).fit(Xn, yn)
            sk_time = time.perf_counter() - t0
        sk_acc = float((model.predict(Xte.astype(np.float64)) == yte).mean())
        # What reference@fashion_mnist runs (centred features), on one thread here
        # (informational; the stage gives numpy's BLAS reference.threads).
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("error", ConvergenceWarning)
            t0 = time.perf_counter()
            tuned = reference.fit_logistic_regression(
                X.numpy(), yn, 10, cfg.weight_decay, params.reference.max_iter, params.reference.tol
            )
            tuned_time = time.perf_counter() - t0
        result["sklearn"] = {
            "fit_seconds": sk_time,
            "n_iter": int(np.max(model.n_iter_)),
            "ours_train_seconds": ours_full,
            "ours_epochs": res.epochs_run,
            "ours_test_accuracy": ours_acc,
            "sklearn_test_accuracy": sk_acc,
            "pipeline_reference_fit_seconds_1_thread": tuned_time,
            "pipeline_reference_n_iter": tuned.n_iter,
        }
        result["ratios"]["sklearn fit / ours train"] = sk_time / ours_full
        result["ratios"]["accuracy ours / sklearn"] = ours_acc / sk_acc
        result["ratios"]["centred reference fit / ours train"] = tuned_time / ours_full

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"{'arm':<24}{'median s':>12}")
    for k, v in result["seconds"].items():
        print(f"{k:<24}{v:>12.4f}")
    print(f"{'ratio':<32}{'value':>10}")
    for k, v in result["ratios"].items():
        print(f"{k:<32}{v:>10.2f}")
    cpu = result["cpu"]
    print(f"cpu: {cpu['model']} ({cpu['cores']} cores), torch kernels {cpu['torch_isa']}")
    print(f"load average (1 min): {result['loadavg_1m']:.2f}; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
