"""reference@<ds>: the classical solutions of the train objective, on the same split.

Regression: the normal equations (lstsq), scikit-learn's LinearRegression and
Ridge with alpha matched to the weight decay; classification: scikit-learn's
LogisticRegression (L2 matched). Reads ``data/prepared/<ds>/`` and params
``train.<task>.{loss, weight_decay}`` and ``reference``; writes
``reports/<ds>/reference.json`` and an MLflow run of kind ``reference``. The
maths is :mod:`linflow.reference`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--data", help="prepared split folder (default: data/prepared/<dataset>)")
    p.add_argument("--out", help="reference json (default: reports/<dataset>/reference.json)")


@contextlib.contextmanager
def reference_threads(n: int) -> Iterator[None]:
    """One thread for every pool except numpy's BLAS, which gets `n` (all BLAS when
    numpy's cannot be told apart, e.g. one system library shared with scipy).

    A fixed count, never the machine's: the bytes of reference.json depend on it.
    Fashion-MNIST's lbfgs: 14 s with 2, 18 s with 1; 2 threads for scipy's BLAS or
    sklearn's OpenMP as well made it slower (21-23 s) by oversubscribing 2 cores.
    """
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


@contextlib.contextmanager
def _heartbeat(dataset: str, name: str, every: float = 10.0):
    """A line every `every` seconds while a fit runs (Fashion-MNIST's takes ~15 s in
    one lbfgs call, which reports nothing until it returns)."""
    import threading

    done = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            log.info("reference %s: fitting %s, %.0f s so far", dataset, name,
                     time.perf_counter() - start)  # fmt: skip

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _progress(dataset: str, rc):
    def report(iterations: int, seconds: float) -> None:
        log.info(
            "reference %s: lbfgs %d iterations in %.0f s, not converged yet "
            "(stops at reference.max_iter=%d or reference.max_seconds=%g)",
            dataset, iterations, seconds, rc.max_iter, rc.max_seconds,
        )  # fmt: skip

    return report


def _fits(
    task: str, X, y, k: int, wd: float, rc, dataset: str = "", l1: float = 0.0
) -> tuple[dict, dict]:
    """(name -> zero-argument fit, name -> settings recorded beside it); primary first."""
    from linflow import reference

    if task == "regression" and l1:
        # The L1 objective has no closed form: coordinate descent is the reference.
        alpha, rho = reference.lasso_alpha(wd, l1)
        name = "sklearn_lasso" if rho == 1.0 else "sklearn_elastic_net"
        todo = {name: lambda: reference.fit_sklearn_lasso(X, y, wd, l1)}
        return todo, {name: {"alpha": alpha, "l1_ratio": rho, "tol": 1e-12}}
    if task == "regression":
        todo = {
            "normal_equations": lambda: reference.fit_normal_equations(X, y, wd),
            "sklearn_linear_regression": lambda: reference.fit_sklearn_linear(X, y),
            "sklearn_ridge": lambda: reference.fit_sklearn_ridge(X, y, wd),
        }
        extra = {
            "sklearn_ridge": {"alpha": reference.ridge_alpha(X.shape[0], wd)},
            "sklearn_linear_regression": {"note": "ordinary least squares, no decay"},
        }
        return todo, extra
    todo = {
        "sklearn_logistic_regression": lambda: reference.fit_logistic_regression(
            X, y, k, wd, rc.max_iter, rc.tol, rc.max_seconds, _progress(dataset, rc)
        )
    }
    # C null means no penalty (weight_decay 0).
    extra = {
        "sklearn_logistic_regression": {
            "C": reference.logistic_C(X.shape[0], wd, k),
            "solver": "lbfgs",
            "max_iter": rc.max_iter,
            "tol": rc.tol,
        }
    }
    return todo, extra


def _check_determined(task: str, shape, wd: float, l1: float, data: Path, dataset: str) -> None:
    """Least squares with at least as many features as train rows has infinitely many
    exact fits: refuse it unless a penalty makes the optimum unique."""
    from linflow.core.errors import DataError

    n, d = shape
    if task == "regression" and d + 1 > n and wd == 0 and l1 == 0:
        raise DataError(
            f"{data}/train.npz: {d} features (after one-hot encoding) and a bias but only {n} "
            "train rows: least squares is underdetermined (infinitely many exact fits); the "
            "reference would be lstsq's minimum-norm solution, which SGD need not reach. Set "
            f"datasets.{dataset}.train.weight_decay > 0 (ridge: one optimum, the reference "
            "then), or drop columns, or add rows"
        )


def run(args, params) -> None:
    from linflow.core.artifacts import check_task, load_split

    ds = params.dataset(args.dataset)
    cfg = params.train_config(args.dataset)
    data = Path(args.data or f"data/prepared/{args.dataset}")
    out = Path(args.out or f"reports/{args.dataset}/reference.json")
    from linflow.core.chunks import is_stream

    if is_stream(data):
        _reference_stream(args.dataset, ds.task, cfg, params.reference, data, out)
        return
    X, y, meta = load_split(data, "train")
    X_test, y_test, _ = load_split(data, "test")
    check_task(data, str(meta["task"]), args.dataset, ds.task)

    import sklearn.linear_model  # noqa: F401  # imported here so fit times exclude it

    from linflow import reference
    from linflow.core.artifacts import ReferenceDoc
    from linflow.core.errors import DataError
    from linflow.core.storage import write_json

    wd, n, rc = cfg.weight_decay, X.shape[0], params.reference
    _check_determined(ds.task, X.shape, wd, cfg.l1, data, args.dataset)
    todo, extra = _fits(ds.task, X, y, len(meta["class_names"]), wd, rc, args.dataset, cfg.l1)
    fits: dict[str, reference.ReferenceFit] = {}
    seconds: dict[str, float] = {}
    with reference_threads(rc.threads):
        for name, fit_ref in todo.items():
            t0 = time.perf_counter()
            try:
                with _heartbeat(args.dataset, name):
                    fits[name] = fit_ref()
            except ValueError as exc:
                raise DataError(f"{data}/train.npz: {name}: {exc}") from None
            seconds[name] = time.perf_counter() - t0
    primary = next(iter(fits))
    for name, f in fits.items():
        if not f.converged:
            bound = {"max_iter": f"reference.max_iter={rc.max_iter}"}.get(
                f.stopped_by, f"reference.max_seconds={rc.max_seconds:g}"
            )
            hint = (
                "with weight_decay 0, separable classes have no finite optimum (the loss "
                "only approaches 0); any weight_decay > 0 has one"
                if wd == 0
                else "raise the bound for a closer reference"
            )
            log.warning(
                "reference %s: %s did NOT converge to reference.tol=%g: stopped by %s after "
                "%d iterations; its numbers are where lbfgs stopped, not the optimum; %s",
                args.dataset, name, rc.tol, bound, f.n_iter, hint,
            )  # fmt: skip
    refs = {}
    for name, f in fits.items():
        train_loss, train_objective = reference.objective(
            X, y, f.weight, f.bias, cfg.loss, wd, cfg.l1
        )
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
        if f.precision is not None:
            refs[name]["precision"] = f.precision
        if not f.converged:  # (converged fits keep today's bytes)
            refs[name].update(converged=False, stopped_by=f.stopped_by)
    doc = ReferenceDoc(
        dataset=args.dataset,
        task=ds.task,
        loss=cfg.loss,
        weight_decay=wd,
        n_train=n,
        n_test=int(X_test.shape[0]),
        primary=primary,
        references=refs,
    )
    write_json(out, doc.to_json())
    for name in fits:
        scores = ", ".join(f"{k}={v:.5g}" for k, v in refs[name]["test"].items())
        log.info(
            "reference %s: %s fitted in %.4f s; test %s", args.dataset, name, seconds[name], scores
        )

    _log_run(
        args.dataset, ds.task, wd, n, primary, rc, extra, seconds, refs, out, data / "train.npz"
    )


def _log_run(dataset, task, wd, n, primary, rc, extra, seconds, refs, out, data_file) -> None:
    from linflow.core import tracking
    from linflow.core.storage import file_md5

    # The references get their own MLflow run in the dataset's experiment, with the
    # same test metric names as training runs so the UI compares them side by side.
    run_params = {
        "dataset": dataset,
        "task": task,
        "weight_decay": wd,
        "n_train": n,
        "primary": primary,
        "reference": rc.model_dump(),
        **{f"{name}.{k}": v for name, e in extra.items() for k, v in e.items()},
    }
    tags = {
        "linflow.dataset": dataset,
        tracking.KIND_TAG: "reference",
        "linflow.data_md5": file_md5(data_file),
        "sklearn.version": tracking.version("scikit-learn"),
    }
    with tracking.TrainingRun(dataset, f"{dataset}-reference", run_params, tags) as run:
        run.log_metrics(
            {
                **{f"fit_seconds.{name}": s for name, s in seconds.items()},
                **{f"test_{k}": v for k, v in refs[primary]["test"].items()},
                "train_objective": refs[primary]["train_objective"],
            }
        )
        run.log_artifacts([out])
        # The key `linflow publish` finds this run by (no duplicate for the same results).
        run.set_tags({tracking.REFERENCE_TAG: file_md5(out)})


SAMPLE_ROWS = 65536  # streamed L-BFGS starts from the optimum on this many train rows


def _reference_stream(dataset: str, task: str, cfg, rc, data: Path, out: Path) -> None:
    """The exact references of a streamed table, every pass over the chunks in float64:
    regression, the normal equations accumulated chunk by chunk (centred, merged) and
    solved once; classification, L-BFGS on LogisticRegression's objective, one pass per
    evaluation, bounded by reference.max_iter / max_seconds (docs/streaming.md)."""
    from linflow import reference, streaming
    from linflow.core.artifacts import ReferenceDoc, check_task
    from linflow.core.chunks import StreamSplit, memory_line
    from linflow.core.errors import ConfigError
    from linflow.core.storage import write_json

    split = StreamSplit(data)
    check_task(data, split.task, dataset, task)
    wd, n, d = cfg.weight_decay, split.rows("train"), len(split.feature_names)
    k = len(split.class_names)
    if cfg.l1:
        raise ConfigError(
            f"params.yaml: datasets.{dataset}.train.l1 = {cfg.l1}: a streamed table has no L1 "
            "reference (Lasso's coordinate descent needs the rows in memory); use 0"
        )
    _check_determined(task, (n, d), wd, 0.0, data, dataset)
    t0 = time.perf_counter()
    if task == "regression":
        name = "normal_equations"
        sums = streaming.NormalSums(d)
        for X, y in split.iter("train"):
            sums.update(X, y)
        W, b = sums.solve(wd)
        fitted = reference.ReferenceFit(W, b, precision="float64")
        extra = {name: {"streamed": True, "note": "centred normal equations summed over chunks"}}
    else:
        name = "streamed_lbfgs"
        with _heartbeat(dataset, name):
            W, b, nit, converged, stopped = streaming.fit_softmax_streamed(
                lambda: split.iter("train"), n, d, k, wd, rc.max_iter, rc.tol, rc.max_seconds,
                on_progress=_progress(dataset, rc),
                # Started from the optimum on the first SAMPLE_ROWS rows (fewer passes).
                sample=split.cache("train", min(SAMPLE_ROWS, split.budget // 8 // split.row_bytes())),
            )  # fmt: skip
        fitted = reference.ReferenceFit(W, b, nit, converged, stopped, "float64")
        extra = {
            name: {
                "streamed": True,
                "C": reference.logistic_C(n, wd, k),
                "solver": "L-BFGS, one streamed pass per evaluation, started from the "
                f"optimum on the first {SAMPLE_ROWS} train rows",
                "max_iter": rc.max_iter,
                "tol": rc.tol,
            }
        }
        if not converged:
            log.warning(
                "reference %s: %s did NOT converge to reference.tol=%g: stopped by %s after %d "
                "iterations; its numbers are where it stopped, not the optimum",
                dataset, name, rc.tol, stopped, nit,
            )  # fmt: skip
    seconds = {name: time.perf_counter() - t0}
    ((train_loss, train_objective),) = streaming.objective_streamed(
        split.iter("train"), task, k, [(fitted.weight, fitted.bias)], cfg.loss, wd
    )
    (test,), _ = streaming.test_streamed(
        split.iter("test"), task, k, [(fitted.weight, fitted.bias)]
    )
    refs = {
        name: {
            **extra[name],
            "weight": fitted.weight,
            "bias": fitted.bias,
            "train_loss": train_loss,
            "train_objective": train_objective,
            "test": test,
            "rel_l2_to_primary": 0.0,
            "precision": "float64",
        }
    }
    if fitted.n_iter is not None:
        refs[name]["n_iter"] = fitted.n_iter
    if not fitted.converged:
        refs[name].update(converged=False, stopped_by=fitted.stopped_by)
    doc = ReferenceDoc(
        dataset=dataset,
        task=task,
        loss=cfg.loss,
        weight_decay=wd,
        n_train=n,
        n_test=split.rows("test"),
        primary=name,
        references=refs,
    )
    write_json(out, doc.to_json())
    log.info(
        "reference %s: %s streamed in %.2f s; test %s; %s",
        dataset, name, seconds[name], ", ".join(f"{k_}={v:.5g}" for k_, v in test.items()),
        memory_line(),
    )  # fmt: skip
    _log_run(dataset, task, wd, n, name, rc, extra, seconds, refs, out, data / "stream.json")
