"""add-dataset: a user's table -> one ``datasets:`` entry in params.yaml (not a DVC stage).

``linflow add-dataset NAME PATH --target COLUMN [--task ...] [--drop COL ...]``
reads the table once, infers what each column is (numbers, categories, dates,
IDs to drop), the task and the classes, checks that the pipeline can use it
(every error prepare and split would raise, raised now), then writes the entry
with comments saying what it found, tracks the file with DVC when it lies inside
the repository untracked, and prints the next command. Nothing is written when
any check fails. The entry is plain params.yaml: writing it by hand is the same.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("linflow")

_TRAIN_KEYS = (
    "impl", "loss", "lr", "batch_size", "epochs", "weight_decay", "momentum", "patience",
    "lr_schedule", "seed", "dropout", "l1", "noise", "flip", "shift", "processes",
)  # fmt: skip


def add_arguments(p) -> None:
    p.add_argument("name", help="the dataset's name in params.yaml (letters, digits, _)")
    p.add_argument("path", help="the table: .csv, .tsv, .parquet or .jsonl")
    p.add_argument("--target", required=True, help="the column to predict")
    p.add_argument(
        "--task",
        choices=("regression", "classification"),
        help="default: inferred (text, bool or a few integer labels -> classification)",
    )
    p.add_argument("--drop", nargs="*", default=[], metavar="COL", help="columns not to use")
    p.add_argument("--no-dvc", action="store_true", help="do not `dvc add` the file")


def _q(text: str) -> str:
    """A YAML scalar for any text (a JSON string is a YAML double-quoted string)."""
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text.lower() not in (
        "null", "true", "false", "yes", "no", "on", "off", "y", "n", "~",
    )  # fmt: skip
    return text if plain else json.dumps(text, ensure_ascii=False)


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _comment(text: str) -> str:
    return " ".join(str(text).split())


def _repo_path(path: Path) -> tuple[str, bool]:
    """(how params.yaml names the file, whether it is inside the repository)."""
    root = Path.cwd().resolve()
    full = path.resolve()
    try:
        return full.relative_to(root).as_posix(), True
    except ValueError:
        return str(full), False


def entry_text(
    name: str, rel: str, info, drop: list[str], train: dict | None = None, why: list[str] = ()
) -> tuple[str, dict]:
    """The params.yaml lines of the new entry (with its comments) and its data mapping."""
    cols = info.columns
    cat = [c for c in cols if c.role == "categorical"]
    dates = [c for c in cols if c.role == "date"]
    dropped = [c for c in cols if c.role == "drop"]
    numeric = [c for c in cols if c.role == "numeric"]
    used = [c for c in cols if c.role in ("categorical", "date", "numeric")]  # file order
    missing = [c for c in used if c.missing]
    read = info.read
    data = {
        "format": read.format,
        "target": next(c.name for c in cols if c.role == "target"),
        "drop": [c.name for c in dropped],
        "categorical": [c.name for c in cat],
        "dates": [c.name for c in dates],
        "missing": "impute" if missing else "error",
    }
    if read.format == "csv":
        data |= {"delimiter": read.delimiter, "decimal": read.decimal}
    classes = ", ".join(f"{k} {v}" for k, v in info.classes.items())
    lines = [
        f"  {name}:  # added by linflow add-dataset from {_comment(rel)} ({read.describe()})",
        f"    # {info.rows} rows; task {info.task} ({_comment(info.task_why)})"
        + (f"; {len(info.classes)} classes: {_comment(classes)}" if info.classes else ""),
        f"    # features: {len(numeric)} numeric, {len(cat)} categorical, {len(dates)} date"
        + (
            f"; dropped: {_comment(', '.join(f'{c.name} ({c.why})' for c in dropped))}"
            if dropped
            else ""
        ),  # fmt: skip
        "    source: table",
        f"    path: {_q(rel)}",
        f"    task: {info.task}",
        "    data:",
        f"      format: {data['format']}",
    ]
    if read.format == "csv":
        lines += [
            f"      delimiter: {json.dumps(read.delimiter)}",
            f"      decimal: {json.dumps(read.decimal)}",
        ]
    lines += [f"      target: {_q(data['target'])}", f"      drop: {_flow(data['drop'])}"]
    levels = ", ".join(f"{c.name} {c.levels}" for c in cat)
    lines.append(
        f"      categorical: {_flow(data['categorical'])}"
        + (f"  # one-hot; levels: {_comment(levels)}" if cat else "")
    )
    lines.append(
        f"      dates: {_flow(data['dates'])}" + ("  # -> days since 1970-01-01" if dates else "")
    )
    counts = ", ".join(f"{c.name} {c.missing}" for c in missing)
    lines.append(
        f"      missing: {data['missing']}"
        + (
            f"  # empty cells: {_comment(counts)} (train median / a level of their own)"
            if missing
            else "  # no empty cells among the features"
        )
    )
    lines += [
        "    standardize: true  # numeric columns to mean 0, std 1 (train split); one-hot stays 0/1",
        "    split: {train: null, val: null, test: null}",
    ]
    # Every train key listed (null: train.<task>'s), as the built-in entries have them,
    # so each is one `dvc exp run -S datasets.<name>.train.<key>=...` away.
    train = train or {}
    head = "    train:" + (
        "  # chosen by add-dataset (docs/pipeline.md#your-own-table)" if train else ""
    )
    lines.append(head)
    lines += [f"      {w}" for w in why]
    lines += [f"      {k}: {v}" for k, v in train.items()]
    lines += [f"      {k}: null" for k in _TRAIN_KEYS if k not in train]
    return "\n".join(lines) + "\n", data


def insert_entry(text: str, entry: str, source: str) -> str:
    """params.yaml with `entry` appended to the `datasets:` block (every other byte kept)."""
    from linflow.core.errors import ConfigError

    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"datasets:\s*(#.*)?$", ln)), None)
    if start is None:
        raise ConfigError(
            f"{source}: no block 'datasets:' (one key a line) to add to; add the entry by hand "
            "(docs/pipeline.md#your-own-table)"
        )
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"[^\s#]", lines[i])), len(lines)
    )
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1  # blank lines and top-level comments belong to the next key
    if lines[end - 1] and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end]) + entry + "".join(lines[end:])


def _tracked(rel: str) -> str | None:
    """'git' or 'dvc' when the file is already tracked, else None."""
    path = Path(rel)
    if Path(rel + ".dvc").is_file():
        return "dvc"
    res = subprocess.run(
        ["git", "ls-files", "--error-unmatch", rel], capture_output=True, text=True, check=False
    )
    if res.returncode == 0:
        return "git"
    for parent in path.parents:
        if Path(str(parent) + ".dvc").is_file():
            return "dvc"
    return None


def _dvc_add(rel: str) -> None:
    from linflow.core.errors import DataError

    dvc = Path(sys.executable).parent / "dvc"
    res = subprocess.run(
        [str(dvc) if dvc.exists() else "dvc", "add", "--quiet", rel],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        raise DataError(
            f"{rel}: `dvc add` failed ({why[-1] if why else res.returncode}); nothing was "
            "written: fix that, or run again with --no-dvc"
        )


def run(args, params) -> None:
    from linflow.core.config import load_params, parse_params
    from linflow.core.errors import ConfigError
    from linflow.core.storage import load_yaml, write_text
    from linflow.datasets import table

    name = args.name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(
            f"add-dataset: NAME must be letters, digits and '_' not starting with a digit "
            f"(it names stages, folders and the MLflow experiment), got {name!r}"
        )
    if name in params.datasets:
        raise ConfigError(
            f"add-dataset: {args.params} already has a dataset {name!r}; choose another name "
            "(or remove that entry first)"
        )
    rel, inside = _repo_path(Path(args.path))
    info = table.inspect(args.path, args.target, args.task, list(args.drop))
    entry, _ = entry_text(name, rel, info, list(args.drop))
    params_path = Path(args.params)
    new_text = insert_entry(params_path.read_text(), entry, str(params_path))
    new = parse_params(load_yaml(new_text), f"{params_path} (with the new entry)")
    cfg = new.dataset(name)
    # Every check prepare and split would make, now, on the table already read.
    raw = table.load(cfg, read=info.read)
    over, why = _recipe(new, name, raw)
    entry, _ = entry_text(name, rel, info, list(args.drop), over, why)
    new_text = insert_entry(params_path.read_text(), entry, str(params_path))
    parse_params(load_yaml(new_text), f"{params_path} (with the new entry)")
    tracked = _tracked(rel) if inside else None
    if inside and tracked is None and not args.no_dvc:
        _dvc_add(rel)
        tracked = "dvc (dvc add)"
    write_text(params_path, new_text)
    load_params(params_path)  # what every stage will read
    log.info(
        "add-dataset %s: %d rows, task %s (%s), %d feature column(s) -> datasets.%s in %s",
        name, info.rows, info.task, info.task_why, len(raw.feature_names) +
        len(raw.table["categorical"]), name, params_path,
    )  # fmt: skip
    if tracked:
        log.info("add-dataset %s: %s is tracked by %s", name, rel, tracked)
    elif not inside:
        log.info(
            "add-dataset %s: %s is outside the repository: a DVC dependency by its absolute "
            "path, not versioned with the project",
            name,
            rel,
        )
    add = f"git add {params_path}" + (f" {rel}.dvc" if tracked == "dvc (dvc add)" else "")
    print(f"next: dvc repro    (then: {add} dvc.lock reports/)")


def _train_rows(params, name: str, raw) -> np.ndarray:
    """The train rows split will pick (a class too small to stratify fails here, before
    anything is written)."""
    from linflow.core.errors import DataError
    from linflow.core.seeding import make_rng
    from linflow.split import split_indices, table_split_error

    s = params.split_config(name)
    classification = raw.task == "classification"
    try:
        idx = split_indices(
            raw.y.shape[0],
            (s.train, s.val, s.test),
            make_rng(params.seed, f"split/{name}"),
            y=raw.y if classification else None,
            class_names=raw.class_names if classification else None,
        )
    except DataError as exc:
        if not classification:
            raise
        raise table_split_error(raw.table["path"], raw.table["target"], exc) from None
    return idx[0]


def _recipe(params, name: str, raw) -> tuple[dict, list[str]]:
    """Train overrides for this table and the comment lines saying why: from the
    train split's features exactly as split will encode and scale them."""
    from linflow.core.artifacts import apply_scaler
    from linflow.recipe import classification_recipe, regression_recipe
    from linflow.split import fit_table

    cfg = params.dataset(name)
    rows = _train_rows(params, name, raw)
    _, X, _, scaler = fit_table(
        raw.X, raw.categorical, raw.feature_names, raw.table["categorical"],
        raw.table["missing"], rows, cfg.standardize,
    )  # fmt: skip
    X = apply_scaler(X[rows], scaler)
    base = params.train.for_task(raw.task)
    if raw.task == "regression":
        r = regression_recipe(X)
        over = {k: r[k] for k in ("lr", "momentum", "epochs")}
        why = [
            f"# train split: lambda_max {r['lambda_max']:.4g}, lambda_min {r['lambda_min']:.3g} "
            f"(condition number {r['condition']:.3g}) of the squared loss's Hessian:",
            "# heavy ball at lr 1/lambda_max, momentum (1 - 1/sqrt(condition))^2, reaches the "
            f"closed form in ~12 sqrt(condition) = {12 * r['condition'] ** 0.5:.0f} epochs",
        ]
    else:
        wd = base.weight_decay
        r = classification_recipe(X, wd, base.lr, base.batch_size, base.epochs)
        keys = ("lr", "momentum", "batch_size", "epochs")
        over = {k: r[k] for k in keys if k in r and r[k] != getattr(base, k)}
        if "condition" in r:
            why = [
                f"# train split: cross-entropy curvature between weight_decay {wd:g} and "
                f"L = {r['L']:.4g} (condition number <= {r['condition']:.3g}):",
                "# full-batch heavy ball at lr 1/L, momentum (1 - 1/sqrt(condition))^2 reaches "
                "LogisticRegression's optimum in ~12 sqrt(condition) = "
                f"{12 * r['condition'] ** 0.5:.0f} epochs",
            ]
        else:
            why = ["# weight_decay 0: no curvature floor; train.classification's recipe"]
    return over, why
