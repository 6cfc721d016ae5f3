"""evaluate@<ds>: test-split metrics of the trained model, its predictions and their plot.

Reads ``models/<ds>/`` and ``data/prepared/<ds>/test.npz``; writes
``reports/<ds>/metrics.json`` (DVC metrics: the test scalars only),
``evaluation.json`` (with sizes and per-class accuracies), ``predictions.csv``
(DVC-cached) and ``predictions.png``, and logs the test metrics to the MLflow
run that trained these weights. The maths is :mod:`linflow.metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--data", help="prepared split folder (default: data/prepared/<dataset>)")
    p.add_argument("--model", help="model folder (default: models/<dataset>)")
    p.add_argument("--reports", help="the dataset's reports folder (default: reports/<dataset>)")


def run(args, params) -> None:
    from linflow import metrics
    from linflow.core import plots
    from linflow.core.artifacts import ModelCard, check_task, load_split
    from linflow.core.errors import DataError
    from linflow.core.storage import load_weights, read_json, write_csv

    ds = params.dataset(args.dataset)  # an unknown dataset is a one-line ConfigError
    data = Path(args.data or f"data/prepared/{args.dataset}")
    model_dir = Path(args.model or f"models/{args.dataset}")
    reports = Path(args.reports or f"reports/{args.dataset}")
    card = ModelCard.from_json(read_json(model_dir / "model.json"), str(model_dir / "model.json"))
    tensors, _ = load_weights(model_dir / card.weights["file"])
    W, b = tensors["weight"], tensors["bias"]  # (k, d), (k,)
    from linflow.core.chunks import is_stream

    check_task(model_dir, card.task, args.dataset, ds.task, "model")
    if is_stream(data):
        _evaluate_stream(args.dataset, data, model_dir, reports, card, W, b)
        return
    X, y, arrays = load_split(data, "test")
    check_task(data, str(arrays["task"]), args.dataset, ds.task)
    if X.shape[1] != W.shape[1]:
        raise DataError(
            f"{data}/test.npz: has {X.shape[1]} features, the model expects {W.shape[1]}"
        )
    out = metrics.predict_linear(X, W, b)  # (n, k)
    title = f"{args.dataset} test"
    per_class: dict[str, float] = {}
    if card.task == "regression":
        y_hat = out[:, 0]
        scalars = metrics.regression_metrics(y, y_hat)
        rows = list(zip(y.tolist(), y_hat.tolist(), strict=True))
        header = ["actual", "predicted"]
        plots.prediction_scatter(y, y_hat, reports / "predictions.png", title)
    else:
        res = metrics.classification_metrics(y, out)
        names = card.class_names
        y_pred = out.argmax(axis=1)
        # Each test row's class probabilities too (softmax of the logits, 6 digits):
        # what the model believes, not only what it picked.
        probs = np.exp(metrics.log_softmax(out.astype(np.float64)))  # (n, k)
        rows = [
            [names[a], names[p], *(f"{q:.6g}" for q in row)]
            for a, p, row in zip(y.tolist(), y_pred.tolist(), probs, strict=True)
        ]
        header = ["actual", "predicted", *(f"p_{n}" for n in names)]
        plots.confusion_png(
            np.array(res["confusion_matrix"]), names, reports / "predictions.png", title
        )
        scalars = {"accuracy": res["accuracy"], "cross_entropy": res["cross_entropy"]}
        per_class = dict(zip(names, res["per_class_accuracy"], strict=True))
    write_csv(reports / "predictions.csv", header, rows)
    _write_metrics(args.dataset, card, model_dir, reports, int(y.shape[0]), scalars, per_class)
    log.info("evaluate %s: %s", args.dataset, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))


def _write_metrics(dataset, card, model_dir, reports, n: int, scalars, per_class) -> None:
    """evaluation.json, metrics.json, and the test metrics on the run that trained card's
    weights (with the figure)."""
    from linflow.core import tracking
    from linflow.core.artifacts import TestMetrics
    from linflow.core.storage import file_md5, write_json

    doc = TestMetrics(dataset, card.task, n, card.n_params, scalars, per_class)
    write_json(reports / "evaluation.json", doc.evaluation_json())
    write_json(reports / "metrics.json", doc.metrics_json())
    tracking.log_to_training_run(
        dataset,
        file_md5(model_dir / card.weights["file"]),
        metrics={f"test_{k}": v for k, v in scalars.items()},
        artifacts=[
            reports / "metrics.json",
            reports / "evaluation.json",
            reports / "predictions.png",
        ],
    )


PLOT_ROWS = 5000  # streamed: the regression scatter shows the first this many test rows


def _evaluate_stream(dataset: str, data: Path, model_dir: Path, reports: Path, card, W, b) -> None:
    """evaluate for a streamed table: metrics as sums over the test chunks, predictions.csv
    written a chunk at a time (one atomic file), the figure from the sums (confusion) or
    the first PLOT_ROWS rows (regression scatter)."""
    import time

    from linflow import metrics
    from linflow.core import plots
    from linflow.core.artifacts import check_task
    from linflow.core.chunks import StreamSplit, memory_line
    from linflow.core.errors import DataError
    from linflow.core.storage import atomic_path
    from linflow.streaming import MetricSums

    t0 = time.perf_counter()
    split = StreamSplit(data)
    check_task(data, split.task, dataset, card.task)
    if len(split.feature_names) != W.shape[1]:
        raise DataError(f"{data}: has {len(split.feature_names)} features, the model expects {W.shape[1]}")  # fmt: skip
    names = card.class_names
    sums = MetricSums(card.task, len(names))
    shown: list[np.ndarray] = []
    path = reports / "predictions.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        if card.task == "regression":
            fh.write("actual,predicted\n")
        else:
            fh.write(",".join(["actual", "predicted", *(f"p_{n}" for n in names)]) + "\n")
        for X, y in split.iter("test"):
            out = metrics.predict_linear(X, W, b)  # (m, k)
            sums.add(y, out)
            if card.task == "regression":
                y_hat = out[:, 0]
                if sum(len(a) for a in shown) < PLOT_ROWS:
                    shown.append(np.column_stack([y, y_hat]))
                fh.writelines(f"{a!r},{p!r}\n" for a, p in zip(y.astype(float).tolist(), y_hat.tolist(), strict=True))  # fmt: skip
            else:
                probs = np.exp(metrics.log_softmax(out))
                pred = out.argmax(axis=1)
                fh.writelines(
                    ",".join([names[a], names[p], *(f"{q:.6g}" for q in row)]) + "\n"
                    for a, p, row in zip(y.tolist(), pred.tolist(), probs, strict=True)
                )
    title = f"{dataset} test"
    per_class: dict[str, float] = {}
    scalars = sums.metrics()
    if card.task == "regression":
        pts = np.concatenate(shown)[:PLOT_ROWS]
        plots.prediction_scatter(pts[:, 0], pts[:, 1], reports / "predictions.png", f"{title} (first {len(pts)} rows)")  # fmt: skip
    else:
        plots.confusion_png(sums.confusion, names, reports / "predictions.png", title)
        per_class = dict(zip(names, sums.per_class_accuracy(), strict=True))
    _write_metrics(dataset, card, model_dir, reports, sums.n, scalars, per_class)
    log.info(
        "evaluate %s: streamed %d test rows in %.1f s: %s; %s",
        dataset, sums.n, time.perf_counter() - t0,
        ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()), memory_line(),
    )  # fmt: skip
