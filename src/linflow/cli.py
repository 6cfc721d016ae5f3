"""``linflow <stage> ...``: one subcommand per DVC stage (+ ``verify``); the wiring layer.

Each stage is thin: parse -> load and validate params and inputs -> call pure
code -> write outputs atomically -> log. Heavy libraries (torch, sklearn,
mlflow, matplotlib) are imported inside the stage that needs them, so
``linflow --help`` stays fast. Paths come from dvc.yaml's ``cmd``; nothing here
hard-codes where files live.

User-caused errors (bad params, bad input files, divergence, an unreachable
tracking server) print one line ``linflow <stage>: error: ...`` and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")

SPLITS = ("train", "val", "test")
TRAJECTORY_POINTS = 1000
# How the primary references are named in titles and the summary.
_REFERENCE_NAMES = {
    "normal_equations": "normal equations",
    "sklearn_logistic_regression": "LogisticRegression",
}


# --- shared helpers -------------------------------------------------------------


def _params(args):
    from linflow.config import load_params

    return load_params(args.params)


def _read_raw(path: Path) -> dict[str, np.ndarray]:
    from linflow.datasets import validate_arrays
    from linflow.storage import load_npz

    arrays = load_npz(path, required=("task", "X", "y", "x_scale", "class_names"))
    validate_arrays(arrays, str(path))
    return arrays


def _load_split(data_dir: Path, which: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Model-ready features (float32, scaled) and targets of one split."""
    from linflow.datasets import validate_arrays
    from linflow.split import apply_scaler
    from linflow.storage import load_npz, read_json

    scaler = read_json(data_dir / "scaler.json")
    path = data_dir / f"{which}.npz"
    arrays = load_npz(path, required=("task", "X", "y", "class_names"))
    validate_arrays(arrays, str(path))
    return apply_scaler(arrays["X"], scaler), arrays["y"], arrays


@contextlib.contextmanager
def _reference_threads(n: int) -> Iterator[None]:
    """One thread for every pool except numpy's BLAS, which gets `n` (all BLAS when
    numpy's cannot be told apart, e.g. one system library shared with scipy)."""
    from threadpoolctl import ThreadpoolController

    ctl = ThreadpoolController()
    blas = [c.filepath for c in ctl.lib_controllers if c.user_api == "blas"]
    numpy_blas = [p for p in blas if "numpy" in Path(p).parent.name] or blas
    with ctl.limit(limits=1):
        if n > 1 and numpy_blas:
            with ctl.select(filepath=numpy_blas).limit(limits=n):
                yield
        else:
            yield


def _check_device(device: str) -> None:
    import torch

    from linflow.config import ConfigError

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "params.yaml: train.device must be 'cpu' on this machine (no CUDA GPU available), "
            "got 'cuda'"
        )


# --- stages ---------------------------------------------------------------------


def cmd_prepare(args) -> None:
    from linflow.datasets import load_source, validate_arrays
    from linflow.storage import save_npz

    params = _params(args)
    cfg = params.dataset(args.dataset)
    raw = load_source(args.dataset, cfg, params.seed)
    arrays = raw.to_arrays()
    validate_arrays(arrays, f"dataset {args.dataset}")
    save_npz(args.out, **arrays)
    log.info("prepare %s: %d rows x %d features -> %s", args.dataset, *raw.X.shape, args.out)


def cmd_split(args) -> None:
    from linflow.datasets import make_rng
    from linflow.split import fit_scaler, split_indices
    from linflow.storage import save_npz, write_json

    params = _params(args)
    cfg = params.dataset(args.dataset)
    raw = _read_raw(Path(args.raw))
    if str(raw["task"]) != cfg.task:
        from linflow.storage import DataError

        raise DataError(
            f"{args.raw}: holds {raw['task']} data but datasets.{args.dataset}.task is {cfg.task}"
        )
    s = params.split
    y = raw["y"] if cfg.task == "classification" else None
    idx = split_indices(
        raw["y"].shape[0],
        (s.train, s.val, s.test),
        make_rng(params.seed, f"split/{args.dataset}"),
        y=y,
        is_test=raw.get("is_test"),
    )
    out = Path(args.out)
    scaler = fit_scaler(raw["X"][idx[0]], float(raw["x_scale"]), cfg.standardize)
    keep = {k: v for k, v in raw.items() if k not in ("X", "y", "is_test")}
    for name, rows in zip(SPLITS, idx, strict=True):
        save_npz(out / f"{name}.npz", X=raw["X"][rows], y=raw["y"][rows], index=rows, **keep)
    write_json(out / "scaler.json", scaler)
    log.info("split %s: train/val/test = %d/%d/%d", args.dataset, *(i.size for i in idx))


def cmd_train(args) -> None:
    from linflow.config import ConfigError

    params = _params(args)
    ds = params.dataset(args.dataset)
    cfg = params.train_config(args.dataset)
    data = Path(args.data)
    X, y, meta = _load_split(data, "train")
    X_val, y_val, _ = _load_split(data, "val")
    _check_task(data, str(meta["task"]), args.dataset, ds.task)
    if cfg.batch_size != "full" and cfg.batch_size > X.shape[0]:
        raise ConfigError(
            f"params.yaml: train.{ds.task}.batch_size must be <= the train split size "
            f"({X.shape[0]} rows of {args.dataset}) or 'full', got {cfg.batch_size}"
        )
    _check_device(params.train.device)

    import torch

    from linflow import plots, tracking
    from linflow.storage import file_md5, save_npz, save_weights, write_csv, write_json
    from linflow.training import bound_name, fit, lr_stability_bound, make_engine

    torch.set_num_threads(params.train.threads)
    class_names = [str(c) for c in meta["class_names"]]
    n_classes = len(class_names)
    n, d = X.shape
    lr_bound = None
    derived: dict[str, object] = {"n_train": n, "n_val": X_val.shape[0], "n_features": d}
    if ds.task == "regression" and cfg.loss == "mse":
        lam, lr_bound = lr_stability_bound(X, cfg.weight_decay, cfg.momentum)
        derived.update(lambda_max=lam, lr_bound=lr_bound)
        name = bound_name(cfg.momentum)
        log.info(
            "train %s: lambda_max = %.4g, stable lr bound %s = %.4g",
            args.dataset,
            lam,
            name,
            lr_bound,
        )
        if cfg.lr > lr_bound:
            log.warning(
                "train %s: lr=%g exceeds the full-batch stable step bound %s = %.4g; "
                "training may diverge",
                args.dataset,
                cfg.lr,
                name,
                lr_bound,
            )
    k = n_classes if ds.task == "classification" else 1
    derived["n_params"] = k * d + k

    Xt, Xv = torch.from_numpy(X), torch.from_numpy(X_val)
    if ds.task == "classification":
        yt, yv = torch.from_numpy(y.astype(np.int64)), torch.from_numpy(y_val.astype(np.int64))
    else:
        yt, yv = torch.from_numpy(y.astype(np.float32)), torch.from_numpy(y_val.astype(np.float32))
    engine = make_engine(cfg.impl, ds.task, d, n_classes, cfg)

    model_dir, reports = Path(args.model), Path(args.reports)
    weights_path = model_dir / "model.safetensors"
    run_params = {
        "dataset": args.dataset,
        "task": ds.task,
        "seed": params.seed,
        "data": ds.model_dump(),
        "split": params.split.model_dump(),
        "train": {
            "threads": params.train.threads,
            "device": params.train.device,
            **cfg.model_dump(),
        },
        "derived": derived,
    }
    import os

    exp = os.environ.get("DVC_EXP_NAME")
    run_name = f"{args.dataset}-{cfg.impl}" + (f"-{exp}" if exp else "")
    tags = {
        "linflow.dataset": args.dataset,
        tracking.KIND_TAG: "training",
        "linflow.data_md5": file_md5(data / "train.npz"),
        "linflow.threads": str(params.train.threads),
        "linflow.device": params.train.device,
        "linflow.version": _version("linflow"),
        "torch.version": torch.__version__,
        "sklearn.version": _version("scikit-learn"),
        "mlflow.version": _version("mlflow"),
    }
    with tracking.TrainingRun(args.dataset, run_name, run_params, tags) as run:
        t0 = time.perf_counter()
        result = fit(
            engine,
            Xt,
            yt,
            Xv,
            yv,
            cfg,
            on_epoch=run.log_epoch,
            lr_bound=lr_bound,
            # At most ~TRAJECTORY_POINTS snapshots, so long runs keep a small file.
            record_every=max(1, -(-cfg.epochs // TRAJECTORY_POINTS)),
        )
        seconds = time.perf_counter() - t0
        metric = next(k for k in result.history[0] if k.startswith("val_") and k != "val_loss")
        last = result.history[-1]
        log.info(
            "train %s: %d epochs in %.2f s (%.4f s/epoch median), best epoch %d, "
            "train_loss %.5g, val_loss %.5g, %s %.5g",
            args.dataset,
            result.epochs_run,
            seconds,
            float(np.median(result.seconds_per_epoch)),
            result.best_epoch,
            last["train_loss"],
            last["val_loss"],
            metric,
            last[metric],
        )
        card = {
            "dataset": args.dataset,
            "task": ds.task,
            "impl": cfg.impl,
            "loss": cfg.loss,
            "n_features": d,
            "n_outputs": k,
            "n_params": k * d + k,
            "feature_names": [str(f) for f in meta["feature_names"]],
            "class_names": class_names,
            "weights": {
                "file": weights_path.name,
                "format": "safetensors",
                "layout": "weight (n_outputs, n_features), bias (n_outputs,)",
            },
            "train": cfg.model_dump(),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            # Full-batch stable step bound 2/lambda_max (squared loss only), for the record.
            "lr_bound": lr_bound,
        }
        save_weights(
            weights_path,
            {"weight": result.weight, "bias": result.bias},
            {"task": ds.task, "n_features": str(d), "n_outputs": str(k)},
        )
        write_json(model_dir / "model.json", card)
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
                "seconds_per_epoch": float(np.median(result.seconds_per_epoch)),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
            }
        )
        run.log_artifacts([reports / "history.csv", reports / "loss_curve.png"])
        run.log_artifacts([weights_path, model_dir / "model.json"], "model")
        weights_md5 = file_md5(weights_path)
        run.set_tags({tracking.WEIGHTS_TAG: weights_md5})
        donor = run.adopt_results(weights_md5)
        if donor:
            log.info(
                "train %s: same weights as MLflow run %s; its test and compare results "
                "are copied (DVC skips evaluate when the weights did not change)",
                args.dataset,
                donor,
            )


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def cmd_evaluate(args) -> None:
    from linflow import metrics, plots, tracking
    from linflow.storage import DataError, file_md5, load_weights, read_json, write_csv, write_json

    model_dir, reports = Path(args.model), Path(args.reports)
    card = read_json(model_dir / "model.json")
    tensors, _ = load_weights(model_dir / card["weights"]["file"])
    W, b = tensors["weight"], tensors["bias"]  # (k, d), (k,)
    X, y, _ = _load_split(Path(args.data), "test")
    if X.shape[1] != W.shape[1]:
        raise DataError(
            f"{args.data}/test.npz: has {X.shape[1]} features, the model expects {W.shape[1]}"
        )
    out = metrics.predict_linear(X, W, b)  # (n, k)
    title = f"{args.dataset} test"
    if card["task"] == "regression":
        y_hat = out[:, 0]
        test = metrics.regression_metrics(y, y_hat)
        write_csv(
            reports / "predictions.csv",
            ["actual", "predicted"],
            list(zip(y.tolist(), y_hat.tolist(), strict=True)),
        )
        plots.prediction_scatter(y, y_hat, reports / "predictions.png", title)
        scalars = test
    else:
        res = metrics.classification_metrics(y, out)
        names = card["class_names"]
        y_pred = out.argmax(axis=1)
        write_csv(
            reports / "predictions.csv",
            ["actual", "predicted"],
            [[names[a], names[p]] for a, p in zip(y.tolist(), y_pred.tolist(), strict=True)],
        )
        plots.confusion_png(
            np.array(res["confusion_matrix"]), names, reports / "predictions.png", title
        )
        scalars = {"accuracy": res["accuracy"], "cross_entropy": res["cross_entropy"]}
        test = {
            **scalars,
            "per_class_accuracy": dict(zip(names, res["per_class_accuracy"], strict=True)),
        }
    doc = {
        "dataset": args.dataset,
        "task": card["task"],
        "n_test": int(y.shape[0]),
        "n_params": card["n_params"],
        "test": test,
    }
    # metrics.json (DVC metrics) holds only the numbers a user compares across
    # experiments; evaluation.json the rest (sizes, per-class accuracies).
    write_json(reports / "evaluation.json", doc)
    # Keyed by dataset: `dvc exp show` names a column by its key alone when no other
    # metrics file has it (digits.test.accuracy, not reports/digits/metrics.json:...).
    write_json(reports / "metrics.json", {args.dataset: {"test": scalars}})
    log.info("evaluate %s: %s", args.dataset, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))
    tracking.log_to_training_run(
        args.dataset,
        file_md5(model_dir / card["weights"]["file"]),
        metrics={f"test_{k}": v for k, v in scalars.items()},
        artifacts=[
            reports / "metrics.json",
            reports / "evaluation.json",
            reports / "predictions.png",
        ],
    )


def _check_task(path: Path, found: str, dataset: str, task: str) -> None:
    from linflow.config import ConfigError

    if found != task:
        raise ConfigError(f"{path}: holds {found} data but datasets.{dataset}.task is {task}")


def cmd_reference(args) -> None:
    params = _params(args)
    ds = params.dataset(args.dataset)
    cfg = params.train_config(args.dataset)
    data = Path(args.data)
    X, y, meta = _load_split(data, "train")
    X_test, y_test, _ = _load_split(data, "test")
    _check_task(data, str(meta["task"]), args.dataset, ds.task)

    import sklearn.linear_model  # noqa: F401  # imported here so fit times exclude it

    from linflow import reference, tracking
    from linflow.config import ConfigError
    from linflow.storage import DataError, file_md5, write_json

    wd, n = cfg.weight_decay, X.shape[0]
    fits: dict[str, reference.ReferenceFit] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, dict] = {}
    # A fixed thread count, never the machine's: the bytes of reference.json depend on
    # it. numpy's BLAS gets reference.threads (Fashion-MNIST lbfgs: 14 s with 2, 18 s
    # with 1), every other pool one: 2 threads for scipy's BLAS or sklearn's OpenMP as
    # well made the same fit slower (21-23 s) by oversubscribing this 2-core machine.
    with _reference_threads(params.reference.threads):
        if ds.task == "regression":
            todo = {
                "normal_equations": lambda: reference.fit_normal_equations(X, y, wd),
                "sklearn_linear_regression": lambda: reference.fit_sklearn_linear(X, y),
                "sklearn_ridge": lambda: reference.fit_sklearn_ridge(X, y, wd),
            }
            extra["sklearn_ridge"] = {"alpha": reference.ridge_alpha(n, wd)}
            extra["sklearn_linear_regression"] = {"note": "ordinary least squares, no decay"}
        else:
            k = len(meta["class_names"])
            rc = params.reference
            todo = {
                "sklearn_logistic_regression": lambda: reference.fit_logistic_regression(
                    X, y, k, wd, rc.max_iter, rc.tol
                )
            }
            # C null means no penalty (weight_decay 0).
            extra["sklearn_logistic_regression"] = {
                "C": reference.logistic_C(n, wd, k),
                "solver": "lbfgs",
                "max_iter": rc.max_iter,
                "tol": rc.tol,
            }
        for name, fit_ref in todo.items():
            t0 = time.perf_counter()
            try:
                fits[name] = fit_ref()
            except ValueError as exc:
                raise DataError(f"{data}/train.npz: {name}: {exc}") from None
            seconds[name] = time.perf_counter() - t0
    primary = next(iter(fits))
    for name, f in fits.items():
        if not f.converged:
            hint = (
                "; with weight_decay 0 separable classes have no finite optimum, "
                f"set train.{ds.task}.weight_decay > 0"
                if wd == 0
                else ""
            )
            raise ConfigError(
                f"params.yaml: reference.max_iter={params.reference.max_iter} is too few: "
                f"{name} did not converge to reference.tol={params.reference.tol:g} on "
                f"{args.dataset}; raise reference.max_iter{hint}"
            )
    refs = {}
    for name, f in fits.items():
        train_loss, train_objective = reference.objective(X, y, f.weight, f.bias, cfg.loss, wd)
        refs[name] = {
            **extra.get(name, {}),
            "weight": f.weight,
            "bias": f.bias,
            "train_loss": train_loss,
            "train_objective": train_objective,
            "test": reference.split_metrics(ds.task, X_test, y_test, f.weight, f.bias),
            "rel_l2_to_primary": reference.relative_l2(f.weight, fits[primary].weight),
        }
        if f.n_iter is not None:
            refs[name]["n_iter"] = f.n_iter
    doc = {
        "dataset": args.dataset,
        "task": ds.task,
        "loss": cfg.loss,
        "weight_decay": wd,
        "n_train": n,
        "n_test": int(X_test.shape[0]),
        "primary": primary,
        "objective": (
            "mean(loss) + (weight_decay / 2) * ||W||^2 on the train split (bias unpenalised)"
        ),
        "layout": "weight (n_outputs, n_features), bias (n_outputs,)",
        "references": refs,
    }
    out = Path(args.out)
    write_json(out, doc)
    for name in fits:
        scores = ", ".join(f"{k}={v:.5g}" for k, v in refs[name]["test"].items())
        log.info(
            "reference %s: %s fitted in %.4f s; test %s", args.dataset, name, seconds[name], scores
        )

    # The references get their own MLflow run in the dataset's experiment, with the
    # same test metric names as training runs so the UI compares them side by side.
    run_params = {
        "dataset": args.dataset,
        "task": ds.task,
        "weight_decay": wd,
        "n_train": n,
        "primary": primary,
        "reference": params.reference.model_dump(),
        **{f"{name}.{k}": v for name, e in extra.items() for k, v in e.items()},
    }
    tags = {
        "linflow.dataset": args.dataset,
        tracking.KIND_TAG: "reference",
        "linflow.data_md5": file_md5(data / "train.npz"),
        "sklearn.version": _version("scikit-learn"),
    }
    with tracking.TrainingRun(args.dataset, f"{args.dataset}-reference", run_params, tags) as run:
        run.log_metrics(
            {
                **{f"fit_seconds.{name}": s for name, s in seconds.items()},
                **{f"test_{k}": v for k, v in refs[primary]["test"].items()},
                "train_objective": refs[primary]["train_objective"],
            }
        )
        run.log_artifacts([out])


def cmd_compare(args) -> None:
    params = _params(args)
    ds = params.dataset(args.dataset)
    cfg = params.train_config(args.dataset)
    model_dir, reports, data = Path(args.model), Path(args.reports), Path(args.data)

    from linflow import plots, reference, tracking
    from linflow.storage import (
        DataError,
        file_md5,
        load_npz,
        load_weights,
        read_json,
        write_csv,
        write_json,
    )

    card = read_json(model_dir / "model.json")
    ref_path = Path(args.reference)
    ref_doc = read_json(ref_path)
    weights_path = model_dir / card["weights"]["file"]
    tensors, _ = load_weights(weights_path)
    W, b = tensors["weight"], tensors["bias"]  # (k, d), (k,)
    X, y, meta = _load_split(data, "train")
    X_test, y_test, _ = _load_split(data, "test")
    _check_task(data, str(meta["task"]), args.dataset, ds.task)
    for what, found in (("model", card["task"]), ("reference", ref_doc["task"])):
        if found != ds.task:
            raise DataError(
                f"{model_dir if what == 'model' else ref_path}: {what} is for task {found}, "
                f"datasets.{args.dataset}.task is {ds.task} (run dvc repro)"
            )
    wd = card["train"]["weight_decay"]
    if ref_doc["weight_decay"] != wd or ref_doc["loss"] != card["loss"]:
        raise DataError(
            f"{ref_path}: fitted for weight_decay={ref_doc['weight_decay']}, "
            f"loss={ref_doc['loss']} but {model_dir} was trained with weight_decay={wd}, "
            f"loss={card['loss']} (run dvc repro)"
        )
    ref = ref_doc["references"][ref_doc["primary"]]
    Wr, br = np.asarray(ref["weight"], dtype=np.float64), np.asarray(ref["bias"])
    if Wr.shape != W.shape or X.shape[1] != W.shape[1]:
        raise DataError(
            f"{ref_path}: reference weights {Wr.shape}, model weights {W.shape} and "
            f"{X.shape[1]} features in {data} do not match (run dvc repro)"
        )

    result = reference.compare_to_reference(
        ds.task, card["loss"], wd, (W, b), (Wr, br), (X, y), (X_test, y_test)
    )
    tolerances = params.compare.for_task(ds.task).model_dump()
    if card["loss"] == "mae":
        # The closed form minimises squared loss; an MAE model is not meant to reach it.
        log.warning(
            "compare %s: loss mae: the least-squares reference is not its optimum; "
            "weight_rel_l2 and train_objective_rel_gap are reported, not checked",
            args.dataset,
        )
        tolerances.update(weight_rel_l2=None, train_objective_rel_gap=None)
    checks = reference.check_tolerances(reference.gap_values(result), tolerances)
    failure = reference.failure_message(args.dataset, ds.task, checks, cfg)
    summary = ", ".join(
        f"{n}={c['value']:.3g}"
        + ("" if c["passed"] is None else (" ok" if c["passed"] else " FAIL"))
        for n, c in checks.items()
    )
    log.info("compare %s vs %s: %s", args.dataset, ref_doc["primary"], summary)

    weights_md5 = file_md5(weights_path)
    mlflow_metrics = {f"ref_{n}": c["value"] for n, c in checks.items()}
    mlflow_metrics |= {f"ref_test_{k}": v for k, v in result["test"]["reference"].items()}
    mlflow_metrics["ref_train_loss_gap"] = result["train_loss"]["gap"]
    if failure:
        # Log the gaps first: the MLflow run shows why its comparison failed.
        tracking.log_to_training_run(
            args.dataset, weights_md5, metrics=mlflow_metrics, tags={"linflow.compare": "fail"}
        )
        raise reference.ToleranceError(failure)

    traj = load_npz(model_dir / "trajectory.npz", required=("epoch", "weight"))
    distance = reference.trajectory_distance(ds.task, traj["weight"], Wr)
    write_csv(
        reports / "distance.csv",
        ["epoch", "weight_rel_l2"],
        list(zip(traj["epoch"].tolist(), distance.tolist(), strict=True)),
    )
    plots.distance_to_reference(
        traj["epoch"],
        distance,
        reports / "distance_to_reference.png",
        f"{args.dataset}: ours ({card['impl']}, batch {card['train']['batch_size']}) "
        f"vs {_REFERENCE_NAMES.get(ref_doc['primary'], ref_doc['primary'])}",
        tolerances.get("weight_rel_l2"),
    )
    fit_png = reports / "reference_fit.png"
    title = (
        f"{args.dataset}: ours vs {_REFERENCE_NAMES.get(ref_doc['primary'], ref_doc['primary'])}"
    )
    if ds.task == "regression" and W.shape[1] == 1:
        plots.reference_fit(
            None,
            None,
            fit_png,
            title,
            x=X[:, 0],
            y=y,
            lines=((float(W[0, 0]), float(b[0])), (float(Wr[0, 0]), float(br[0]))),
        )
    else:
        from linflow.metrics import predict_linear

        ours_out = predict_linear(X_test, W, b)
        ref_out = predict_linear(X_test, Wr, br)
        if ds.task == "classification":  # logits are comparable only after centring
            ours_out = ours_out - ours_out.mean(axis=1, keepdims=True)
            ref_out = ref_out - ref_out.mean(axis=1, keepdims=True)
        plots.reference_fit(ours_out, ref_out, fit_png, title)
    doc = {
        "dataset": args.dataset,
        "task": ds.task,
        "impl": card["impl"],
        "reference": ref_doc["primary"],
        "n_test": int(X_test.shape[0]),
        "n_params": card["n_params"],
        **result,
        "checks": checks,
        "passed": True,
    }
    out = reports / "compare.json"
    write_json(out, doc)
    # DVC metrics: only the gaps the gate checks (compare.json holds every diagnostic).
    write_json(
        reports / "gaps.json",
        {args.dataset: {n: c["value"] for n, c in checks.items() if c["tolerance"] is not None}},
    )
    tracking.log_to_training_run(
        args.dataset,
        weights_md5,
        metrics=mlflow_metrics,
        artifacts=[out, reports / "distance_to_reference.png", fit_png],
        tags={"linflow.compare": "pass"},
    )


def _fmt_value(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"


def cmd_report(args) -> None:
    from linflow.storage import read_json, write_json, write_text

    reports = Path(args.reports)
    lines = [
        "# linflow summary",
        "",
        "Test-split metrics per dataset, ours against the reference fitted on the same "
        "train split (written by `linflow report`; do not edit).",
        "",
        "| dataset | task | model | params | n_test | reference | metric | ours | reference "
        "| delta |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    gaps = [
        "",
        "## Gaps to the reference",
        "",
        "Checked against params.yaml `compare:` (compare fails the pipeline on a miss, "
        "so a written summary means every checked gap passed; `n/a` = reported only).",
        "",
        "| dataset | gap | value | bound | tolerance | result |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for name in args.datasets:
        c = read_json(reports / name / "compare.json")  # our test metrics, the reference's
        m = {**c, "test": c["test"]["ours"]}
        model = "LinearRegression" if m["task"] == "regression" else "SoftmaxRegression"
        ref = _REFERENCE_NAMES.get(c["reference"], c["reference"])
        keys = ("rmse", "r2", "mae") if m["task"] == "regression" else ("accuracy", "cross_entropy")
        for i, key in enumerate(keys):
            head = (
                f"| {name} | {m['task']} | {model} | {m['n_params']} | {m['n_test']} | {ref} |"
                if i == 0
                else "| | | | | | |"
            )
            delta = c["test"]["delta"][key]
            lines.append(
                f"{head} {key} | {m['test'][key]:.4f} | {c['test']['reference'][key]:.4f} "
                f"| {delta:+.4f} |"
                if abs(delta) >= 5e-5 or delta == 0
                else f"{head} {key} | {m['test'][key]:.4f} | {c['test']['reference'][key]:.4f} "
                f"| {delta:+.1e} |"
            )
        for j, (gap, check) in enumerate(c["checks"].items()):
            result = {True: "pass", False: "FAIL", None: "reported"}[check["passed"]]
            bound = "<=" if check["bound"] == "max" else ">="
            lines_gap = (
                f"| {name if j == 0 else ''} | {gap} | {_fmt_value(check['value'])} | {bound} "
                f"| {_fmt_value(check['tolerance'])} | {result} |"
            )
            gaps.append(lines_gap)
    write_text(args.out, "\n".join(lines + gaps) + "\n")
    log.info("report: %d datasets -> %s", len(args.datasets), args.out)
    if args.platform:
        from linflow.verify.platform import describe, fingerprint

        params = _params(args)
        fp = fingerprint({"train": params.train.threads, "reference": params.reference.threads})
        write_json(args.platform, fp)
        log.info("report: numeric platform %s -> %s", describe(fp), args.platform)


def cmd_verify(args) -> int:
    """Re-run the pipeline (forced) and compare it with the committed dvc.lock and outputs."""
    from linflow.verify.rerun import run_verify

    params = _params(args)
    threads = {"train": params.train.threads, "reference": params.reference.threads}
    report = run_verify(Path.cwd(), params.verify, list(args.targets), threads)
    print(report.render())
    if args.json:
        from linflow.storage import write_json

        write_json(args.json, report.to_json())
    return 0 if report.ok else 1


def cmd_portability(args) -> int:
    """Re-run the gate under emulated CPU variants; print each number's largest move."""
    from linflow.verify.portability import VARIANTS, run_portability

    _params(args)  # a bad params.yaml fails here, once, not in every variant
    names = args.variants or list(VARIANTS)
    text, ok = run_portability(Path.cwd(), names, log)
    print(text)
    return 0 if ok else 1


# --- entry point ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linflow", description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")

    s = sub.add_parser("prepare", help="build data/raw/<ds>.npz from its source")
    s.add_argument("dataset")
    s.add_argument("--out", required=True, help="raw npz to write")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("split", help="train/val/test split + scaler")
    s.add_argument("dataset")
    s.add_argument("--raw", required=True, help="raw npz to read")
    s.add_argument("--out", required=True, help="folder for {train,val,test}.npz and scaler.json")
    s.set_defaults(func=cmd_split)

    for name, func, text in (
        ("train", cmd_train, "train the model by minibatch SGD (MLflow run)"),
        ("evaluate", cmd_evaluate, "test-split metrics of the trained model"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("dataset")
        s.add_argument("--data", required=True, help="prepared split folder")
        s.add_argument("--model", required=True, help="model folder")
        s.add_argument("--reports", required=True, help="reports folder of the dataset")
        s.set_defaults(func=func)

    s = sub.add_parser("reference", help="fit the closed-form / classical references")
    s.add_argument("dataset")
    s.add_argument("--data", required=True, help="prepared split folder")
    s.add_argument("--out", required=True, help="reference json to write")
    s.set_defaults(func=cmd_reference)

    s = sub.add_parser("compare", help="gaps between the trained model and the reference")
    s.add_argument("dataset")
    s.add_argument("--data", required=True, help="prepared split folder")
    s.add_argument("--model", required=True, help="model folder")
    s.add_argument("--reference", required=True, help="reference json")
    s.add_argument("--reports", required=True, help="reports folder of the dataset")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser(
        "verify",
        help="re-run the pipeline (dvc repro -f) and check it reproduces the committed results",
        description="Force a re-run of the pipeline, check a second dvc repro runs nothing, "
        "and compare every output with the committed dvc.lock and files: bit-identical, "
        "metrics within params.yaml verify.tolerance, data exact, lock current. "
        "Exit 1 with a table of what differs.",
    )
    s.add_argument(
        "targets",
        nargs="*",
        help="stages to re-run with their upstream stages (default: the whole pipeline)",
    )
    s.add_argument("--json", help="also write the report as JSON to this file")
    s.set_defaults(func=cmd_verify)

    from linflow.verify.portability import VARIANTS

    s = sub.add_parser(
        "portability",
        help="run verify as other CPUs would (emulated kernel variants) and print the spreads",
    )
    s.add_argument(
        "variants", nargs="*", choices=[[], *VARIANTS], help="variants to run (default: all)"
    )
    s.set_defaults(func=cmd_portability)

    s = sub.add_parser("report", help="reports/summary.md over all datasets")
    s.add_argument("datasets", nargs="+")
    s.add_argument("--reports", required=True, help="reports root folder")
    s.add_argument("--out", required=True, help="summary markdown to write")
    s.add_argument("--platform", help="where to record the numeric platform (json)")
    s.set_defaults(func=cmd_report)
    return p


def _on_sigterm(signum, frame):
    from linflow.tracking import Interrupted

    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="linflow %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from linflow.config import ConfigError
    from linflow.storage import DataError

    user_errors: tuple[type[BaseException], ...] = (ConfigError, DataError)
    try:
        code = args.func(args)
    except user_errors as exc:
        print(f"linflow {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Writes go through storage.atomic_path (WriteError above); anything else the
        # filesystem refuses (a read, a folder) is still the user's environment, not a bug.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"linflow {args.stage}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Divergence and tracking errors are user-facing too; import lazily to keep --help light.
        name = type(exc).__name__
        if name in ("DivergenceError", "TrackingError", "ToleranceError"):
            print(f"linflow {args.stage}: error: {exc}", file=sys.stderr)
            return 1
        raise
    except (KeyboardInterrupt, BaseException) as exc:
        if type(exc).__name__ == "Interrupted" or isinstance(exc, KeyboardInterrupt):
            print(f"linflow {args.stage}: interrupted", file=sys.stderr)
            return 130 if isinstance(exc, KeyboardInterrupt) else 143
        raise
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
