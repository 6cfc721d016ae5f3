"""Scoring rows a user has: raw columns -> the model's inputs -> predictions.

Pure (numpy, pandas): the one code path of ``linflow predict``, the logged MLflow
model (``mlflow.pyfunc.load_model(...).predict(df)``, ``mlflow models serve``)
and, through the same functions, evaluate's numbers. A model is its weights
(W of shape (k, d), b of shape (k,)) and its ``transform.json`` (the raw input
columns and their kinds, the encoder fitted on the train split, the scaler).

This module and the two it imports (``transform``, ``metrics``) are shipped
inside every logged MLflow model, so they import nothing else of linflow.
"""

from __future__ import annotations

import numpy as np

from . import metrics
from .transform import apply_scaler, category_text, encode, to_days

__all__ = [
    "ScoringError",
    "check_model",
    "check_frame",
    "model_inputs",
    "predict_frame",
    "output_columns",
    "CHUNK_ROWS",
]

# Rows scored at a time: evaluate's block size (metrics.predict_linear), so a file
# of the test rows gives predictions.csv's numbers bit for bit.
CHUNK_ROWS = metrics._ROWS


class ScoringError(ValueError):
    """Rows or a model that cannot be scored: one line naming the column and row."""


def input_names(transform: dict) -> list[str]:
    return [c["name"] for c in transform["inputs"]]


def output_columns(transform: dict, task: str) -> list[str]:
    if task == "regression":
        return ["predicted"]
    return ["predicted", *(f"p_{n}" for n in transform["class_names"])]


def check_model(W: np.ndarray, b: np.ndarray, transform: dict, task: str) -> None:
    """Weights and transform that belong together, or one ScoringError line: a tampered
    or mismatched artifact must fail to load, never give a wrong answer."""
    if task not in ("regression", "classification"):
        raise ScoringError(f"model task must be regression or classification, got {task!r}")
    for key in ("inputs", "feature_names", "scaler", "class_names"):
        if key not in transform:
            raise ScoringError(f"transform.json has no {key!r}: not a linflow transform")
    d = len(transform["feature_names"])
    k = len(transform["class_names"]) if task == "classification" else 1
    if W.ndim != 2 or W.shape != (k, d) or b.shape != (k,):
        raise ScoringError(
            f"weights of shape {tuple(W.shape)} + {tuple(b.shape)} do not fit the transform: "
            f"{d} model inputs and {k} output(s) need ({k}, {d}) + ({k},)"
        )
    scaler = transform["scaler"]
    if len(scaler["mean"]) != d or len(scaler["std"]) != d:
        raise ScoringError(f"the scaler has {len(scaler['mean'])} features, the model {d}")
    encoder = transform.get("encoder")
    if encoder is not None:
        from .transform import encoded_names

        if encoded_names(encoder) != transform["feature_names"]:
            raise ScoringError("the encoder's columns are not the model's feature names")
        kinds = [c["kind"] for c in transform["inputs"] if c["kind"] != "categorical"]
        if len(kinds) != len(encoder["numeric"]):
            raise ScoringError("the transform's numeric inputs do not match its encoder")
    elif len(transform["inputs"]) != d:
        raise ScoringError(f"{len(transform['inputs'])} inputs but {d} model features")
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise ScoringError("the weights hold a non-finite value")


def check_frame(df, transform: dict, keep_extra: bool = False) -> list[str]:
    """Every input column present, no unknown one unless kept: the extra columns."""
    names = input_names(transform)
    have = [str(c) for c in df.columns]
    missing = [n for n in names if n not in have]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoringError(
            f"the rows have no column {missing[0]!r}{more}; the model's inputs are "
            + ", ".join(map(repr, names[:10]))
            + (" ..." if len(names) > 10 else "")
        )
    extra = [c for c in have if c not in names]
    if extra and not keep_extra:
        raise ScoringError(
            f"column {extra[0]!r} is not an input of the model"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + "; drop it, or keep it in the output with --keep-extra"
        )
    return extra


def _numbers(series, name: str, kind: str, missing_ok: bool, offset: int = 0) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64)
    elif pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = series.astype("string")
        if kind == "bool":
            low = text.str.lower()
            text = low.map({"true": "1", "false": "0"}).fillna(text)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(values) & series.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ScoringError(
                f"column {name!r}: {series.iloc[i]!r} at row {offset + i + 1} is not a number "
                f"(the model was trained on {kind} values)"
            )
    if np.isinf(values).any():
        i = int(np.argmax(np.isinf(values)))
        raise ScoringError(f"column {name!r}: infinite value at row {offset + i + 1}")
    if not missing_ok and np.isnan(values).any():
        i = int(np.argmax(np.isnan(values)))
        raise ScoringError(
            f"column {name!r} is empty at row {offset + i + 1}; the model was trained without empty "
            "cells (data.missing: error): fill it"
        )
    return values


def _number_block(df, inputs: list, missing_ok: bool, offset: int) -> np.ndarray | None:
    """All inputs numbers in numeric (not bool) columns: the (n, d) float64 block in one
    conversion, checked as _numbers checks each column (the same first error); else None.
    Column by column, Fashion-MNIST's 784 pixels cost pandas' overhead 784 times."""
    import pandas as pd

    names = [c["name"] for c in inputs]
    if any(c["kind"] in ("categorical", "date") for c in inputs):
        return None
    dtypes = df.dtypes
    if not all(
        pd.api.types.is_numeric_dtype(dtypes[n]) and not pd.api.types.is_bool_dtype(dtypes[n])
        for n in names
    ):
        return None
    # C order, as column_stack gave: a frame made from one 2-D array converts to its
    # transpose's view (F order), and the matrix product then sums in another order
    # (1 ulp off predictions.csv).
    block = np.ascontiguousarray(df[names].to_numpy(dtype=np.float64, na_value=np.nan))
    bad = ~np.isfinite(block) if not missing_ok else np.isinf(block)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))  # the first column with a problem, as _numbers
        _numbers(df[names[j]], names[j], inputs[j]["kind"], missing_ok, offset)  # raises
    return block


def frame_arrays(df, transform: dict, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(numeric inputs (n, d) float64, NaN if empty; categorical inputs (n, c) text).
    Errors count rows from offset + 1 (a chunk of a larger file)."""
    encoder = transform.get("encoder")
    missing_ok = encoder is not None and encoder.get("missing") == "impute"
    n = len(df)
    block = _number_block(df, transform["inputs"], missing_ok, offset)
    if block is not None:
        return block, np.zeros((n, 0), dtype="<U1")
    num, cat = [], []
    for col in transform["inputs"]:
        name, kind = col["name"], col["kind"]
        series = df[name]
        if kind == "categorical":
            cat.append(category_text(series.to_numpy(dtype=object), series.isna().to_numpy()))
        elif kind == "date":
            try:
                days = to_days(series)
            except ValueError as exc:
                i = int(exc.args[0])
                raise ScoringError(
                    f"column {name!r}: {series.iloc[i]!r} at row {offset + i + 1} is not a date"
                ) from None
            if not missing_ok and np.isnan(days).any():
                i = int(np.argmax(np.isnan(days)))
                raise ScoringError(f"column {name!r} is empty at row {offset + i + 1}; fill it")
            num.append(days)
        else:
            num.append(_numbers(series, name, kind, missing_ok, offset))
    X_num = np.column_stack(num) if num else np.zeros((n, 0))
    X_cat = np.column_stack(cat) if cat else np.zeros((n, 0), dtype="<U1")
    return X_num, X_cat


def model_inputs(df, transform: dict, offset: int = 0) -> np.ndarray:
    """The float32 matrix the model sees, shape (n, d): encoded (tables), then scaled."""
    X_num, X_cat = frame_arrays(df, transform, offset)
    if transform.get("encoder") is not None:
        X, _ = encode(transform["encoder"], X_num, X_cat)  # unseen levels -> baseline
    else:
        X = X_num.astype(np.float32)
    return apply_scaler(X, transform["scaler"])


def predict_matrix(X: np.ndarray, W: np.ndarray, b: np.ndarray, task: str, class_names):
    """{column: values}: 'predicted' (a number, or a class name) and, for classification,
    one probability per class -- evaluate's maths (float64 outputs, log-sum-exp)."""
    out = metrics.predict_linear(X, W, b)  # (n, k) float64
    if task == "regression":
        return {"predicted": out[:, 0]}
    probs = np.exp(metrics.log_softmax(out))  # (n, k)
    names = np.asarray(class_names, dtype=object)
    cols = {"predicted": names[out.argmax(axis=1)]}
    for j, name in enumerate(class_names):
        cols[f"p_{name}"] = probs[:, j]
    return cols


def predict_frame(df, W, b, transform: dict, task: str):
    """Raw rows (a pandas DataFrame with the input columns) -> a DataFrame of predictions."""
    import pandas as pd

    check_frame(df, transform, keep_extra=True)
    X = model_inputs(df, transform)
    return pd.DataFrame(predict_matrix(X, W, b, task, transform["class_names"]), index=df.index)
