"""report, in-process: reports/summary.md over the datasets' rows (reports/summary/<ds>.json,
compare's document), and the platform."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from linflow.core.errors import DataError
from linflow.core.storage import read_json


def test_report_gains_reference_columns_and_gaps(line_run, tmp_path, run_stage):
    out = tmp_path / "summary.md"
    reports = line_run.root / "reports"
    assert run_stage("report", line_run.params, "line", "--reports", reports, "--out", out) is None
    text = out.read_text()
    assert "| dataset | task | model | params | n_test | reference | metric | ours |" in text
    assert "normal equations" in text
    rows = [line for line in text.splitlines() if "weight_rel_l2" in line]
    assert rows and rows[0].endswith("| pass |")


def test_both_datasets_in_the_order_given_at_the_default_path(
    line_run, digits_run, tmp_path, monkeypatch, run_stage
):
    (tmp_path / "reports" / "summary").mkdir(parents=True)
    for run in (line_run, digits_run):  # its row is all report reads
        shutil.copy(
            run.root / "reports" / "summary" / f"{run.name}.json",
            tmp_path / "reports" / "summary",
        )
    monkeypatch.chdir(tmp_path)
    run_stage("report", line_run.params, "digits", "line")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["summary", "summary.md"]
    lines = (tmp_path / "reports" / "summary.md").read_text().splitlines()
    firsts = [
        ln.split(" | ")[0].lstrip("| ") for ln in lines if re.match(r"^\| (line|digits) \|", ln)
    ]
    assert firsts == ["digits", "line", "digits", "line"]  # metric rows, then gap rows
    digits = next(ln for ln in lines if ln.startswith("| digits | classification |"))
    assert "| SoftmaxRegression | 650 | 269 | LogisticRegression | accuracy |" in digits
    ours = read_json(digits_run.reports / "compare.json")["test"]["ours"]["accuracy"]
    assert f"| {ours:.4f} |" in digits
    assert sum(ln.startswith("| | | | | | | ") for ln in lines) == 1 + 2  # digits 1, line 2 more
    reported = [ln for ln in lines if ln.endswith("| n/a | reported |")]
    assert len(reported) == 2  # digits' weight_rel_l2 and train_objective_rel_gap
    agreement = read_json(digits_run.reports / "compare.json")["checks"]["agreement"]["value"]
    assert f"| digits | agreement | {agreement:.4f} | >= | 0.9700 | pass |" in lines


def test_by_default_every_dataset_of_params_yaml_in_its_order_and_no_other(
    line_run, digits_run, tmp_path, monkeypatch, run_stage, make_params
):
    rows = tmp_path / "reports" / "summary"
    rows.mkdir(parents=True)
    for run in (line_run, digits_run):
        shutil.copy(run.root / "reports" / "summary" / f"{run.name}.json", rows)
    # A removed dataset's row stays on disk (DVC does not delete it): it is not shown.
    shutil.copy(rows / "line.json", rows / "gone.json")
    monkeypatch.chdir(tmp_path)
    run_stage("report", line_run.params)  # params: line, digits
    text = (tmp_path / "reports" / "summary.md").read_text()
    firsts = [m.group(1) for m in re.finditer(r"^\| (\w+) \| (?:regression|classification) \|", text, re.M)]  # fmt: skip
    assert firsts == ["line", "digits"]
    assert "gone" not in text
    (rows / "line.json").unlink()  # a listed dataset without its row: named, nothing written
    with pytest.raises(DataError, match=r"reports/summary/line\.json: file not found"):
        run_stage("report", line_run.params, "--out", tmp_path / "other.md")
    assert not (tmp_path / "other.md").exists()


def test_platform_records_kernels_versions_and_the_pinned_threads(line_run, tmp_path, run_stage):
    platform = tmp_path / "platform.json"
    run_stage(
        "report", line_run.params, "line", "--reports", line_run.root / "reports",
        "--out", tmp_path / "summary.md", "--platform", platform,
    )  # fmt: skip
    fp = json.loads(platform.read_text())
    assert fp["threads"] == {"train": 1, "reference": 2}  # params.yaml, not the machine's
    assert {"machine", "torch_cpu", "versions"} <= set(fp)
    assert {"torch", "numpy", "scikit-learn"} <= set(fp["versions"])
    assert "hostname" not in platform.read_text()


def test_a_dataset_without_compare_json_is_named_and_nothing_written(line_run, tmp_path, run_stage):
    out = tmp_path / "summary.md"
    reports = line_run.root / "reports"
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(reports / 'summary' / 'nope.json'))}: file not found"
    ):
        run_stage("report", line_run.params, "line", "nope", "--reports", reports, "--out", out)
    assert not out.exists()


def test_a_compare_json_from_an_older_linflow_names_the_missing_key(line_run, tmp_path, run_stage):
    doc = read_json(line_run.reports / "compare.json")
    del doc["checks"]
    (tmp_path / "summary").mkdir()
    (tmp_path / "summary" / "line.json").write_text(json.dumps(doc))
    out = tmp_path / "summary.md"
    with pytest.raises(
        DataError, match=r"summary/line\.json: missing key\(s\) checks \(written by an older"
    ):
        run_stage("report", line_run.params, "line", "--reports", tmp_path, "--out", out)
    assert not out.exists()
