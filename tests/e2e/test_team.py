"""A team's setup on real engines: a DVC folder remote and a PostgreSQL-backed `mlflow server`.

One small pipeline run (line and digits: evaluate and compare with everything
upstream) in a fresh-clone copy, logged to that copy's own mlflow.db. Then:

- its outputs go to a folder remote (`dvc push`); a fresh `git clone` pulls them
  and `dvc repro` runs nothing;
- in that clone -- whose outputs came from the remote, so no stage ever ran
  against the team's server -- a throwaway PostgreSQL cluster and `mlflow server`
  on it (free 127.0.0.1 ports, stopped after, also on failure) receive a training
  that DVC re-runs to the same weights, a run that lacks its results, and then
  `linflow publish`: every dataset ends with one training run holding its params,
  curves, test metrics, gaps and artifacts, and one reference run; a second publish
  adds nothing.

~2 min (the mlflow server's first start on PostgreSQL alone takes ~30 s here).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from linflow.core.artifacts import CompareDoc
from linflow.core.storage import file_md5, read_json

from .helpers import copy_repo, pipeline_env, run
from .servers import mlflow_server, postgres_bin, postgres_cluster

pytestmark = pytest.mark.ci  # real DVC runs and servers: make test-ci and CI

DATASETS = ("line", "digits")
TARGETS = [f"{stage}@{ds}" for ds in DATASETS for stage in ("evaluate", "compare")]
TRAINING_FILES = {
    "history.csv", "loss_curve.png", "metrics.json", "evaluation.json", "predictions.png",
    "compare.json", "distance_to_reference.png", "reference_fit.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A fresh-clone copy in which line's and digits' stages ran, outputs committed."""
    repo = copy_repo(tmp_path_factory.mktemp("origin"))
    run(["dvc", "repro", *TARGETS], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "line and digits on this machine", "--allow-empty"], repo)
    return repo


@pytest.fixture(scope="module")
def clone(origin, tmp_path_factory) -> Path:
    """A fresh `git clone` of `origin` whose outputs came from a folder remote."""
    remote = tmp_path_factory.mktemp("dvc-remote")
    # What docs/mlflow.md's team section says to do once, committed so clones have it.
    run(["dvc", "remote", "add", "-d", "team", str(remote)], origin)
    run(["git", "commit", "-qam", "dvc remote: team"], origin)
    t0 = time.monotonic()
    run(["dvc", "push", "--with-deps", *TARGETS], origin)
    push_s = time.monotonic() - t0
    dest = tmp_path_factory.mktemp("clone") / "linflow"
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    t0 = time.monotonic()
    run(["dvc", "pull", "--with-deps", *TARGETS], dest)
    print(f"dvc push {push_s:.1f} s, dvc pull {time.monotonic() - t0:.1f} s")
    return dest


def test_a_fresh_clone_pulls_from_the_folder_remote_and_repro_runs_nothing(origin, clone):
    for ds in DATASETS:
        for rel in (f"models/{ds}/model.safetensors", f"reports/{ds}/reference.json",
                    f"data/prepared/{ds}/train.npz", f"reports/{ds}/predictions.csv"):  # fmt: skip
            assert file_md5(clone / rel) == file_md5(origin / rel), rel
    assert not (clone / "mlflow.db").exists()  # nothing ran here
    res = run(["dvc", "repro", *TARGETS], clone)
    assert "Running stage" not in res.stdout + res.stderr, res.stdout
    assert not (clone / "mlflow.db").exists()
    status = run(["dvc", "status", "--with-deps", *TARGETS], clone)
    assert "up to date" in status.stdout, status.stdout


def _runs(client, dataset: str, kind: str) -> list:
    exp = client.get_experiment_by_name(f"linflow-{dataset}")
    assert exp is not None, dataset
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`linflow.kind` = '{kind}'")


def _history_rows(path: Path) -> int:
    with path.open() as fh:
        return sum(1 for _ in csv.DictReader(fh))


@pytest.fixture
def postgres():
    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    with postgres_cluster() as uri:
        yield uri


def test_publish_makes_a_postgres_backed_server_complete(clone, postgres, tmp_path):
    from mlflow import MlflowClient

    with mlflow_server(postgres, tmp_path / "artifacts") as url:
        env = pipeline_env(MLFLOW_TRACKING_URI=url)
        client = MlflowClient(tracking_uri=url)

        # DVC re-runs a training to the same weights: it skips evaluate and compare, and
        # the server has no earlier run to copy from: train logs their outputs itself.
        res = run(["dvc", "repro", "-f", "train@line"], clone, env)
        assert "Running stage 'evaluate@line'" not in res.stdout
        (line_run,) = _runs(client, "line", "training")
        assert "test_r2" in line_run.data.metrics and "ref_weight_rel_l2" in line_run.data.metrics
        assert line_run.data.tags["linflow.results_from"] == (
            "outputs of evaluate@line, compare@line"
        )
        # A run of digits' weights without any results (trained outside the pipeline's paths).
        other = tmp_path / "digits-elsewhere"
        run(["linflow", "train", "digits", "--model", other / "m", "--reports", other / "r"],
            clone, env)  # fmt: skip
        weights = file_md5(clone / "models/digits/model.safetensors")
        assert file_md5(other / "m/model.safetensors") == weights  # same machine: same bytes
        (bare,) = _runs(client, "digits", "training")
        assert not any(k.startswith(("test_", "ref_")) for k in bare.data.metrics)

        res = run(["linflow", "publish", *DATASETS], clone, env)
        assert "completed" in res.stderr and "created" in res.stderr, res.stderr

        ids = {}
        for ds in DATASETS:
            (train,) = _runs(client, ds, "training")  # exactly one: none added, none doubled
            (ref,) = _runs(client, ds, "reference")
            ids[ds] = (train.info.run_id, ref.info.run_id)
            assert train.info.status == ref.info.status == "FINISHED"
            m = train.data.metrics
            test = read_json(clone / f"reports/{ds}/metrics.json")[ds]["test"]
            assert {f"test_{k}": v for k, v in test.items()}.items() <= m.items()
            doc = CompareDoc.from_json(read_json(clone / f"reports/{ds}/compare.json"), ds)
            assert doc.mlflow_metrics().items() <= m.items()
            assert train.data.tags["linflow.compare"] == "pass"
            assert train.data.tags["linflow.weights_md5"] == file_md5(
                clone / f"models/{ds}/model.safetensors"
            )
            assert "train.lr" in train.data.params
            epochs = _history_rows(clone / f"reports/{ds}/history.csv")
            assert len(client.get_metric_history(train.info.run_id, "val_loss")) == epochs
            arts = {a.path for a in client.list_artifacts(train.info.run_id)}
            assert arts >= TRAINING_FILES, TRAINING_FILES - arts
            model = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
            assert {"model/model.safetensors", "model/model.json"} <= model
            assert any(k.startswith("test_") for k in ref.data.metrics)
            assert {a.path for a in client.list_artifacts(ref.info.run_id)} == {"reference.json"}
            # The registry on the server: one version of these weights, gated, champion.
            (version,) = client.search_model_versions(f"name = 'linflow-{ds}'")
            assert version.tags["linflow.weights_md5"] == train.data.tags["linflow.weights_md5"]
            assert version.tags["linflow.gate"] == "pass"
            assert client.get_registered_model(f"linflow-{ds}").aliases == {"champion": version.version}  # fmt: skip
        assert ids["digits"][0] == bare.info.run_id  # completed, not replaced
        assert ids["line"][0] == line_run.info.run_id

        # Idempotent: a second publish creates nothing and adds nothing.
        res = run(["linflow", "publish", *DATASETS], clone, env)
        assert "created" not in res.stderr and "completed" not in res.stderr, res.stderr
        for ds in DATASETS:
            assert len(client.search_model_versions(f"name = 'linflow-{ds}'")) == 1
            assert [r.info.run_id for r in _runs(client, ds, "training")] == [ids[ds][0]]
            assert [r.info.run_id for r in _runs(client, ds, "reference")] == [ids[ds][1]]

    # A bare postgresql:// store URI works too (the driver comes with the project's
    # install): the same database, read directly, holds the runs.
    direct = MlflowClient(tracking_uri=postgres)
    assert [r.info.run_id for r in _runs(direct, "line", "training")] == [ids["line"][0]]
