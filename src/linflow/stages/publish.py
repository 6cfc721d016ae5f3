"""publish: make a tracking store complete from the DVC-tracked outputs of this checkout.

Not a DVC stage: a team member runs it after ``dvc pull`` (or ``dvc repro``,
``dvc exp run``), with ``MLFLOW_TRACKING_URI`` naming the team's server. For every
dataset it sends what the stages would have logged had they run against that
server: the training run (params, the per-epoch curves of ``history.csv``, the
model card's epochs, evaluate's test metrics, compare's gaps, every artifact)
and the reference run (``reference.json``'s test metrics and objective). Runs are
keyed as the stages key them -- a training run by the md5 of its weights
(``linflow.weights_md5``), a reference run by the md5 of ``reference.json`` --
so a second publish creates nothing, and a run that exists but lacks its test
metrics or gaps gets them. Fit and training times are not in the outputs, so a
published run has none.

All inputs are read and checked before anything is sent.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.description = (
        "Send every dataset's training run (params, per-epoch history, test metrics, gaps, "
        "artifacts) and reference run to the tracking store (MLFLOW_TRACKING_URI, default "
        "the repo's mlflow.db) from the DVC-tracked outputs, also when DVC restored them "
        "from its cache or a remote. Never duplicates a run (keyed by the weights' md5); "
        "completes a run that lacks its test metrics or gaps."
    )
    p.add_argument(
        "datasets", nargs="*", help="datasets to publish (default: all under datasets: in params)"
    )
    p.add_argument("--models", default="models", help="models root (default: models)")
    p.add_argument("--reports", default="reports", help="reports root (default: reports)")
    p.add_argument(
        "--data", default="data/prepared", help="prepared data root (default: data/prepared)"
    )


@dataclass
class _Run:
    kind: str
    key: tuple[str, str]
    name: str
    params: dict
    tags: dict
    history: list
    metrics: dict
    artifacts: dict


def _require(path: Path) -> Path:
    """`path`, or a DataError saying how a checkout gets the DVC outputs it lacks."""
    from linflow.core.errors import DataError

    if not path.is_file():
        raise DataError(f"{path}: file not found (run dvc pull, dvc checkout or dvc repro first)")
    return path


def _history(path: Path) -> list[dict[str, float]]:
    from linflow.core.errors import DataError

    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found (run dvc pull, dvc checkout or dvc repro first)"
        ) from None
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{path}: expected a CSV with an 'epoch' column and one row per epoch")
    try:
        return [{k: float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError):
        raise DataError(f"{path}: every value must be a number") from None


def _training(dataset: str, params, args) -> _Run:
    from linflow.core import tracking
    from linflow.core.artifacts import ModelCard
    from linflow.core.errors import DataError
    from linflow.core.results import compare_results, evaluate_results
    from linflow.core.storage import file_md5, read_json

    model_dir = Path(args.models) / dataset
    reports = Path(args.reports) / dataset
    _require(model_dir / "model.json")
    card = ModelCard.from_json(read_json(model_dir / "model.json"), str(model_dir / "model.json"))
    weights = _require(model_dir / card.weights["file"])
    ds = params.dataset(dataset)
    if card.task != ds.task:
        raise DataError(f"{model_dir}/model.json: task {card.task!r}, params.yaml says {ds.task!r}")
    # The outputs must be those of this checkout's params: a run's params are its claim.
    cfg = tracking.flatten(params.train_config(dataset).model_dump())
    trained = tracking.flatten(card.train)
    differ = sorted(k for k in cfg.keys() | trained.keys() if cfg.get(k) != trained.get(k))
    if differ:
        k = differ[0]
        raise DataError(
            f"{model_dir}/model.json: trained with train.{k}={trained.get(k)}, params.yaml gives "
            f"{cfg.get(k)}: the outputs are not this checkout's (dvc checkout or dvc repro first)"
        )
    view = tracking.run_view(params, dataset)
    derived = {"n_features": card.n_features, "n_params": card.n_params}
    if card.lr_bound is not None:
        derived["lr_bound"] = card.lr_bound
    source = getattr(args, "params", None)  # the params file (cli's --params)
    changed = (
        tracking.changed_from_committed(source, dataset, tracking.flatten(view)) if source else {}
    )
    tags = {
        "linflow.dataset": dataset,
        "linflow.threads": str(params.train.threads),
        "linflow.device": params.train.device,
        "linflow.version": tracking.version("linflow"),
        "torch.version": tracking.version("torch"),
        "sklearn.version": tracking.version("scikit-learn"),
        "mlflow.version": tracking.version("mlflow"),
    }
    from linflow.core.chunks import train_file

    train_npz = train_file(Path(args.data) / dataset)
    if train_npz.is_file():
        tags["linflow.data_md5"] = file_md5(train_npz)
    if changed:
        tags["linflow.changed"] = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    evaluated, compared = evaluate_results(dataset, reports), compare_results(dataset, reports)
    return _Run(
        kind="training",
        key=(tracking.WEIGHTS_TAG, file_md5(weights)),
        name=tracking.run_name(dataset, card.impl, changed),
        params={"dataset": dataset, "task": ds.task, **view, "derived": derived},
        tags={**tags, **compared.tags},
        history=_history(reports / "history.csv"),
        metrics={
            "best_epoch": card.best_epoch,
            "epochs_run": card.epochs_run,
            **evaluated.metrics,
            **compared.metrics,
        },
        artifacts={
            None: [
                reports / "history.csv",
                reports / "loss_curve.png",
                *evaluated.artifacts,
                *compared.artifacts,
            ],
            "model": [weights, model_dir / "model.json"],
        },
    )


# reference.json's per-reference keys that are results, not settings
_RESULT_KEYS = {
    "weight", "bias", "train_loss", "train_objective", "test", "rel_l2_to_primary",
    "n_iter", "converged", "stopped_by", "precision",
}  # fmt: skip


def _reference(dataset: str, params, args) -> _Run:
    from linflow.core import tracking
    from linflow.core.artifacts import ReferenceDoc
    from linflow.core.storage import file_md5, read_json

    path = _require(Path(args.reports) / dataset / "reference.json")
    doc = ReferenceDoc.from_json(read_json(path), str(path))
    primary = doc.references[doc.primary]
    run_params = {
        "dataset": dataset,
        "task": doc.task,
        "weight_decay": doc.weight_decay,
        "n_train": doc.n_train,
        "primary": doc.primary,
        "reference": params.reference.model_dump(),
        **{
            f"{name}.{k}": v
            for name, ref in doc.references.items()
            for k, v in ref.items()
            if k not in _RESULT_KEYS
        },
    }
    tags = {"linflow.dataset": dataset, "sklearn.version": tracking.version("scikit-learn")}
    from linflow.core.chunks import train_file

    train_npz = train_file(Path(args.data) / dataset)
    if train_npz.is_file():
        tags["linflow.data_md5"] = file_md5(train_npz)
    return _Run(
        kind="reference",
        key=(tracking.REFERENCE_TAG, file_md5(path)),
        name=f"{dataset}-reference",
        params=run_params,
        tags=tags,
        history=[],
        metrics={
            **{f"test_{k}": float(v) for k, v in primary["test"].items()},
            "train_objective": float(primary["train_objective"]),
        },
        artifacts={None: [path]},
    )


def run(args, params) -> int:
    from linflow.core import tracking
    from linflow.core.errors import ConfigError

    names = list(args.datasets) or list(params.datasets)
    unknown = [n for n in names if n not in params.datasets]
    if unknown:
        raise ConfigError(
            f"dataset {unknown[0]!r} is not under datasets: in params.yaml; "
            f"allowed: {', '.join(params.datasets)}"
        )
    # Everything read and checked first: a missing output fails before any run is sent.
    todo = [
        (n, r) for n in names for r in (_training(n, params, args), _reference(n, params, args))
    ]
    log.info("publish %s to %s", ", ".join(names), tracking.redact(tracking.tracking_uri()))
    for dataset, r in todo:
        done = tracking.publish_run(
            dataset, r.kind, r.key, r.name, r.params, r.tags,
            history=r.history, metrics=r.metrics, artifacts=r.artifacts,
        )  # fmt: skip
        for run_id, what in done:
            log.info("publish %s: %s run %s %s", dataset, r.kind, run_id, what)
        if r.kind == "training":
            _publish_model(dataset, done[0][0], r, params, args)
    return 0


def _publish_model(dataset: str, run_id: str, r: _Run, params, args) -> None:
    """The MLflow Model and registry version of these weights, with compare's card, gate
    tag and alias, unless the store has that version already."""
    from linflow.core import tracking
    from linflow.core.artifacts import CompareDoc, ModelCard
    from linflow.core.storage import read_json

    model_dir = Path(args.models) / dataset
    example = Path(args.data) / dataset / "example.json"
    version_tags = {
        tracking.WEIGHTS_TAG: r.key[1],
        **{k: v for k, v in r.tags.items() if k in ("linflow.data_md5",)},
    }
    said, ungated = tracking.publish_model(
        dataset, run_id, model_dir, params.dataset(dataset).task,
        read_json(example) if example.is_file() else None, version_tags,
    )  # fmt: skip
    if said:
        log.info("publish %s: %s", dataset, said)
    if not ungated:  # a version with compare's verdict already: nothing to add
        return
    compare = Path(args.reports) / dataset / "compare.json"
    doc = CompareDoc.from_json(read_json(compare), str(compare))
    card = ModelCard.from_json(read_json(model_dir / "model.json"), str(model_dir / "model.json"))
    gate = tracking.record_gate(dataset, r.key[1], doc.passed, doc.model_card(card))
    if gate:
        log.info("publish %s: %s", dataset, gate)
