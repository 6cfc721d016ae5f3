"""The typed contracts between stages: what one stage writes and the next reads.

- raw and split data: ``data/raw/<ds>.npz`` and ``data/prepared/<ds>/{train,val,test}.npz``
  with ``scaler.json`` (:func:`validate_arrays`, :func:`load_split`);
- :class:`ModelCard`: ``models/<ds>/model.json``, beside the weights;
- :class:`ReferenceDoc`: ``reports/<ds>/reference.json``, the classical solutions;
- :class:`CompareDoc`: ``reports/<ds>/compare.json`` (every diagnostic) and the gated
  gaps it hands to ``gaps.json``;
- :class:`TestMetrics`: ``reports/<ds>/metrics.json`` (the DVC metrics) and
  ``evaluation.json`` (the rest).

Each document is a frozen dataclass with ``to_json()`` (a dict that
``storage.write_json`` writes with sorted keys: the bytes depend only on the
values) and ``from_json(doc, where)``, which names the file and the missing
key in a one-line :class:`~linflow.core.errors.DataError` instead of a KeyError
deep in a stage. No file IO here except the two readers at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from linflow.core.errors import DataError, TaskMismatchError
from linflow.transform import apply_scaler  # the scaling every consumer applies (pure)

__all__ = [
    "SPLITS",
    "ModelCard",
    "ReferenceDoc",
    "CompareDoc",
    "TestMetrics",
    "apply_scaler",
    "table_transform",
    "array_transform",
    "validate_arrays",
    "check_task",
    "read_raw",
    "load_split",
]

SPLITS = ("train", "val", "test")
REFERENCE_NAMES = {  # how the primary references are named in titles and the summary
    "normal_equations": "normal equations",
    "sklearn_logistic_regression": "LogisticRegression",
}


def _require(cls, doc: Any, where: str) -> dict:
    """The fields of `cls` from a loaded JSON mapping, or a DataError naming what is missing."""
    if not isinstance(doc, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in doc]
    if missing:
        raise DataError(
            f"{where}: missing key(s) {', '.join(missing)} (written by an older linflow? "
            "run dvc repro)"
        )
    return {n: doc[n] for n in names}


# --- data ---------------------------------------------------------------------------


def validate_arrays(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Check a raw or split npz before use; raise DataError naming `where`."""
    X, y = arrays["X"], arrays["y"]
    task = str(arrays["task"])
    if task not in ("regression", "classification"):
        raise DataError(f"{where}: task must be 'regression' or 'classification', got {task!r}")
    if X.ndim != 2 or not (X.dtype.kind == "f" or X.dtype == np.uint8):
        raise DataError(
            f"{where}: X must be a 2-D float or uint8 array, got shape {X.shape} dtype {X.dtype}"
        )
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"{where}: y must have shape ({X.shape[0]},), got {y.shape}")
    # A raw table (X_cat beside X) may hold NaN for an empty cell (data.missing: impute),
    # filled by split; never inf, and nothing non-finite once split has encoded it.
    allowed = np.isnan if "X_cat" in arrays else None
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        bad_values = ~np.isfinite(X) & ~(allowed(X) if allowed else False)
    else:
        bad_values = None
    if bad_values is not None and bad_values.any():
        bad = np.argwhere(bad_values)[0]
        raise DataError(
            f"{where}: X has a non-finite value ({X[tuple(bad)]}) at row {bad[0]}, column {bad[1]}"
        )
    if task == "classification":
        k = len(arrays["class_names"])
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: classification labels must be integers, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= k):
            raise DataError(
                f"{where}: labels must be in [0, {k}) for {k} classes, "
                f"got range [{y.min()}, {y.max()}]"
            )
    else:
        if y.dtype.kind != "f":
            raise DataError(f"{where}: regression targets must be floats, got dtype {y.dtype}")
        if not np.isfinite(y).all():
            raise DataError(
                f"{where}: y has a non-finite value at row {int(np.argmin(np.isfinite(y)))}"
            )


def check_task(path: object, found: str, dataset: str, task: str, what: str = "data") -> None:
    """An input made for another task than params.yaml says is stale: one error, one wording."""
    if found != task:
        raise TaskMismatchError(path, found, dataset, task, what)


# --- the input transform: raw columns -> what the model sees ------------------------

TRANSFORM_VERSION = 1


def table_transform(
    table: Mapping, encoder: Mapping, feature_names: list[str], class_names: list[str], scaler
) -> dict:
    """transform.json of a table: its raw input columns, the encoder fitted on the train
    rows (imputation, one-hot levels: linflow.transform), then the scaler."""
    return {
        "version": TRANSFORM_VERSION,
        "kind": "table",
        "source": table["path"],
        "target": table["target"],
        "inputs": table["inputs"],  # [{name, kind: numeric|bool|date|categorical}]
        "encoder": dict(encoder),
        "feature_names": feature_names,  # the model's inputs, after encoding
        "class_names": class_names,
        "scaler": dict(scaler),
    }


def array_transform(
    feature_names: list[str], class_names: list[str], scaler, integer: bool = False
) -> dict:
    """transform.json of a built-in set: its features are the model's inputs, scaled.
    `integer`: the raw features are whole numbers (Fashion-MNIST's uint8 pixels)."""
    dtype = "long" if integer else "double"
    return {
        "version": TRANSFORM_VERSION,
        "kind": "array",
        "inputs": [{"name": f, "kind": "numeric", "type": dtype} for f in feature_names],
        "encoder": None,
        "feature_names": feature_names,
        "class_names": class_names,
        "scaler": dict(scaler),
    }


# --- documents ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    """models/<ds>/model.json: what is needed to rebuild and judge the model."""

    dataset: str
    task: str
    impl: str
    loss: str
    n_features: int
    n_outputs: int
    n_params: int
    feature_names: list[str]
    class_names: list[str]
    weights: dict  # file, format, layout
    train: dict  # the validated train config it was trained with
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    lr_bound: float | None  # full-batch stable step bound 2(1+momentum)/lambda_max; None for MAE

    WEIGHTS_LAYOUT = "weight (n_outputs, n_features), bias (n_outputs,)"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ModelCard:
        return cls(**_require(cls, doc, where))


@dataclass(frozen=True)
class ReferenceDoc:
    """reports/<ds>/reference.json: the classical solutions of the train objective."""

    dataset: str
    task: str
    loss: str
    weight_decay: float
    n_train: int
    n_test: int
    primary: str  # the reference compare holds the model to
    references: dict  # name -> weight, bias, train_loss, train_objective, test, ...
    objective: str = (
        "mean(loss) + (weight_decay / 2) * ||W||^2 on the train split (bias unpenalised)"
    )
    layout: str = ModelCard.WEIGHTS_LAYOUT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ReferenceDoc:
        out = cls(**_require(cls, doc, where))
        if out.primary not in out.references:
            raise DataError(f"{where}: primary reference {out.primary!r} is not in references")
        return out

    def primary_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (k, d), b (k,)) of the primary reference, float64."""
        ref = self.references[self.primary]
        return np.asarray(ref["weight"], dtype=np.float64), np.asarray(ref["bias"])

    @property
    def title(self) -> str:
        return REFERENCE_NAMES.get(self.primary, self.primary)


@dataclass(frozen=True)
class CompareDoc:
    """reports/<ds>/compare.json: ours against the reference, with every check."""

    dataset: str
    task: str
    impl: str
    reference: str
    n_test: int
    n_params: int
    result: dict  # reference.compare_to_reference: test ours/reference/delta, train gaps, ...
    checks: dict  # gap -> value, tolerance, bound, passed (None: reported only)
    passed: bool = True
    # Why no gap is checked: the model trained another objective (augmentation), so
    # the reference is not its optimum. Absent from the file when every gap could be.
    not_comparable: str | None = None

    def to_json(self) -> dict:
        doc = asdict(self)
        if doc["not_comparable"] is None:
            del doc["not_comparable"]
        doc.update(doc.pop("result"))  # the result's keys at the top, as users read them
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> CompareDoc:
        if not isinstance(doc, Mapping):
            raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        own = {f.name for f in fields(cls)} - {"result"}
        base = _require(cls, {"not_comparable": None, **doc, "result": None}, where)
        base["result"] = {k: v for k, v in doc.items() if k not in own}
        return cls(**base)

    def gated(self) -> dict[str, float]:
        """The gaps the gate checks (tolerance not null): the DVC metrics of gaps.json."""
        return {n: c["value"] for n, c in self.checks.items() if c["tolerance"] is not None}

    @property
    def ours(self) -> dict[str, float]:
        return self.result["test"]["ours"]

    def mlflow_metrics(self) -> dict[str, float]:
        """What compare logs to the training run: every gap (``ref_<gap>``), the
        reference's test metrics (``ref_test_<metric>``) and the train-loss gap."""
        out = {f"ref_{n}": float(c["value"]) for n, c in self.checks.items()}
        out |= {f"ref_test_{k}": float(v) for k, v in self.result["test"]["reference"].items()}
        out["ref_train_loss_gap"] = float(self.result["train_loss"]["gap"])
        return out

    def mlflow_tags(self) -> dict[str, str]:
        return {"linflow.compare": "pass" if self.passed else "fail"}

    def model_card(self, card: ModelCard) -> str:
        """The registered version's description (markdown): what it is, how it scores,
        how far it is from the reference and whether it passed the gate."""
        ours = ", ".join(f"{k} {v:.4g}" for k, v in self.ours.items())
        theirs = ", ".join(f"{k} {v:.4g}" for k, v in self.result["test"]["reference"].items())
        gaps = "; ".join(
            f"{n} {c['value']:.3g}"
            + ("" if c["tolerance"] is None else f" ({'<=' if c['bound'] == 'max' else '>='} {c['tolerance']:g})")
            for n, c in self.checks.items()
        )  # fmt: skip
        return (
            f"**linflow {self.dataset}**: {card.task}, {card.impl} {card.loss}, "
            f"{card.n_features} features -> {card.n_outputs} output(s), {card.n_params} "
            f"parameters, {card.epochs_run} epochs. Test ({self.n_test} rows): {ours}; "
            f"reference {self.reference}: {theirs}. Gaps: {gaps}. Gate: "
            f"{'pass' if self.passed else 'FAIL'}. Input: the raw columns of the signature; "
            "the transform (imputation, one-hot, scaler) is applied inside."
        )


@dataclass(frozen=True)
class TestMetrics:
    """Test-split metrics of one model: metrics.json holds the scalars, keyed by dataset
    (`dvc exp show` then names a column digits.test.accuracy, not by its file), and
    evaluation.json everything else."""

    __test__ = False  # not a pytest test class

    dataset: str
    task: str
    n_test: int
    n_params: int
    scalars: dict[str, float]  # mse, rmse, mae, r2 | accuracy, cross_entropy
    per_class_accuracy: dict[str, float] = field(default_factory=dict)

    def metrics_json(self) -> dict:
        return {self.dataset: {"test": self.scalars}}

    @staticmethod
    def scalars_from(doc: Any, dataset: str, where: str) -> dict[str, float]:
        """The test scalars of metrics.json (the inverse of :meth:`metrics_json`)."""
        test = doc.get(dataset, {}).get("test") if isinstance(doc, Mapping) else None
        if not isinstance(test, Mapping) or not test:
            raise DataError(
                f'{where}: expected {{"{dataset}": {{"test": {{metric: value}}}}}}, '
                f"got keys {sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__}"
            )
        bad = {k: v for k, v in test.items() if not isinstance(v, int | float)}
        if bad:
            raise DataError(f"{where}: {dataset}.test values must be numbers, got {bad}")
        return {str(k): float(v) for k, v in test.items()}

    def evaluation_json(self) -> dict:
        test = dict(self.scalars)
        if self.per_class_accuracy:
            test["per_class_accuracy"] = self.per_class_accuracy
        return {
            "dataset": self.dataset,
            "task": self.task,
            "n_test": self.n_test,
            "n_params": self.n_params,
            "test": test,
        }


# --- readers ------------------------------------------------------------------------


def read_raw(path: Path) -> dict[str, np.ndarray]:
    """The arrays of data/raw/<ds>.npz, validated."""
    from linflow.core.storage import load_npz

    arrays = load_npz(path, required=("task", "X", "y", "x_scale", "class_names"))
    validate_arrays(arrays, str(path))
    return arrays


def load_split(data_dir: Path, which: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Model-ready features (float32, scaled), targets and all arrays of one split."""
    from linflow.core.storage import load_npz, read_json

    scaler = read_json(data_dir / "scaler.json")
    path = data_dir / f"{which}.npz"
    arrays = load_npz(path, required=("task", "X", "y", "class_names"))
    validate_arrays(arrays, str(path))
    return apply_scaler(arrays["X"], scaler), arrays["y"], arrays
