"""The input transform of a table: imputation and one-hot encoding, fitted on train rows.

Pure: arrays in, arrays and a JSON-able document out. ``fit_encoder`` learns from
the train split only (medians for empty numeric cells, the levels of each
categorical column); ``encode`` applies the same document to any rows -- val, test,
and later new rows -- so nothing about val/test leaks into training, and the
document (``transform.json``, stored with the split and the model) is all a
consumer needs.

Encoding choices (docs/pipeline.md#your-own-table):

- numeric columns pass through; with ``missing: impute`` an empty cell takes the
  train split's median of that column;
- a categorical column with L train levels becomes L - 1 indicator columns: the
  most frequent train level (ties: the first in sorted order) is the baseline,
  encoded as all zeros. Dropping one level keeps [X 1] full rank (no dummy trap),
  so the least-squares reference is unique and SGD can reach it;
- a level never seen in train (only in val, test or new rows) is encoded as the
  baseline (all zeros) and counted, never an error;
- with ``missing: impute`` an empty categorical cell is the level ``(missing)``,
  fitted like any other level.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fit_encoder",
    "encode",
    "encoded_names",
    "apply_scaler",
    "category_text",
    "category_codes",
    "to_days",
    "MISSING_LEVEL",
]

MISSING_LEVEL = "(missing)"


def fit_encoder(
    X_num: np.ndarray,
    X_cat: np.ndarray,
    num_names: list[str],
    cat_names: list[str],
    missing: str,
) -> dict:
    """The encoder fitted on train rows.

    X_num : ndarray of shape (n, d) float64, NaN for an empty cell
    X_cat : ndarray of shape (n, c) text, '' for an empty cell
    """
    numeric = []
    for j, name in enumerate(num_names):
        col = X_num[:, j]
        present = col[~np.isnan(col)]
        fill = float(np.median(present)) if present.size else 0.0
        numeric.append({"name": name, "fill": fill})
    categorical = []
    for j, name in enumerate(cat_names):
        col = np.where(X_cat[:, j] == "", MISSING_LEVEL, X_cat[:, j])
        levels, counts = np.unique(col, return_counts=True)  # sorted levels
        baseline = str(levels[int(np.argmax(counts))])  # first of the most frequent
        categorical.append(
            {
                "name": name,
                "baseline": baseline,
                "levels": [str(v) for v in levels if v != baseline],
            }
        )
    return {"missing": missing, "numeric": numeric, "categorical": categorical}


def encoded_names(encoder: dict) -> list[str]:
    """Column names of the encoded matrix: numeric names, then ``column=level``."""
    names = [c["name"] for c in encoder["numeric"]]
    for c in encoder["categorical"]:
        names += [f"{c['name']}={level}" for level in c["levels"]]
    return names


def encode(encoder: dict, X_num: np.ndarray, X_cat: np.ndarray) -> tuple[np.ndarray, dict]:
    """(float32 matrix of shape (n, d_num + sum(L - 1)), {column: rows with an unseen level}).

    Empty cells take the fitted fill (numbers) or the (missing) level (categories).
    """
    n = X_num.shape[0] if X_num.ndim == 2 and X_num.shape[1] else X_cat.shape[0]
    d = len(encoder["numeric"]) + sum(len(c["levels"]) for c in encoder["categorical"])
    out = np.zeros((n, d), dtype=np.float32)
    at = len(encoder["numeric"])
    if at:
        # One row-major pass (float64 -> float32), then the fills: writing column by
        # column would sweep the whole matrix once per column.
        out[:, :at] = X_num
        empty_rows, empty_cols = np.nonzero(np.isnan(X_num))
        if empty_rows.size:
            fills = np.array([col["fill"] for col in encoder["numeric"]], dtype=np.float64)
            out[empty_rows, empty_cols] = fills[empty_cols]
    unseen: dict[str, int] = {}
    for j, col in enumerate(encoder["categorical"]):
        values = np.where(X_cat[:, j] == "", MISSING_LEVEL, X_cat[:, j])
        levels = np.asarray(col["levels"], dtype=str)
        pos = np.searchsorted(levels, values) if levels.size else np.zeros(n, dtype=np.int64)
        hit = (pos < levels.size) & (levels[np.minimum(pos, max(levels.size - 1, 0))] == values)
        hit &= levels.size > 0
        rows = np.flatnonzero(hit)
        out[rows, at + pos[rows]] = 1.0
        lost = int(np.count_nonzero(~hit & (values != col["baseline"])))
        if lost:
            unseen[col["name"]] = lost
        at += len(col["levels"])
    return out, unseen


def apply_scaler(X: np.ndarray, scaler) -> np.ndarray:
    """float32 features (X * x_scale - mean) / std, shape (n, d): what every model sees.

    The scaler is split's ``scaler.json`` (fitted on the train rows). Every consumer
    -- the stages, ``linflow predict``, the logged MLflow model -- scales with this."""
    Xf = np.multiply(X, np.float32(scaler["x_scale"]), dtype=np.float32)  # one pass
    if scaler["standardize"]:
        Xf -= np.asarray(scaler["mean"], dtype=np.float32)
        Xf /= np.asarray(scaler["std"], dtype=np.float32)
    return Xf


def _text(v) -> str:
    return str(int(v)) if isinstance(v, float) and v == int(v) else str(v)


# Cells of one of these types that compare equal are spelled alike (not so for Decimal).
_GROUPABLE = (str, int, float, bool)


def category_codes(values: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, texts): cell i of a categorical column is the text texts[codes[i]], or ''
    (an empty cell) where codes[i] is -1. Texts may repeat (3 and 3.0 are both '3').

    When every present cell has the same plain type (a column as read from a file), equal
    cells are grouped first (pandas.factorize), so the spelling runs once per distinct
    value instead of once per row."""
    present = np.flatnonzero(~missing)
    cells = values[present]
    codes = np.full(values.shape[0], -1, dtype=np.int64)
    kinds = set(map(type, cells))
    if len(kinds) == 1 and kinds.pop() in _GROUPABLE:
        import pandas as pd

        cell_codes, uniques = pd.factorize(cells, use_na_sentinel=False)
        texts = [_text(v) for v in uniques.tolist()]  # Python scalars, as the cells were
    else:
        cell_codes, texts = np.arange(cells.size), [_text(v) for v in cells]
    codes[present] = cell_codes
    return codes, np.array(texts, dtype=str) if texts else np.zeros(0, dtype="<U1")


def category_text(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """A categorical column's cells as text, '' for an empty cell: the one spelling of a
    level wherever rows come from (a whole number read as 3.0 is the level '3')."""
    if not values.shape[0]:
        return np.zeros(0, dtype="<U1")
    codes, texts = category_codes(values, missing)
    return np.append(texts, "")[codes]  # code -1: the '' appended


EPOCH_DAYS = "1970-01-01"


def to_days(series) -> np.ndarray:
    """Dates (a pandas Series of dates or date text) as float64 days since 1970-01-01,
    NaN where empty. Raises ValueError(row) at the first cell that is not a date."""
    import pandas as pd

    try:
        stamps = pd.to_datetime(series, errors="raise", utc=True, format="mixed")
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
        bad = int(np.argmax(parsed.isna().to_numpy() & series.notna().to_numpy()))
        raise ValueError(bad) from None
    days = (stamps - pd.Timestamp(EPOCH_DAYS, tz="UTC")) / pd.Timedelta(days=1)
    return days.to_numpy(dtype=np.float64, na_value=np.nan)
