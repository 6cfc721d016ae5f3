"""Fixtures of the in-process stage tests: tiny params, a stage runner, a chained pipeline.

Every test under tests/stages calls a stage's ``run(args, params)`` in this process;
``args`` come from the stage's own ``add_arguments``, so an option left out gets the
default ``linflow <stage>`` gives it. The pipeline (prepare -> split -> train ->
reference -> evaluate -> compare) runs once per session and per dataset, on default
paths in one temporary folder laid out like the repository. All of tests/stages
share one MLflow store of their own, so the runs they count are theirs.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

# The pipeline's params.yaml, with only these datasets and the tests' training edits:
# line converges to the closed form in 150 full-batch epochs at lr 0.4 (under its
# stable bound 2/lambda_max ~ 1), digits keeps params.yaml's settings (compare passes).
DATASETS = ("line", "digits")
EDITS = {"train.regression.lr": 0.4, "train.regression.epochs": 150}
CHAIN = ("prepare", "split", "train", "reference", "evaluate", "compare")


def params_dict(base: dict, edits: dict | None = None) -> dict:
    """params.yaml as a dict: DATASETS only, EDITS and then `edits` (dotted keys) applied."""
    raw = copy.deepcopy(base)
    raw["datasets"] = {name: raw["datasets"][name] for name in DATASETS}
    for dotted, value in {**EDITS, **(edits or {})}.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


@pytest.fixture(scope="session")
def make_params(base_params):
    """make_params({'train.regression.lr': 2.0}) -> validated Params."""
    from linflow.core.config import parse_params

    return lambda edits=None: parse_params(params_dict(base_params, edits))


@pytest.fixture(scope="session")
def params_file(base_params):
    """params_file(path, {dotted: value}) writes that params.yaml (for tests through `main`)."""

    def write(path: Path, edits: dict | None = None) -> Path:
        path.write_text(yaml.safe_dump(params_dict(base_params, edits)))
        return path

    return write


def parse_args(name: str, *argv: object) -> argparse.Namespace:
    """What `linflow <name> argv...` hands to the stage's run()."""
    from linflow import stages

    parser = argparse.ArgumentParser(prog=f"linflow {name}")
    stages.load(name).add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture(scope="session")
def run_stage():
    """run_stage('train', params, 'line', '--data', path, ...) -> the stage's return value."""
    from linflow import stages

    return lambda name, params, *argv: stages.load(name).run(parse_args(name, *argv), params)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('stages-mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _stages_mlflow_store(monkeypatch, mlflow_uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)


@pytest.fixture
def mlflow_client(mlflow_uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A folder laid out like the repository: data/, models/, reports/."""
    return tmp_path_factory.mktemp("workspace")


def _chain(dataset: str, root: Path, uri: str, make_params, run_stage) -> SimpleNamespace:
    params = make_params()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # every path is the stage's default, relative to the working folder
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for stage in CHAIN:
            assert run_stage(stage, params, dataset) is None, stage
    return SimpleNamespace(
        name=dataset,
        root=root,
        params=params,
        raw=root / "data" / "raw" / f"{dataset}.npz",
        data=root / "data" / "prepared" / dataset,
        model=root / "models" / dataset,
        reports=root / "reports" / dataset,
        reference=root / "reports" / dataset / "reference.json",
    )


@pytest.fixture(scope="session")
def line_run(workspace, mlflow_uri, make_params, run_stage) -> SimpleNamespace:
    """The whole pipeline of `line` (100 rows), once: paths of its outputs, its Params."""
    return _chain("line", workspace, mlflow_uri, make_params, run_stage)


@pytest.fixture(scope="session")
def digits_run(workspace, mlflow_uri, make_params, run_stage) -> SimpleNamespace:
    """The whole pipeline of `digits` (1797 rows, 10 classes), once."""
    return _chain("digits", workspace, mlflow_uri, make_params, run_stage)
