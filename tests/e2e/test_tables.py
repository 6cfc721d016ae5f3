"""Your own table, end to end: `linflow add-dataset` then the real `dvc repro` in a copy.

A copy of the repository with one built-in dataset (line, for speed) gains two
tables by one command each -- a classification table (wine: string classes, a
categorical column, empty cells, a date, semicolon-delimited with decimal commas),
by the commands of docs/lessons.md's walk-through as written, and a regression
table (diabetes as Parquet: a text 'sex' column, empty cells) -- and `dvc repro`
takes both from file to every output, the compare gate passing at the defaults. Then one edited cell re-runs that table's chain and the report
only, and removing an entry removes it from the summary, `dvc metrics show`,
`dvc plots show`, dvc.lock and `linflow verify`.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from linflow.datasets.examples import diabetes_frame, write

from .helpers import ROOT, copy_repo, pipeline_env
from .helpers import run as _run

pytestmark = pytest.mark.slow

STAGES = ("prepare", "split", "train", "evaluate", "reference", "compare")


def _ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def walkthrough() -> list[str]:
    """The commands of docs/lessons.md's "How to train on your own table", in order."""
    text = (ROOT / "docs" / "lessons.md").read_text()
    section = text[text.index("## How to train on your own table") :]
    block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]  # fmt: skip
    return [ln.strip() for ln in block.strip().splitlines()]


def _keep_only(repo: Path, names: tuple[str, ...]) -> None:
    """params.yaml with only these built-in datasets (the others' blocks removed as text)."""
    text = (repo / "params.yaml").read_text()
    lines = text.splitlines(keepends=True)
    out, skip = [], False
    for line in lines:
        m = re.match(r"  (\w+):", line)
        if m and not line.startswith("   "):
            skip = m.group(1) not in names and _in_datasets(lines, line)
        elif re.match(r"\S", line):
            skip = False
        if not skip:
            out.append(line)
    (repo / "params.yaml").write_text("".join(out))


def _in_datasets(lines: list[str], line: str) -> bool:
    i = lines.index(line)
    top = next(ln for ln in reversed(lines[:i]) if re.match(r"\S", ln))
    return top.startswith("datasets:")


@pytest.fixture(scope="module")
def tables_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("tables"))
    env = pipeline_env()
    _keep_only(repo, ("line",))
    _run(["git", "commit", "-qam", "line only"], repo, env)
    # New files, not in git: add-dataset tracks them with `dvc add`. The wine table
    # by the page's commands as written (python -m ...examples, add-dataset, dvc repro).
    *steps, repro = walkthrough()
    assert repro == "dvc repro" and steps[1].startswith("linflow add-dataset wine ")
    added = [_run(shlex.split(cmd), repo, env) for cmd in steps][1:]
    write(diabetes_frame(), repo / "data" / "tables" / "diabetes.parquet")
    sugar = "linflow add-dataset sugar data/tables/diabetes.parquet --target progression"
    added.append(_run(shlex.split(sugar), repo, env))
    res = _run(shlex.split(repro), repo, env)
    return repo, env, added, res


def test_one_command_each_then_dvc_repro_makes_every_output(tables_repo):
    repo, _, added, res = tables_repo
    for a in added:
        assert "next: dvc repro" in a.stdout
    assert (repo / "data/tables/wine.csv.dvc").is_file()  # tracked by `dvc add`
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["datasets"]["wine"]["task"] == "classification"
    assert params["datasets"]["sugar"]["task"] == "regression"
    assert params["datasets"]["sugar"]["data"]["categorical"] == ["sex"]
    ran = _ran(res.stdout)
    assert {f"{s}@{ds}" for s in STAGES for ds in ("wine", "sugar")} <= ran
    for ds in ("wine", "sugar"):
        compare = json.loads((repo / f"reports/{ds}/compare.json").read_text())
        assert compare["passed"] is True, (ds, compare["checks"])
        assert (repo / f"models/{ds}/transform.json").is_file()
    # Class names from the labels wherever the built-ins show class names.
    pred = (repo / "reports/wine/predictions.csv").read_text().splitlines()
    assert pred[0] == "actual,predicted,p_barbera,p_barolo,p_grignolino"
    per_class = json.loads((repo / "reports/wine/evaluation.json").read_text())["test"]
    assert set(per_class["per_class_accuracy"]) == {"barbera", "barolo", "grignolino"}
    summary = (repo / "reports/summary.md").read_text()
    assert "| wine | classification |" in summary and "| sugar | regression |" in summary


def test_metrics_and_plots_list_the_tables_without_a_dvc_yaml_edit(tables_repo):
    repo, env, _, _ = tables_repo
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    files = {f for rev in shown.values() for f in rev["data"]}
    assert {"reports/wine/metrics.json", "reports/sugar/gaps.json"} <= files
    plots = _run(["dvc", "plots", "show", "--json"], repo, env).stdout
    assert "reports/wine/predictions.csv" in plots and "reports/sugar/history.csv" in plots
    assert _run(["git", "diff", "--quiet", "HEAD", "--", "dvc.yaml"], repo, env, check=False).returncode == 0  # fmt: skip


def test_one_changed_cell_reruns_that_table_and_the_report_only(tables_repo):
    repo, env, _, _ = tables_repo
    path = repo / "data/tables/wine.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("14,23", "14,25", 1)
    path.write_text("".join(lines))
    res = _run(["dvc", "repro"], repo, env)
    assert _ran(res.stdout) == {f"{s}@wine" for s in STAGES} | {"report"}


def test_removing_an_entry_removes_it_everywhere(tables_repo):
    repo, env, _, _ = tables_repo
    text = (repo / "params.yaml").read_text()
    start = text.index("  sugar:")
    end = start + 3 + re.search(r"\n(?=\S|  \S)", text[start + 3 :]).start() + 1
    (repo / "params.yaml").write_text(text[:start] + text[end:])
    _run(["dvc", "repro"], repo, env)
    assert "sugar" not in (repo / "reports/summary.md").read_text()
    assert "@sugar" not in (repo / "dvc.lock").read_text()
    shown = _run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "sugar" not in shown and "wine" in shown
    assert "sugar" not in _run(["dvc", "plots", "show", "--json"], repo, env).stdout
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "sugar removed"], repo, env)
    res = _run(["linflow", "verify"], repo, env)
    assert "verify OK" in res.stdout + res.stderr


def test_the_champion_scores_raw_table_rows_as_evaluate_did(tables_repo, tmp_path):
    """MLflow users' view: models:/linflow-wine@champion takes the file's raw columns
    (text categories, empty cells, dates) and applies the transform inside; `linflow
    predict` on the same rows writes predictions.csv's numbers."""
    import mlflow
    import pandas as pd

    from linflow.core.storage import load_npz

    repo, env, _, _ = tables_repo
    frame = pd.read_csv(repo / "data/tables/wine.csv", sep=";", decimal=",")
    test = load_npz(repo / "data/prepared/wine/test.npz")["index"]
    rows = frame.iloc[test].drop(columns="cultivar").reset_index(drop=True)
    expected = list(csv.reader((repo / "reports/wine/predictions.csv").open()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model("models:/linflow-wine@champion")
        out = model.predict(rows)
    assert [c.name for c in model.metadata.signature.inputs.inputs] == list(rows.columns)
    assert out["predicted"].tolist() == [r[1] for r in expected[1:]]
    np.testing.assert_allclose(out.iloc[:, 1:].to_numpy(), [[float(x) for x in r[2:]] for r in expected[1:]], rtol=1e-5)  # fmt: skip
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False, sep=";", decimal=",")
    _run(["linflow", "predict", "wine", "--input", str(path), "--output", str(tmp_path / "p.csv")], repo, env)  # fmt: skip
    got = list(csv.reader((tmp_path / "p.csv").open()))
    assert [r for r in got[1:]] == [r[1:] for r in expected[1:]]
