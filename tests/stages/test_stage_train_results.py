"""train, in-process: a run is not left without test metrics when DVC will skip evaluate.

DVC re-runs train when any of its params changes, also where the weights cannot
(a dataset whose own override wins), and then skips evaluate and compare. On a
store with no earlier run of those weights (a new team server), train logs their
results from the workspace -- exactly when dvc.lock says DVC will skip them.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from linflow.core.lockfile import path_md5


def _entry(root, deps, outs):
    return {
        "deps": [{"path": p, "md5": path_md5(root / p)} for p in deps],
        "outs": [{"path": p, "md5": path_md5(root / p)} for p in outs],
    }


@pytest.fixture
def locked_copy(line_run, tmp_path, monkeypatch):
    """A copy of line's outputs with a dvc.lock recording evaluate@line and compare@line
    as run on them, and a store of its own."""
    from mlflow import MlflowClient

    for rel in ("data/prepared/line", "models/line", "reports/line"):
        shutil.copytree(line_run.root / rel, tmp_path / rel)
    lock = {
        "schema": "2.0",
        "stages": {
            "evaluate@line": _entry(
                tmp_path,
                ["data/prepared/line", "models/line"],
                ["reports/line/metrics.json", "reports/line/predictions.csv"],
            ),
            "compare@line": _entry(
                tmp_path,
                ["models/line", "reports/line/reference.json"],
                ["reports/line/compare.json", "reports/line/gaps.json"],
            ),
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, MlflowClient(tracking_uri=uri)


def _training_runs(client):
    exp = client.get_experiment_by_name("linflow-line")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])


def test_same_weights_and_skipped_stages_log_their_outputs(locked_copy, line_run, run_stage):
    root, client = locked_copy
    run_stage("train", line_run.params, "line")
    (run,) = _training_runs(client)
    m = run.data.metrics
    test = yaml.safe_load((root / "reports/line/metrics.json").read_text())["line"]["test"]
    assert {f"test_{k}": v for k, v in test.items()}.items() <= m.items()
    assert {"ref_weight_rel_l2", "ref_test_r2", "ref_train_loss_gap"} <= set(m)
    assert run.data.tags["linflow.results_from"] == "outputs of evaluate@line, compare@line"
    assert run.data.tags["linflow.compare"] == "pass"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "evaluation.json", "predictions.png", "compare.json"} <= names


def test_stages_dvc_will_run_log_themselves(locked_copy, line_run, run_stage):
    root, client = locked_copy
    # evaluate's output differs from what dvc.lock recorded: DVC re-runs evaluate, which
    # logs; train must not take the stale file for this run's result.
    (root / "reports/line/metrics.json").write_text('{"line": {"test": {"r2": 0.0}}}\n')
    run_stage("train", line_run.params, "line")
    (run,) = _training_runs(client)
    assert not any(k.startswith("test_") for k in run.data.metrics)
    assert "ref_weight_rel_l2" in run.data.metrics  # compare is still current
    assert run.data.tags["linflow.results_from"] == "outputs of compare@line"
