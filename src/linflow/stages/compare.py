"""compare@<ds>: the gaps between the trained model and the reference; the gate.

Reads ``models/<ds>/``, ``reports/<ds>/reference.json``, the train and test
splits and params ``compare.<task>``; writes ``reports/<ds>/gaps.json`` (DVC
metrics: the gated gaps), ``compare.json`` (every diagnostic), ``distance.csv``
and two figures, a copy of compare.json as the dataset's row of the summary
(``reports/summary/<ds>.json``: the folder the report stage depends on), and logs the gaps to the training run. A gap over its
tolerance is written (``passed: false``) and said on the console, and the stage
completes: a learner's ``dvc exp run -S ...`` is never failed for not converging.
The gate is ``linflow verify`` (make verify, CI) and the tests, which fail on a
committed result over its tolerance. The maths is :mod:`linflow.reference`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a name under datasets: in params.yaml")
    p.add_argument("--data", help="prepared split folder (default: data/prepared/<dataset>)")
    p.add_argument("--model", help="model folder (default: models/<dataset>)")
    p.add_argument("--reference", help="reference json (default: reports/<dataset>/reference.json)")
    p.add_argument("--reports", help="the dataset's reports folder (default: reports/<dataset>)")


def _inputs(args, task: str):
    """The model card and weights, the reference, the splits; checked to belong together."""
    from linflow.core.artifacts import ModelCard, ReferenceDoc, check_task, load_split
    from linflow.core.errors import DataError
    from linflow.core.storage import load_weights, read_json

    data = Path(args.data or f"data/prepared/{args.dataset}")
    model_dir = Path(args.model or f"models/{args.dataset}")
    ref_path = Path(args.reference or f"reports/{args.dataset}/reference.json")
    card = ModelCard.from_json(read_json(model_dir / "model.json"), str(model_dir / "model.json"))
    ref = ReferenceDoc.from_json(read_json(ref_path), str(ref_path))
    tensors, _ = load_weights(model_dir / card.weights["file"])
    W, b = tensors["weight"], tensors["bias"]  # (k, d), (k,)
    from linflow.core.chunks import StreamSplit, is_stream

    split = None
    if is_stream(data):  # sums over the chunks; the figures show a sample of the rows
        split = StreamSplit(data)
        X, y = split.cache("train", FIGURE_ROWS)
        X_test, y_test = split.cache("test", FIGURE_ROWS)
        meta = {"task": split.task}
    else:
        X, y, meta = load_split(data, "train")
        X_test, y_test, _ = load_split(data, "test")
    check_task(data, str(meta["task"]), args.dataset, task)
    check_task(model_dir, card.task, args.dataset, task, "model")
    check_task(ref_path, ref.task, args.dataset, task, "reference")
    wd = card.train["weight_decay"]
    if ref.weight_decay != wd or ref.loss != card.loss:
        raise DataError(
            f"{ref_path}: fitted for weight_decay={ref.weight_decay}, loss={ref.loss} but "
            f"{model_dir} was trained with weight_decay={wd}, loss={card.loss} (run dvc repro)"
        )
    Wr, br = ref.primary_weights()
    if Wr.shape != W.shape or X.shape[1] != W.shape[1]:
        raise DataError(
            f"{ref_path}: reference weights {Wr.shape}, model weights {W.shape} and "
            f"{X.shape[1]} features in {data} do not match (run dvc repro)"
        )
    return card, ref, model_dir, (W, b), (Wr, br), (X, y), (X_test, y_test), split


FIGURE_ROWS = 5000  # streamed: the figures draw the first this many rows of a split


def _figures(dataset, task, card, ref, model_dir, reports, ours, theirs, train, test, tol, poly):
    """distance.csv and the two figures: how SGD approached the reference, and the fits."""
    import numpy as np

    from linflow import reference
    from linflow.core import plots
    from linflow.core.storage import load_npz, write_csv
    from linflow.metrics import predict_linear

    (W, b), (Wr, br) = ours, theirs
    traj = load_npz(model_dir / "trajectory.npz", required=("epoch", "weight"))
    distance = reference.trajectory_distance(task, traj["weight"], Wr)
    write_csv(
        reports / "distance.csv",
        ["epoch", "weight_rel_l2"],
        list(zip(traj["epoch"].tolist(), distance.tolist(), strict=True)),
    )
    plots.distance_to_reference(
        traj["epoch"],
        distance,
        reports / "distance_to_reference.png",
        f"{dataset}: ours ({card.impl}, batch {card.train['batch_size']}) vs {ref.title}",
        tol,
    )
    fit_png = reports / "reference_fit.png"
    title = f"{dataset}: ours vs {ref.title}"
    # The line: next to the fit, train and test error of every degree (the closed form
    # on this split), this model's degree marked: where it under- or overfits.
    capacity = None
    if poly:
        curve = reference.capacity_curve(train[0][:, 0], train[1], test[0][:, 0], test[1])
        capacity = (*curve, W.shape[1])
    if task == "regression" and W.shape[1] == 1:
        line = (float(W[0, 0]), float(b[0])), (float(Wr[0, 0]), float(br[0]))
        plots.reference_fit(
            None, None, fit_png, title, x=train[0][:, 0], y=train[1], lines=line,
            capacity=capacity,
        )  # fmt: skip
        return fit_png
    if poly:  # the line's features x, x^2, ...: both fitted curves over the data
        x = train[0][:, 0]
        order = np.argsort(x, kind="stable")
        curves = tuple(np.ravel(predict_linear(train[0][order], *p)) for p in (ours, theirs))
        plots.reference_fit(
            None, None, fit_png, title, x=x, y=train[1], curves=(x[order], *curves),
            capacity=capacity,
        )  # fmt: skip
        return fit_png
    if task == "classification":  # logits compare only after centring (softmax ignores shifts)
        (W, b), (Wr, br) = reference.centre_softmax(W, b), reference.centre_softmax(Wr, br)
    ours_out, ref_out = predict_linear(test[0], W, b), predict_linear(test[0], Wr, br)
    plots.reference_fit(ours_out, ref_out, fit_png, title)
    return fit_png


def run(args, params) -> None:
    from linflow import reference
    from linflow.core import tracking
    from linflow.core.artifacts import CompareDoc
    from linflow.core.storage import file_md5, write_json

    ds = params.dataset(args.dataset)
    reports = Path(args.reports or f"reports/{args.dataset}")
    card, ref, model_dir, ours, theirs, train, test, split = _inputs(args, ds.task)
    l1 = card.train.get("l1", 0.0)
    if split is not None:
        result = reference.compare_streamed(
            ds.task, card.loss, card.train["weight_decay"], ours, theirs,
            lambda: split.iter("train"), lambda: split.iter("test"), len(split.class_names), l1,
        )  # fmt: skip
    else:
        result = reference.compare_to_reference(
            ds.task, card.loss, card.train["weight_decay"], ours, theirs, train, test, l1
        )
    tolerances = params.compare.for_task(ds.task).model_dump()
    if card.loss == "mae":
        # The closed form minimises squared loss; an MAE model is not meant to reach it.
        log.warning(
            "compare %s: loss mae: the least-squares reference is not its optimum; "
            "weight_rel_l2 and train_objective_rel_gap are reported, not checked",
            args.dataset,
        )
        tolerances.update(weight_rel_l2=None, train_objective_rel_gap=None)
    elif card.train.get("dropout"):
        # Dropout trains another objective (an implicit, data-dependent L2 penalty).
        log.warning(
            "compare %s: input dropout %g: the reference is the optimum without dropout; "
            "weight_rel_l2 and train_objective_rel_gap are reported, not checked",
            args.dataset,
            card.train["dropout"],
        )
        tolerances.update(weight_rel_l2=None, train_objective_rel_gap=None)
    not_comparable = None
    augment = {k: card.train.get(k) for k in ("noise", "flip", "shift") if card.train.get(k)}
    if augment:
        # Trained on augmented rows: another data distribution, so another optimum.
        not_comparable = (
            "trained with data augmentation ("
            + ", ".join(k if v is True else f"{k} {v}" for k, v in augment.items())
            + "): the reference fits the rows as they are, so every gap is reported, none "
            "checked"
        )
        log.warning("compare %s: %s", args.dataset, not_comparable)
        tolerances = dict.fromkeys(tolerances)
    checks = reference.check_tolerances(reference.gap_values(result), tolerances)
    # The hint names the settings the model was trained with (its card), not today's params.
    trained = SimpleNamespace(**card.train)
    failure = reference.failure_message(args.dataset, ds.task, checks, trained)
    solved = ref.references[ref.primary]
    if solved.get("converged") is False:  # a bounded fit that stopped (reference stage)
        note = (
            f"the reference did not converge (stopped by reference.{solved['stopped_by']} "
            f"after {solved['n_iter']} iterations): the gaps are to where it stopped, "
            "not to the optimum"
        )
        log.warning("compare %s: %s", args.dataset, note)
        failure = f"{failure}; {note}" if failure else None
    summary = ", ".join(
        f"{n}={c['value']:.3g}"
        + ("" if c["passed"] is None else (" ok" if c["passed"] else " FAIL"))
        for n, c in checks.items()
    )
    if split is not None:
        from linflow.core.chunks import memory_line

        summary += f"; streamed, {memory_line()}"
    log.info("compare %s vs %s: %s", args.dataset, ref.primary, summary)
    if ds.task == "regression":  # how well the model class fits: under- vs overfitting
        if split is not None:
            from linflow.streaming import test_streamed

            r2_train = test_streamed(split.iter("train"), ds.task, 0, [ours])[0][0]["r2"]
        else:
            r2_train = reference.split_metrics(ds.task, *train, *ours)["r2"]
        log.info(
            "compare %s: R2 train %.2f, test %.2f (ours)",
            args.dataset, r2_train, result["test"]["ours"]["r2"],
        )  # fmt: skip

    weights_md5 = file_md5(model_dir / card.weights["file"])
    if failure:
        log.warning("compare %s: %s; make verify and CI fail on this", args.dataset, failure)

    fit_png = _figures(
        args.dataset, ds.task, card, ref, model_dir, reports, ours, theirs, train, test,
        tolerances.get("weight_rel_l2"), ds.source == "line",
    )  # fmt: skip
    doc = CompareDoc(
        dataset=args.dataset,
        task=ds.task,
        impl=card.impl,
        reference=ref.primary,
        n_test=split.rows("test") if split is not None else int(test[0].shape[0]),
        n_params=card.n_params,
        result=result,
        checks=checks,
        passed=failure is None,
        not_comparable=not_comparable,
    )
    out = reports / "compare.json"
    write_json(out, doc.to_json())
    # DVC metrics: only the gaps the gate checks, keyed by dataset (short dvc exp show columns).
    write_json(reports / "gaps.json", {args.dataset: doc.gated()})
    write_json(reports.parent / "summary" / f"{args.dataset}.json", doc.to_json())
    tracking.log_to_training_run(
        args.dataset,
        weights_md5,
        metrics=doc.mlflow_metrics(),
        artifacts=[out, reports / "distance_to_reference.png", fit_png],
        tags=doc.mlflow_tags(),
    )
    said = tracking.record_gate(args.dataset, weights_md5, doc.passed, doc.model_card(card))
    if said:
        log.info("compare %s: %s", args.dataset, said)
