"""params.yaml -> validated, frozen config objects.

Every knob of the pipeline lives in params.yaml; this module is the one place
that says what each key may hold. Validation is strict (no silent coercion of
``2.5`` to an int or ``true`` to 1, unknown keys rejected, floats finite) and a
bad value becomes one :class:`ConfigError` line naming the key, the value and
what is allowed, e.g. ``train.regression.lr must be a finite float > 0, got -0.1``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from linflow.core.errors import ConfigError

__all__ = [
    "ConfigError",
    "Params",
    "DatasetConfig",
    "TrainConfig",
    "CompareTolerances",
    "ReferenceConfig",
    "VerifyTolerance",
    "VerifySection",
    "load_params",
    "parse_params",
    "TASKS",
]


def _allowed(text: str, **kwargs: Any) -> Any:
    """Field(...) whose description is the 'what is allowed' half of the error."""
    return Field(description=text, **kwargs)


PosFloat = Annotated[float, _allowed("a finite float > 0", gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, _allowed("a finite float >= 0", ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, _allowed("a finite float", allow_inf_nan=False)]
Fraction = Annotated[float, _allowed("a float in (0, 1)", gt=0, lt=1, allow_inf_nan=False)]
Momentum = Annotated[float, _allowed("a float in [0, 1)", ge=0, lt=1, allow_inf_nan=False)]
DropRate = Annotated[float, _allowed("a float in [0, 1)", ge=0, lt=1, allow_inf_nan=False)]
PosInt = Annotated[int, _allowed("an integer >= 1", ge=1)]
NonNegInt = Annotated[int, _allowed("an integer >= 0", ge=0)]
Seed = Annotated[int, _allowed("an integer in [0, 2**32)", ge=0, lt=2**32)]
ShiftPixels = Annotated[int, _allowed("an integer in [0, 4] (pixels)", ge=0, le=4)]
# A tolerance may be null: the gap is still computed and reported, but not checked.
Tolerance = Annotated[
    Annotated[float, Field(ge=0, allow_inf_nan=False)] | None,
    _allowed("a finite float >= 0, or null to report without checking"),
]
Share = Annotated[
    Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None,
    _allowed("a float in [0, 1], or null to report without checking"),
]


def _batch_size(value: Any) -> int | str:
    # A plain validator (not int | Literal) so a bad value gives one error, not one per member.
    if value == "full" or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("batch_size", "not an integer >= 1 or 'full'")


BatchSize = Annotated[
    int | str,
    PlainValidator(_batch_size),
    _allowed("an integer >= 1, or 'full' for the whole train split (full-batch gradient descent)"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TrainOverrides(_Strict):
    """Per-dataset overrides of train.<task> (e.g. Fashion-MNIST's larger batches).

    params.yaml lists every key (null: train.<task>'s value), so each is one
    ``dvc exp run -S datasets.<ds>.train.<key>=...`` away, no ``++`` needed."""

    impl: Literal["torch", "scratch"] | None = _allowed("one of 'torch', 'scratch'", default=None)
    # checked against the dataset's task in Params (mse/mae or cross_entropy)
    loss: Literal["mse", "mae", "cross_entropy"] | None = _allowed(
        "one of 'mse', 'mae' (regression) or 'cross_entropy' (classification)", default=None
    )
    lr: PosFloat | None = None
    batch_size: BatchSize | None = None
    epochs: PosInt | None = None
    weight_decay: NonNegFloat | None = None
    momentum: Momentum | None = None
    dropout: DropRate | None = None
    l1: NonNegFloat | None = None  # regression only (checked in Params)
    patience: NonNegInt | None = None
    lr_schedule: Literal["constant", "cosine"] | None = _allowed(
        "one of 'constant', 'cosine'", default=None
    )
    seed: Seed | None = None
    noise: NonNegFloat | None = None
    flip: bool | None = None  # image datasets only (checked in Params)
    shift: ShiftPixels | None = None  # image datasets only (checked in Params)
    processes: PosInt | None = None  # streamed tables only (checked by train)


# --- datasets -----------------------------------------------------------------


class LineData(_Strict):
    """y = slope * x + intercept + N(0, noise^2), x uniform in [x_min, x_max]."""

    n: Annotated[int, _allowed("an integer >= 10", ge=10)] = 100
    slope: FiniteFloat = 3.0
    intercept: FiniteFloat = 1.0
    noise: NonNegFloat = 0.1
    x_min: FiniteFloat = -1.0
    x_max: FiniteFloat = 1.0
    # Features x, x^2, ..., x^degree: still a linear model in its parameters (the
    # closed form applies), with capacity to under- or overfit (d2l 4.4).
    degree: Annotated[int, _allowed("an integer in [1, 30]", ge=1, le=30)] = 1
    # The ground truth: y = slope * g(x) + intercept + noise, g(x) = x, x^2, x^3 or
    # sin(pi x). Not linear in x: degree 1 underfits, train and test alike (lessons).
    truth: Literal["linear", "quadratic", "cubic", "sine"] = _allowed(
        "one of 'linear', 'quadratic', 'cubic', 'sine'", default="linear"
    )

    @model_validator(mode="after")
    def _range(self) -> LineData:
        if not self.x_min < self.x_max:
            raise ValueError(f"x_min must be < x_max, got x_min={self.x_min}, x_max={self.x_max}")
        return self


class SyntheticData(_Strict):
    """d2l's synthetic_data: X ~ N(0, 1), y = X w + b + N(0, noise^2)."""

    n: Annotated[int, _allowed("an integer >= 10", ge=10)] = 1000
    w: Annotated[list[FiniteFloat], _allowed("a non-empty list of finite floats", min_length=1)] = [
        2.0,
        -3.4,
    ]
    b: FiniteFloat = 4.2
    noise: NonNegFloat = 0.01


class NoData(_Strict):
    """A bundled set: nothing to choose (``data: {}``)."""


class FashionMnistData(_Strict):
    # Where a torchvision-layout cache (<root>/FashionMNIST/raw) is looked for
    # and downloads are kept; relative paths are relative to the repo root.
    # LINFLOW_DATA_ROOT overrides it.
    root: str = "data/cache"
    mirror: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    download: bool = True


class SplitOverrides(_Strict):
    """Per-dataset split fractions; null keeps the top-level ``split`` value."""

    train: Fraction | None = None
    val: Fraction | None = None
    test: Fraction | None = None


class _Dataset(_Strict):
    """What every dataset has besides its source and task: prepare reads ``data``,
    split ``standardize`` and ``split``, train ``train`` -- three separate keys, so a
    training knob never re-runs prepare (dvc.yaml lists each stage's keys).

    ``path`` is the file prepare reads the rows from, a DVC dependency of prepare
    (dvc.yaml: ``${item.path}``): a table's file, or the module that generates or
    loads a built-in set. DVC interpolates it for every entry, so params.yaml lists it
    for every entry; the defaults here are the built-ins' modules."""

    path: Annotated[str, _allowed("a non-empty file path", min_length=1)]
    standardize: bool = False
    split: SplitOverrides = SplitOverrides()
    train: TrainOverrides = TrainOverrides()


class LineSource(_Dataset):
    source: Literal["line"]
    path: Literal["src/linflow/datasets/synthetic.py"] = _allowed(
        "'src/linflow/datasets/synthetic.py' (the code that makes it)",
        default="src/linflow/datasets/synthetic.py",
    )
    task: Literal["regression"] = _allowed("'regression' for source line", default="regression")
    data: LineData = LineData()


class SyntheticSource(_Dataset):
    source: Literal["synthetic"]
    path: Literal["src/linflow/datasets/synthetic.py"] = _allowed(
        "'src/linflow/datasets/synthetic.py' (the code that makes it)",
        default="src/linflow/datasets/synthetic.py",
    )
    task: Literal["regression"] = _allowed(
        "'regression' for source synthetic", default="regression"
    )
    data: SyntheticData = SyntheticData()


class DiabetesSource(_Dataset):
    """scikit-learn's bundled diabetes regression set (442 x 10)."""

    source: Literal["diabetes"]
    path: Literal["src/linflow/datasets/bundled.py"] = _allowed(
        "'src/linflow/datasets/bundled.py' (the code that makes it)",
        default="src/linflow/datasets/bundled.py",
    )
    task: Literal["regression"] = _allowed("'regression' for source diabetes", default="regression")
    data: NoData = NoData()
    standardize: bool = True
    # Ill-conditioned: heavy-ball momentum (params.yaml says why).
    train: TrainOverrides = TrainOverrides(momentum=0.9)


class DigitsSource(_Dataset):
    """scikit-learn's bundled 8x8 digits (1797 x 64, 10 classes), pixels in [0, 1]."""

    source: Literal["digits"]
    path: Literal["src/linflow/datasets/bundled.py"] = _allowed(
        "'src/linflow/datasets/bundled.py' (the code that makes it)",
        default="src/linflow/datasets/bundled.py",
    )
    task: Literal["classification"] = _allowed(
        "'classification' for source digits", default="classification"
    )
    data: NoData = NoData()
    standardize: bool = True


class FashionMnistSource(_Dataset):
    """Fashion-MNIST (60000 + 10000 images of 28x28, 10 classes)."""

    source: Literal["fashion_mnist"]
    path: Literal["src/linflow/datasets/fashion_mnist.py"] = _allowed(
        "'src/linflow/datasets/fashion_mnist.py' (the code that makes it)",
        default="src/linflow/datasets/fashion_mnist.py",
    )
    task: Literal["classification"] = _allowed(
        "'classification' for source fashion_mnist", default="classification"
    )
    data: FashionMnistData = FashionMnistData()
    # d2l's batch size, the from-scratch trainer, momentum and a cosine schedule
    # (params.yaml says why).
    train: TrainOverrides = TrainOverrides(
        batch_size=256,
        impl="scratch",
        lr=0.1,
        momentum=0.9,
        weight_decay=5.0e-4,
        epochs=30,
        lr_schedule="cosine",
    )


ColumnList = Annotated[list[str], _allowed("a list of column names")]


class TableData(_Strict):
    """A user's table (datasets/table.py): how to read it and what each column is.

    Everything fitted from data (imputed values, one-hot levels, standardisation) is
    fitted later, by split, on the train rows only (linflow.transform)."""

    # csv, tsv, parquet, jsonl (one JSON object a line); auto: by the file's extension.
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = _allowed(
        "one of 'auto', 'csv', 'tsv', 'parquet', 'jsonl'", default="auto"
    )
    # CSV only; auto: the one of , ; tab | that splits every sampled line alike.
    delimiter: Literal["auto", ",", ";", "\t", "|"] = _allowed(
        "one of 'auto', ',', ';', '\\t', '|'", default="auto"
    )
    # CSV only; auto: ',' when the delimiter is not ',' and numbers are written 1,5.
    decimal: Literal["auto", ".", ","] = _allowed("one of 'auto', '.', ','", default="auto")
    target: Annotated[str, _allowed("a column name", min_length=1)]
    features: ColumnList | None = None  # null: every column but the target and `drop`
    drop: ColumnList = []
    # Text (or a few integer codes) to one-hot encode; levels come from the train split.
    categorical: ColumnList = []
    dates: ColumnList = []  # parsed as dates -> days since 1970-01-01 (a number)
    # error: any empty cell among the used columns is an error that counts them;
    # impute: numbers get the train split's median, categories a level of their own.
    missing: Literal["error", "impute"] = _allowed("one of 'error', 'impute'", default="error")
    # The most memory reading the table may take, in MiB; null: half of what is available.
    max_memory_mb: PosInt | None = None
    # Streaming (docs/streaming.md): the rows stay in the file (Parquet, or a CSV converted
    # once to Parquet) and every stage reads them a row group at a time. auto: stream when
    # reading the table whole would need more than max_memory_mb allows (or it is a folder).
    stream: Literal["auto"] | bool = _allowed("one of 'auto', true, false", default="auto")
    # Streaming: the memory a stage may use for data (MiB), over what Python and its
    # libraries take at start; it sizes the training shuffle buffer and the cached
    # validation rows, and bounds the row groups prepare accepts.
    budget_mb: PosInt = 1024

    @model_validator(mode="after")
    def _columns(self) -> TableData:
        if self.features is not None and self.drop:
            raise ValueError("give features (the columns to use) or drop, not both")
        for key in ("features", "drop", "categorical", "dates"):
            names = getattr(self, key) or []
            if self.target in names:
                raise ValueError(f"{key} must not name the target column {self.target!r}")
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{key} names {twice[0]!r} twice")
        both = sorted(set(self.categorical) & set(self.dates))
        if both:
            raise ValueError(f"column {both[0]!r} is in both categorical and dates")
        dropped = sorted((set(self.categorical) | set(self.dates)) & set(self.drop))
        if dropped:
            raise ValueError(f"column {dropped[0]!r} is dropped and also declared")
        return self


class TableSource(_Dataset):
    """A user's own table (CSV, TSV, Parquet, JSON Lines): ``linflow add-dataset``."""

    source: Literal["table"]
    task: Literal["regression", "classification"] = _allowed(
        "one of 'regression', 'classification'"
    )
    data: TableData
    standardize: bool = True  # raw scales (years next to cents) would stall SGD


# The one list of data sources (name -> its params model); datasets/__init__.py maps
# the same names to their loaders, and a test holds the two to the same names.
SOURCE_MODELS: dict[str, type[_Strict]] = {
    get_args(m.model_fields["source"].annotation)[0]: m
    for m in (
        LineSource,
        SyntheticSource,
        DiabetesSource,
        DigitsSource,
        FashionMnistSource,
        TableSource,
    )
}
SOURCES = tuple(SOURCE_MODELS)
DatasetConfig = Annotated[
    LineSource | SyntheticSource | DiabetesSource | DigitsSource | FashionMnistSource | TableSource,
    Field(discriminator="source"),
]
TASKS = ("regression", "classification")
_TASK_LOSSES = {"regression": ("mse", "mae"), "classification": ("cross_entropy",)}
IMAGE_SOURCES = ("fashion_mnist", "digits")  # rows are square images: flip and shift apply


# --- split --------------------------------------------------------------------


class SplitConfig(_Strict):
    train: Fraction = 0.7
    val: Fraction = 0.15
    test: Fraction = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(
                f"train + val + test must sum to 1, got {self.train} + {self.val} + "
                f"{self.test} = {total:g}"
            )
        return self


# --- train --------------------------------------------------------------------


class TrainConfig(_Strict):
    impl: Literal["torch", "scratch"] = _allowed("one of 'torch', 'scratch'", default="torch")
    loss: Literal["mse", "mae", "cross_entropy"] = _allowed(
        "one of 'mse', 'mae' (regression) or 'cross_entropy' (classification)"
    )
    lr: PosFloat
    batch_size: BatchSize
    epochs: PosInt
    weight_decay: NonNegFloat = 0.0
    # Heavy-ball momentum as torch.optim.SGD has it (v <- m v + g; w <- w - lr v); 0 is
    # plain SGD. Ill-conditioned problems need ~sqrt(condition number) times fewer steps.
    momentum: Momentum = 0.0
    # Input dropout: each training input feature is zeroed with probability p and the
    # rest scaled by 1/(1-p), a fresh mask per step (seeded); off at evaluation. For a
    # linear model it acts as a data-dependent L2 penalty (docs/lessons.md).
    dropout: DropRate = 0.0
    # Early stopping on validation loss: stop after `patience` epochs without
    # improvement and restore the best weights; 0 switches it off.
    patience: NonNegInt = 0
    # 'cosine' anneals lr to 0 over `epochs` (per epoch): constant-lr minibatch SGD
    # keeps bouncing around the optimum by an amount proportional to lr.
    lr_schedule: Literal["constant", "cosine"] = _allowed(
        "one of 'constant', 'cosine'", default="constant"
    )
    seed: Seed = 0
    # L1 on the weights (not the bias): minimises loss + (wd/2)||W||^2 + l1 ||W||_1, by
    # a proximal (soft-threshold) step after each SGD step; the reference is then
    # scikit-learn's Lasso / ElasticNet. Regression only.
    l1: NonNegFloat = 0.0
    # Data augmentation of the train split only, fresh every batch (seeded, drawn on
    # the CPU like the shuffle): `noise` adds N(0, noise^2) to every input feature;
    # for images (fashion_mnist, digits) `flip` mirrors half of each batch's rows
    # left-right and `shift` moves the batch by up to that many pixels (zero fill).
    # It changes the objective: compare then reports the gaps without checking them.
    noise: NonNegFloat = 0.0
    flip: bool = False
    shift: ShiftPixels = 0
    # Data-parallel training of a streamed table in this many processes under torchrun
    # (gloo on CPU, NCCL on CUDA): each streams its share of the row groups, gradients
    # are all-reduced, rank 0 writes and logs (docs/streaming.md). 1: one process.
    processes: PosInt = 1

    @property
    def augmented(self) -> bool:
        return bool(self.noise or self.flip or self.shift)


# The defaults of the two tasks are params.yaml's (tests/test_config.py holds them equal).
class RegressionTrain(TrainConfig):
    loss: Literal["mse", "mae"] = _allowed("one of 'mse', 'mae'", default="mse")
    lr: PosFloat = 0.2
    batch_size: BatchSize = "full"
    epochs: PosInt = 300


class ClassificationTrain(TrainConfig):
    loss: Literal["cross_entropy"] = _allowed("'cross_entropy'", default="cross_entropy")
    lr: PosFloat = 0.3
    batch_size: BatchSize = 64
    epochs: PosInt = 200
    weight_decay: NonNegFloat = 0.001
    # No softmax L1: its reference (LogisticRegression, saga) takes minutes on Fashion-MNIST.
    l1: Annotated[
        float, _allowed("0.0: L1 is for regression (its reference is Lasso)", ge=0, le=0)
    ] = 0.0


class TrainSection(_Strict):
    # One thread by default: measured faster for small batches and robust when
    # another process holds the second core (docs/benchmarks.md, "Threads").
    threads: PosInt = 1
    device: Literal["cpu", "cuda"] = _allowed("one of 'cpu', 'cuda'", default="cpu")
    # processes > 1: a rank that waits this long on the others (a hung or dead rank)
    # fails the stage.
    timeout_s: PosFloat = 120.0
    regression: RegressionTrain = RegressionTrain()
    classification: ClassificationTrain = ClassificationTrain()

    def for_task(self, task: str) -> TrainConfig:
        return self.regression if task == "regression" else self.classification


# --- reference and compare -------------------------------------------------------


class ReferenceConfig(_Strict):
    """Solver settings of the classical references (the regression ones are exact)."""

    # LogisticRegression (lbfgs) runs until it converges to tol, or max_iter
    # iterations, or max_seconds: a fit stopped by a bound is recorded (and said)
    # as not converged, never hangs a learner's experiment.
    max_iter: PosInt = 5000
    tol: PosFloat = 2e-5  # max |gradient| in float64 (scikit-learn's default 1e-4 stops short)
    max_seconds: PosFloat = 180.0
    # Threads of numpy's BLAS (the fit's two big GEMMs per iteration); every other
    # pool gets one. A fixed number, so reference.json does not depend on the machine.
    threads: PosInt = 2


class RegressionTolerances(_Strict):
    # ||W - W*|| / ||W*|| over the feature weights (not the bias).
    weight_rel_l2: Tolerance = 1e-3
    # (objective(ours) - objective(reference)) / objective(reference) on the train split.
    train_objective_rel_gap: Tolerance = 1e-3
    # |R2(ours) - R2(reference)| on the test split.
    test_r2_delta: Tolerance = 0.005


class ClassificationTolerances(_Strict):
    # After centring each feature's weights across classes.
    weight_rel_l2: Tolerance = None
    train_objective_rel_gap: Tolerance = None
    # |accuracy(ours) - accuracy(reference)| on the test split.
    test_accuracy_delta: Tolerance = 0.01
    # Lowest allowed share of test rows on which both predict the same class.
    min_agreement: Share = 0.97


class CompareConfig(_Strict):
    regression: RegressionTolerances = RegressionTolerances()
    classification: ClassificationTolerances = ClassificationTolerances()

    def for_task(self, task: str) -> RegressionTolerances | ClassificationTolerances:
        return self.regression if task == "regression" else self.classification


CompareTolerances = RegressionTolerances | ClassificationTolerances


# --- verify -------------------------------------------------------------------


class VerifyTolerance(_Strict):
    """How far each kind of checked number may move on another CPU (verify/tolerance.py)."""

    # Accuracies and agreement: this share of the test rows may change class ...
    rows: Annotated[float, _allowed("a float in [0, 1)", ge=0, lt=1, allow_inf_nan=False)] = 0.002
    # ... and at least this many rows (a small test split still allows a few flips).
    min_rows: NonNegInt = 3
    # Losses (mse, rmse, mae, cross-entropy), relatively; r2 through its mse.
    loss: NonNegFloat = 1.0e-3
    # Distances to the reference, in units of the reference's weight norm.
    weights: NonNegFloat = 1.0e-4


class GDConfig(_Strict):
    """linflow gd: gradient descent on the course's plain functions, one run per lr."""

    functions: Annotated[
        list[Literal["2x^2", "x^2+y^2+z^2"]],
        _allowed("a non-empty list of '2x^2', 'x^2+y^2+z^2'", min_length=1),
    ] = ["2x^2", "x^2+y^2+z^2"]
    # Step sizes tried on each function; 2/lambda_max is 0.5 for 2x^2 and 1.0 for
    # x^2+y^2+z^2: the defaults converge, crawl and diverge.
    lrs: Annotated[
        list[PosFloat], _allowed("a non-empty list of finite floats > 0", min_length=1)
    ] = [0.05, 0.2, 0.45, 0.55, 1.05]
    steps: Annotated[int, _allowed("an integer in [1, 1000]", ge=1, le=1000)] = 20
    start: Annotated[float, _allowed("a finite float", allow_inf_nan=False)] = 1.0


class VerifySection(_Strict):
    """What `linflow verify` accepts when a re-run differs from the committed results."""

    # true: every output must be bit-identical (needs the committed numeric platform:
    # same CPU ISA paths, library versions and threads); false: metrics may move
    # within `tolerance`, and models and figures that follow them may differ.
    # Data (prepare, split) is always exact.
    strict: bool = False
    tolerance: VerifyTolerance = VerifyTolerance()


class Params(_Strict):
    seed: Seed = 0
    datasets: Annotated[
        dict[str, DatasetConfig], _allowed("a non-empty mapping of dataset name -> config")
    ]
    split: SplitConfig = SplitConfig()
    train: TrainSection = TrainSection()
    reference: ReferenceConfig = ReferenceConfig()
    compare: CompareConfig = CompareConfig()
    verify: VerifySection = VerifySection()
    gd: GDConfig = GDConfig()

    @model_validator(mode="after")
    def _names(self) -> Params:
        if not self.datasets:
            raise ValueError("datasets must name at least one dataset")
        for name, ds in self.datasets.items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"datasets.{name}: dataset names must be letters, digits and '_'")
            losses = _TASK_LOSSES[ds.task]
            if ds.train.loss is not None and ds.train.loss not in losses:
                raise ValueError(
                    f"datasets.{name}.train.loss must be one of {', '.join(map(repr, losses))} "
                    f"for a {ds.task} dataset, got {ds.train.loss!r}"
                )
            if ds.task == "classification" and ds.train.l1:
                raise ValueError(
                    f"datasets.{name}.train.l1 must be null or 0.0 for a classification "
                    f"dataset (L1 is for regression: its reference is Lasso), got {ds.train.l1}"
                )
            cfg = self.train_config(name)
            if ds.source not in IMAGE_SOURCES and (cfg.flip or cfg.shift):
                key = "flip" if cfg.flip else "shift"
                where = (
                    f"datasets.{name}.train.{key}"
                    if getattr(ds.train, key) is not None
                    else f"train.{ds.task}.{key} (dataset {name})"
                )
                raise ValueError(
                    f"{where} is for images (sources {', '.join(IMAGE_SOURCES)}), not source "
                    f"{ds.source!r}: use noise, or switch it off; got {getattr(cfg, key)!r}"
                )
            if ds.split.model_dump(exclude_none=True):
                try:
                    self.split_config(name)
                except ValidationError as exc:
                    msg = exc.errors()[0]["ctx"]["error"]
                    raise ValueError(
                        f"datasets.{name}.split: {msg} (null keys take the top-level split's)"
                    ) from None
        return self

    def split_config(self, name: str) -> SplitConfig:
        """The top-level split with datasets.<name>.split's fractions."""
        over = self.dataset(name).split.model_dump(exclude_none=True)
        return (
            SplitConfig.model_validate({**self.split.model_dump(), **over}) if over else self.split
        )

    def train_config(self, name: str) -> TrainConfig:
        """train.<task> of dataset `name`, with its datasets.<name>.train overrides."""
        ds = self.dataset(name)
        base = self.train.for_task(ds.task)
        over = ds.train.model_dump(exclude_none=True)
        return base.model_copy(update=over) if over else base

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ConfigError(
                f"dataset {name!r} is not in params.yaml datasets; "
                f"known: {', '.join(self.datasets)}"
            )
        return self.datasets[name]


# --- loading and error messages -------------------------------------------------


def _field_description(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str | None:
    """Walk `loc` through the pydantic models to the field's 'allowed' text."""
    desc = None
    for part in loc:
        if model is None:
            return desc
        if isinstance(part, str) and part in getattr(model, "model_fields", {}):
            info = model.model_fields[part]
            desc = info.description
            for meta in info.metadata:
                desc = getattr(meta, "description", None) or desc
            ann = info.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if part == "datasets":
                model = "datasets"  # type: ignore[assignment]
            elif get_origin(ann) is dict:
                model = ("mapping", get_args(ann)[1])  # type: ignore[assignment]  # next: a key
        elif model == "datasets":
            model = "dataset"  # type: ignore[assignment]  # next part is the dataset name
        elif model == "dataset":
            model = SOURCE_MODELS.get(part)
        elif isinstance(model, tuple):
            value = model[1]
            model = value if isinstance(value, type) and issubclass(value, BaseModel) else None
        else:
            return desc
    return desc


def _key(loc: tuple[Any, ...]) -> str:
    # A discriminated union puts the tag in loc: datasets.line.line.noise -> datasets.line.noise
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] == "datasets" and parts[2] in SOURCE_MODELS:
        del parts[2]
    return ".".join(parts)


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = _key(loc)
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _key(loc[:-1])
        where = f" in {parent}" if parent else ""
        return f"{key} is not a known key{where} (misspelled?)"
    if kind == "missing":
        allowed = _field_description(Params, loc)
        return f"{key} is required" + (f": {allowed}" if allowed else "")
    if kind == "union_tag_invalid":
        return f"{key}.source must be one of {', '.join(SOURCES)}, got {err['ctx']['tag']!r}"
    if kind == "union_tag_not_found":
        return f"{key}.source is required: one of {', '.join(SOURCES)}"
    if kind == "value_error":
        msg = str(err["ctx"]["error"])
        return f"{key}: {msg}" if key else msg
    allowed = _field_description(Params, loc)
    if allowed is None:
        allowed = err["msg"].replace("Input should be ", "").rstrip(".")
    return f"{key} must be {allowed}, got {value!r}{_number_hint(value)}"


def _number_hint(value: Any) -> str:
    """YAML 1.1 reads `1e-6` (no dot) as text: say how to write the number."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    text = repr(number)
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    return f" (text, not a number: write {text})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    import yaml

    from linflow.core.storage import load_yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the repo root)") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ConfigError(f"{path}: file is empty")
    return parse_params(raw, str(path))
