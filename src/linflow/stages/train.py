"""train@<ds>: minibatch SGD on the prepared train split, one MLflow run per training.

Reads ``data/prepared/<ds>/`` (train, val) and params ``train.<task>`` with the
dataset's overrides (``datasets.<ds>.train``), ``train.threads``, ``train.device``.
Writes ``models/<ds>/`` (safetensors weights, the model card, the parameter
trajectory) and ``reports/<ds>/history.csv`` + ``loss_curve.png``. The maths is
:mod:`linflow.training` (with :mod:`linflow.training.scratch` and :mod:`linflow.training.models`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")

TRAJECTORY_POINTS = 1000  # at most ~this many parameter snapshots per training


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--data", help="prepared split folder (default: data/prepared/<dataset>)")
    p.add_argument("--model", help="model folder to write (default: models/<dataset>)")
    p.add_argument("--reports", help="the dataset's reports folder (default: reports/<dataset>)")


def _check_batch_size(cfg, task: str, n: int, dataset: str) -> None:
    from linflow.core.errors import ConfigError

    if cfg.batch_size != "full" and cfg.batch_size > n:
        raise ConfigError(
            f"params.yaml: train.{task}.batch_size must be <= the train split size "
            f"({n} rows of {dataset}) or 'full', got {cfg.batch_size}"
        )


def _check_device(device: str) -> None:
    import torch

    from linflow.core.errors import ConfigError

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "params.yaml: train.device must be 'cpu' on this machine (no CUDA GPU available), "
            "got 'cuda'"
        )


def _lr_bound(X, cfg, n_classes: int, dataset: str, derived: dict) -> float | None:
    """The full-batch stable step bound, logged, and a warning above it: squared loss
    (exact), cross-entropy (at the start, uniform predictions); none for MAE."""
    from linflow.training import bound_name, lr_stability_bound

    if cfg.loss not in ("mse", "cross_entropy"):
        return None
    lam, bound = lr_stability_bound(
        X, cfg.weight_decay, cfg.momentum, loss=cfg.loss, n_classes=n_classes
    )
    derived.update(lambda_max=lam, lr_bound=bound)
    name = bound_name(cfg.momentum)
    where = " (cross-entropy Hessian at the start)" if cfg.loss == "cross_entropy" else ""
    log.info(
        "train %s: lambda_max = %.4g, stable lr bound %s = %.4g%s", dataset, lam, name, bound, where
    )
    if cfg.lr > bound:
        log.warning(
            "train %s: lr=%g exceeds the full-batch stable step bound %s = %.4g%s; "
            "training may %s",
            dataset, cfg.lr, name, bound, where,
            "diverge" if cfg.loss == "mse" else "oscillate or diverge",
        )  # fmt: skip
    return bound


VAL_SHARE = 8  # streamed: validation rows held in memory take at most budget / this


def _stream_inputs(data: Path, cfg, task: str, device: str, rank: int, world: int, dataset: str):
    """(StreamBatches of this rank's train rows, val X, val y (in memory, up to
    budget / VAL_SHARE), meta) of a streamed table."""
    from linflow.core.chunks import StreamSplit
    from linflow.core.errors import ConfigError
    from linflow.training.stream import StreamBatches

    if cfg.impl != "torch":
        raise ConfigError(
            f"params.yaml: datasets.{dataset}.train.impl = {cfg.impl!r}: streamed tables train "
            "with impl 'torch' (its full-batch gradient sums over chunks, and ranks all-reduce it)"
        )
    split = StreamSplit(data)
    n = split.rows("train")
    _check_batch_size(cfg, task, n, dataset)
    if cfg.batch_size != "full" and cfg.batch_size % world:
        raise ConfigError(
            f"params.yaml: train.{task}.batch_size = {cfg.batch_size} must be divisible by "
            f"datasets.{dataset}.train.processes = {world} (each rank takes batch_size / processes rows)"
        )
    row = split.row_bytes()
    X_val, y_val = split.cache("val", max(1, split.budget // VAL_SHARE // row))
    if X_val.shape[0] < split.rows("val"):
        log.info(
            "train %s: validation loss on the first %d of %d val rows (data.budget_mb / %d)",
            dataset, X_val.shape[0], split.rows("val"), VAL_SHARE,
        )  # fmt: skip
    import torch

    source = StreamBatches(
        split.counts["train"],
        lambda c: split.read(c, ("train",))["train"],
        cfg.batch_size,
        cfg.seed,
        # Two buffers of budget / 8 (one trains while the other fills): a quarter.
        buffer_rows=split.budget // 8 // row,
        rank=rank,
        world=world,
        device=device,
        target=torch.int64 if task == "classification" else torch.float32,
        epochs=cfg.epochs,
        features=len(split.feature_names),
    )
    meta = {
        "task": split.task,
        "class_names": split.class_names,
        "feature_names": split.feature_names,
    }
    return source, X_val, y_val.astype(np.int64 if task == "classification" else np.float32), meta


def _in_torchrun() -> bool:
    import os

    return "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it in every rank


def _closing(batches):
    """Stops the streamed batches' reading thread when training ends (or fails)."""
    import contextlib

    return contextlib.closing(batches) if batches is not None else contextlib.nullcontext()


def _collectives(world: int, timeout_s: float):
    import contextlib

    if world == 1:
        return contextlib.nullcontext()
    from linflow.training.distributed import collective

    return collective("training", timeout_s)


def _transform(data: Path, meta: dict, class_names: list[str]) -> dict:
    """A table's transform.json as split fitted it; for a built-in set, its scaler."""
    from linflow.core.artifacts import array_transform
    from linflow.core.storage import read_json

    if (data / "transform.json").is_file():
        return read_json(data / "transform.json")
    features = [str(f) for f in meta["feature_names"]]
    integer = meta["X"].dtype.kind in "iu"
    return array_transform(features, class_names, read_json(data / "scaler.json"), integer)


PROGRESS_S = 5.0  # a progress line at most this often (and after the first epoch)


def _with_progress(log_epoch, dataset: str, epochs: int):
    """log_epoch, plus a progress line to the console every PROGRESS_S seconds: a
    Fashion-MNIST training of 30 epochs is never silent for long, while the
    thousands of sub-millisecond epochs of a full-batch run print a few lines."""
    start = last = time.perf_counter()

    def on_epoch(row) -> None:
        nonlocal last
        log_epoch(row)
        now = time.perf_counter()
        if row["epoch"] == 1 or now - last >= PROGRESS_S:
            last = now
            metric = next(k for k in row if k.startswith("val_") and k != "val_loss")
            log.info(
                "train %s: epoch %d/%d, %.0f s, train_loss %.5g, val_loss %.5g, %s %.4g",
                dataset, row["epoch"], epochs, now - start, row["train_loss"],
                row["val_loss"], metric, row[metric],
            )  # fmt: skip

    return on_epoch


def run(args, params) -> None:
    from linflow.core.artifacts import check_task, load_split
    from linflow.core.chunks import is_stream

    ds = params.dataset(args.dataset)
    cfg = params.train_config(args.dataset)
    data = Path(args.data or f"data/prepared/{args.dataset}")
    model_dir = Path(args.model or f"models/{args.dataset}")
    reports = Path(args.reports or f"reports/{args.dataset}")
    stream = is_stream(data)
    rank, world = 0, 1
    if cfg.processes > 1 or _in_torchrun():
        from linflow.launch import torchrun

        if not stream:
            from linflow.core.errors import ConfigError

            raise ConfigError(
                f"params.yaml: datasets.{args.dataset}.train.processes = {cfg.processes}: "
                "several processes train streamed tables only (a table entry with "
                "data.stream: true); use 1"
            )
        if not _in_torchrun():
            torchrun.launch(args, cfg.processes, params.train.timeout_s)
            return
        rank, world = torchrun.join(params.train.device, params.train.timeout_s)
    _check_device(params.train.device)

    import torch

    from linflow.core import plots, tracking
    from linflow.core.artifacts import ModelCard
    from linflow.core.results import log_results_of_skipped_stages
    from linflow.core.storage import (
        file_md5,
        read_json,
        save_npz,
        save_weights,
        write_csv,
        write_json,
    )
    from linflow.training import fit, make_engine

    torch.set_num_threads(params.train.threads)
    device = params.train.device
    if device == "cuda":
        from linflow.training.cuda import deterministic

        deterministic()
    target = np.int64 if ds.task == "classification" else np.float32
    batches, allreduce = None, None
    if stream:
        batches, X_val, y_val, meta = _stream_inputs(
            data, cfg, ds.task, device, rank, world, args.dataset
        )
        check_task(data, meta["task"], args.dataset, ds.task)
        n, d = batches.n, X_val.shape[1]
        X = None
        data_file = data / "stream.json"
    else:
        X, y, meta = load_split(data, "train")
        X_val, y_val, _ = load_split(data, "val")
        check_task(data, str(meta["task"]), args.dataset, ds.task)
        _check_batch_size(cfg, ds.task, X.shape[0], args.dataset)
        n, d = X.shape
        data_file = data / "train.npz"
    class_names = [str(c) for c in meta["class_names"]]
    k = len(class_names) if ds.task == "classification" else 1
    derived: dict[str, object] = {"n_train": n, "n_val": X_val.shape[0], "n_features": d}
    if stream:
        derived.update(streamed=True, processes=world)
    # (streamed: the bound of the validation rows held in memory, a sample of the rows)
    lr_bound = _lr_bound(
        X if X is not None else X_val, cfg, len(class_names), args.dataset, derived
    )
    derived["n_params"] = k * d + k

    Xv = torch.from_numpy(X_val).to(device)
    yv = torch.from_numpy(y_val.astype(target)).to(device)
    if X is not None:
        Xt = torch.from_numpy(X).to(device)
        yt = torch.from_numpy(y.astype(target)).to(device)
    else:
        Xt = yt = None
    engine = make_engine(cfg.impl, ds.task, d, len(class_names), cfg, device=device)
    if world > 1:
        from linflow.training import distributed

        engine.sync = distributed.grad_sync(world)
        allreduce = distributed.allreduce_sum
    if rank != 0:  # the others train in step with rank 0, which alone writes and logs
        with _collectives(world, params.train.timeout_s), _closing(batches):
            fit(engine, None, None, Xv, yv, cfg, stream=batches, allreduce=allreduce)
        return

    weights_path = model_dir / "model.safetensors"
    view = tracking.run_view(params, args.dataset)
    run_params = {"dataset": args.dataset, "task": ds.task, **view, "derived": derived}
    # Named after what differs from the committed params (digits lr=0.4), and tagged so.
    source = getattr(args, "params", None)  # the params file (cli's --params)
    changed = (
        tracking.changed_from_committed(source, args.dataset, tracking.flatten(view))
        if source
        else {}
    )
    run_name = tracking.run_name(args.dataset, cfg.impl, changed)
    tags = {
        "linflow.dataset": args.dataset,
        tracking.KIND_TAG: "training",
        "linflow.data_md5": file_md5(data_file),
        "linflow.threads": str(params.train.threads),
        "linflow.device": params.train.device,
        "linflow.version": tracking.version("linflow"),
        "torch.version": torch.__version__,
        "sklearn.version": tracking.version("scikit-learn"),
        "mlflow.version": tracking.version("mlflow"),
    }
    if changed:
        tags["linflow.changed"] = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    with tracking.TrainingRun(args.dataset, run_name, run_params, tags) as run:
        t0 = time.perf_counter()
        with _collectives(world, params.train.timeout_s), _closing(batches):
            result = fit(
                engine, Xt, yt, Xv, yv, cfg,
                on_epoch=_with_progress(run.log_epoch, args.dataset, cfg.epochs),
                lr_bound=lr_bound,
                record_every=max(1, -(-cfg.epochs // TRAJECTORY_POINTS)),
                stream=batches, allreduce=allreduce,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        if stream:
            from linflow.core.chunks import memory_line

            log.info("train %s: streamed%s; %s", args.dataset,
                     f" in {world} processes" if world > 1 else "", memory_line())  # fmt: skip
        metric = next(m for m in result.history[0] if m.startswith("val_") and m != "val_loss")
        last = result.history[-1]
        per_epoch = float(np.median(result.seconds_per_epoch))
        log.info(
            "train %s: %d epochs in %.2f s (%.4f s/epoch median), best epoch %d, "
            "train_loss %.5g, val_loss %.5g, %s %.5g%s",
            args.dataset, result.epochs_run, seconds, per_epoch, result.best_epoch,
            last["train_loss"], last["val_loss"], metric, last[metric],
            f"; stopped early: no better val_loss for {cfg.patience} epochs, best weights kept"
            if result.stopped_early else "",
        )  # fmt: skip
        card = ModelCard(
            dataset=args.dataset,
            task=ds.task,
            impl=cfg.impl,
            loss=cfg.loss,
            n_features=d,
            n_outputs=k,
            n_params=k * d + k,
            feature_names=[str(f) for f in meta["feature_names"]],
            class_names=class_names,
            weights={
                "file": weights_path.name,
                "format": "safetensors",
                "layout": ModelCard.WEIGHTS_LAYOUT,
            },
            train=cfg.model_dump(),
            epochs_run=result.epochs_run,
            best_epoch=result.best_epoch,
            stopped_early=result.stopped_early,
            lr_bound=lr_bound,
        )
        save_weights(
            weights_path,
            {"weight": result.weight, "bias": result.bias},
            {"task": ds.task, "n_features": str(d), "n_outputs": str(k)},
        )
        write_json(model_dir / "model.json", card.to_json())
        # The input transform travels with the weights: raw columns -> model inputs.
        write_json(model_dir / "transform.json", _transform(data, meta, class_names))
        # Parameters along training (epoch 0 = initial): compare plots how SGD
        # approaches the reference. Kept with the model (DVC cache), not in git.
        save_npz(
            model_dir / "trajectory.npz",
            epoch=result.trajectory_epoch,
            weight=result.trajectory_weight,
            bias=result.trajectory_bias,
        )
        header = list(result.history[0])
        write_csv(reports / "history.csv", header, [[r[h] for h in header] for r in result.history])
        plots.loss_curve(
            result.history, reports / "loss_curve.png", f"{args.dataset}: {cfg.impl} {cfg.loss}"
        )
        run.log_metrics(
            {
                "train_seconds": seconds,
                "seconds_per_epoch": per_epoch,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
            }
        )
        run.log_artifacts([reports / "history.csv", reports / "loss_curve.png"])
        run.log_artifacts(
            [weights_path, model_dir / "model.json", model_dir / "transform.json"], "model"
        )
        weights_md5 = file_md5(weights_path)
        run.set_tags({tracking.WEIGHTS_TAG: weights_md5})
        # The MLflow Model (raw columns in, transform inside) and its registry version.
        example = data / "example.json"
        t_model = time.perf_counter()
        version, added = run.log_model(
            model_dir,
            ds.task,
            read_json(example) if example.is_file() else None,
            {tracking.WEIGHTS_TAG: weights_md5, "linflow.data_md5": tags["linflow.data_md5"]},
        )
        log.info(
            "train %s: MLflow model logged in %.2f s; registry linflow-%s version %s%s",
            args.dataset, time.perf_counter() - t_model, args.dataset, version,
            "" if added else " (these weights were registered already)",
        )  # fmt: skip
        donor = run.adopt_results(weights_md5)
        if donor:
            log.info(
                "train %s: same weights as MLflow run %s; its test and compare results "
                "are copied (DVC skips evaluate when the weights did not change)",
                args.dataset,
                donor,
            )
        else:
            log_results_of_skipped_stages(run, args.dataset, model_dir, reports)
