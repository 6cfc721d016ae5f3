"""`linflow verify` on a real repo: what passes, and what it must catch.

Each test re-runs one dataset's chain (`linflow verify <stage>`: that stage and
its upstream stages, forced) in its own copy of the session's reproduced repo;
`make verify` in CI runs the whole pipeline the same way.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .helpers import clone_reproduced, pipeline_env, run

pytestmark = pytest.mark.slow

LINE_OUTPUTS = [
    ("reports/params.valid", "validate"),
    ("reports/summary/datasets.txt", "validate"),
    ("data/raw/line.npz", "prepare@line"),
    ("data/prepared/line", "split@line"),
    ("models/line", "train@line"),
    ("reports/line/history.csv", "train@line"),
    ("reports/line/loss_curve.png", "train@line"),
    ("reports/line/predictions.csv", "evaluate@line"),
    ("reports/line/evaluation.json", "evaluate@line"),
    ("reports/line/metrics.json", "evaluate@line"),
    ("reports/line/predictions.png", "evaluate@line"),
]


@pytest.fixture
def repo(reproduced, tmp_path) -> Path:
    return clone_reproduced(reproduced[0], tmp_path / "repo")


def verify(repo: Path, *targets: str):
    return run(["linflow", "verify", *targets], repo, pipeline_env(), check=False)


def rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(path, stage) -> [status words..., detail...] of the table before 'What differs:'."""
    table = stdout.split("\n\nWhat differs:")[0].splitlines()[1:]
    return {tuple(ln.split()[:2]): ln.split()[2:] for ln in table if ln.strip()}


def differs(stdout: str) -> list[str]:
    """The rows of the 'What differs:' table."""
    if "What differs:" not in stdout:
        return []
    return stdout.split("What differs:\n")[1].split("\n\n")[0].splitlines()[1:]


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo, pipeline_env()).stdout


@pytest.mark.ci  # ~25 s: make test-ci and CI (whose make verify also reruns bit for bit)
def test_a_rerun_is_bit_identical_even_with_a_concurrent_repro(repo):
    runs_before = _training_runs(repo)
    proc = subprocess.Popen(
        ["linflow", "verify", "evaluate@line"], cwd=repo, env=pipeline_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        echoed = []
        for line in proc.stderr:  # verify echoes its `dvc repro -f`
            echoed.append(line)
            if line.startswith("Running stage 'split@line'"):
                break
        # A second `dvc repro` meanwhile is refused at once with DVC's lock message ...
        t0 = time.monotonic()
        second = run(["dvc", "repro"], repo, pipeline_env(), check=False)
        elapsed = time.monotonic() - t0
        assert proc.poll() is None, "the forced re-run ended before the second repro started"
    finally:
        stdout, rest = proc.communicate(timeout=300)
    assert second.returncode != 0 and elapsed < 15, (elapsed, second.stderr)
    assert "is busy, it is being blocked by" in second.stderr or (
        "Unable to acquire lock" in second.stderr
    )
    # ... and the first is unaffected: every output bit-identical, the lock current.
    stderr = "".join(echoed) + rest
    assert proc.returncode == 0, stdout + stderr
    got = rows(stdout)
    for path, stage in LINE_OUTPUTS:
        assert got[(path, stage)] == ["bit-identical"], (path, stdout)
    assert stdout.strip().endswith("verify OK: 11 outputs; 11 bit-identical")
    for stage in ("prepare@line", "split@line", "train@line", "evaluate@line"):
        assert f"Running stage '{stage}'" in stderr  # forced: each really ran
    assert git(repo, "status", "--porcelain", "reports") == ""
    assert _training_runs(repo) == runs_before  # its runs went to a throwaway store


def _training_runs(repo: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linflow-line")
    return len(client.search_runs([exp.experiment_id]))


def test_an_edited_metric_and_a_missing_report_fail_naming_them(repo):
    path = repo / "reports/line/metrics.json"
    doc = json.loads(path.read_text())
    true_rmse = doc["line"]["test"]["rmse"]
    doc["line"]["test"]["rmse"] = round(true_rmse * 0.5, 6)  # better than the pipeline gives
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    git(repo, "rm", "-q", "reports/line/loss_curve.png")  # a report left out of the commit
    git(repo, "commit", "-qam", "better rmse, no loss curve")

    res = verify(repo, "evaluate@line")

    assert res.returncode == 1
    got = rows(res.stdout)
    assert got[("reports/line/metrics.json", "evaluate@line")][0] == "drifted"
    (line,) = [ln for ln in differs(res.stdout) if ln.startswith("reports/line/metrics.json")]
    assert f"line.test.rmse {doc['line']['test']['rmse']:.6g} -> {true_rmse:.6g}" in line
    assert line.endswith("; the committed file is not the one dvc.lock records (edited?)")
    assert got[("reports/line/loss_curve.png", "train@line")][0] == "missing"
    assert got[("data/raw/line.npz", "prepare@line")] == ["bit-identical"]
    assert res.stdout.strip().splitlines()[-1].startswith("verify FAILED")


def test_a_changed_seed_without_a_new_lock_fails_listing_the_data_outputs(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seed"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "seed 1, lock not updated")

    res = verify(repo, "split@line")

    assert res.returncode == 1
    got = rows(res.stdout)
    assert got[("data/raw/line.npz", "prepare@line")][0] == "changed"
    assert got[("data/prepared/line", "split@line")][0] == "changed"
    what = "\n".join(differs(res.stdout))
    assert "data/raw/line.npz" in what and "data/prepared/line" in what
    assert "data must be bit-identical" in what
    # the folder's changed files are named, from the manifests in the DVC cache
    assert "(example.json, test.npz, train.npz ...)" in what  # the first three, sorted
    (stale,) = [ln for ln in differs(res.stdout) if ln.startswith("params.yaml:seed")]
    assert "prepare@line +1" in stale and "stale lock" in stale and "committed 0, now 1" in stale


def test_a_stale_lock_fails_even_when_the_outputs_are_identical(repo):
    # A dependency edited without re-running: dvc status on a clean clone would show it.
    dep = repo / "src/linflow/datasets/synthetic.py"
    dep.write_text(dep.read_text() + "\n# a comment: same outputs, new md5\n")
    git(repo, "commit", "-qam", "edit a dependency, forget dvc repro")

    res = verify(repo, "prepare@line")

    assert res.returncode == 1
    assert rows(res.stdout)[("data/raw/line.npz", "prepare@line")] == ["bit-identical"]
    # The module is line's `path` (its own dependency) and inside src/linflow/datasets.
    stale = sorted(ln.split()[:4] for ln in differs(res.stdout))
    assert stale == [
        ["src/linflow/datasets", "prepare@line", "stale", "lock"],
        ["src/linflow/datasets/synthetic.py", "prepare@line", "stale", "lock"],
    ]


# --- real drift is caught, on this CPU and as another CPU would run -------------------

OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


@pytest.mark.ci  # ~1 min each: CI's make test-ci runs them, keeping make test under 10 min
def test_a_changed_lr_fails_naming_the_param_even_as_another_cpu(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["regression"]["lr"] = 0.1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "lr 0.1, lock not updated")

    res = run(["linflow", "verify", "train@line"], repo, pipeline_env(**OTHER_CPU), check=False)

    assert res.returncode == 1, res.stdout + res.stderr
    (stale,) = [
        ln for ln in differs(res.stdout) if ln.startswith("params.yaml:train.regression.lr")
    ]
    assert "stale lock" in stale and "committed 0.2, now 0.1" in stale
    assert "torch DEFAULT, MKL COMPATIBLE" in res.stdout  # the platform it ran as


@pytest.mark.ci  # ~1 min each: CI's make test-ci runs them, keeping make test under 10 min
def test_a_one_line_change_to_the_maths_fails_naming_the_file_even_as_another_cpu(repo):
    src = repo / "src/linflow/training/loop.py"
    text = src.read_text()
    assert '{"params": [lin.bias], "weight_decay": 0.0}' in text
    src.write_text(text.replace(
        '{"params": [lin.bias], "weight_decay": 0.0}',
        '{"params": [lin.bias], "weight_decay": weight_decay}',  # decay the bias too
    ))  # fmt: skip
    git(repo, "commit", "-qam", "decay the bias, forget dvc repro")

    res = run(["linflow", "verify", "train@line"], repo, pipeline_env(**OTHER_CPU), check=False)

    assert res.returncode == 1
    (stale,) = [ln for ln in differs(res.stdout) if ln.startswith("src/linflow/training ")]
    assert "train@line" in stale and "stale lock" in stale


def test_strict_verify_refuses_another_numeric_platform_in_one_line(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["verify"]["strict"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "strict")
    import os

    # Another MKL code path than the one the fixture's results were made with (this
    # suite may itself run as an emulated other CPU).
    here = os.environ.get("MKL_CBWR", "auto")
    other = "AVX" if here == "COMPATIBLE" else "COMPATIBLE"
    t0 = time.monotonic()
    res = run(["linflow", "verify"], repo, pipeline_env(MKL_CBWR=other), check=False)
    assert res.returncode == 1 and time.monotonic() - t0 < 60  # refused before re-running
    (line,) = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert line.startswith("linflow verify: error: params.yaml: verify.strict: true needs")
    assert f"mkl_cbwr {here} -> {other}" in line
    assert "Running stage" not in res.stderr
