"""MLflow Models and the Model Registry: what a training becomes for MLflow users.

Each training logs its model as an MLflow Model (pyfunc, models-from-code: the
code is :mod:`linflow.core.model_code` with linflow's pure scoring modules
shipped beside it as the package ``linflow_model``; the weights, transform and
card are artifacts -- no pickle anywhere) with a signature of the dataset's raw
columns and an input example of a few test rows, and registers it as a version
of ``linflow-<dataset>``. compare then writes the version's model card (its
description) and gate verdict, and gives a passing version an alias:
``champion`` on the committed pipeline, ``challenger`` in an experiment.

A version is added only for new weights (tag ``linflow.weights_md5``): a rerun
that reproduces the same bytes, or a run-cache restore (no training), adds none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

__all__ = ["model_name", "log_model", "register", "find_version", "record_gate", "ALIASES"]

WEIGHTS_TAG = "linflow.weights_md5"
# The logged model's name in its run (runs:/<run id>/pyfunc). Not "model": the run's
# artifact folder model/ (weights, card, transform) has that name, and MLflow 3
# resolves runs:/<run id>/model to a logged model of that name first.
LOGGED_NAME = "pyfunc"
GATE_TAG = "linflow.gate"
ALIASES = ("champion", "challenger")
SHIPPED = ("scoring.py", "transform.py", "metrics.py")  # linflow's pure scoring path
# What serving needs, pinned as the project pins it (constraints.txt): a clean
# `mlflow models serve --env-manager virtualenv` installs exactly these.
REQUIREMENTS = ("mlflow", "numpy", "pandas", "safetensors")


def model_name(dataset: str) -> str:
    return f"linflow-{dataset}"


def requirements() -> list[str]:
    return [f"{dist}=={metadata.version(dist)}" for dist in REQUIREMENTS]


def signature(transform: Mapping, task: str):
    """The raw columns a user has (not the standardised matrix) -> predictions."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"numeric": "double", "bool": "boolean", "date": "string"}
    inputs = [
        ColSpec(c.get("type") or kinds.get(c["kind"], "string"), c["name"])
        for c in transform["inputs"]
    ]
    if task == "regression":
        outputs = [ColSpec("double", "predicted")]
    else:
        outputs = [ColSpec("string", "predicted")]
        outputs += [ColSpec("double", f"p_{n}") for n in transform["class_names"]]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _package(tmp: Path) -> tuple[Path, Path]:
    """(the model's code file, the linflow_model package folder), copied into tmp."""
    src = Path(__file__).resolve().parents[1]  # src/linflow
    pkg = tmp / "linflow_model"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""linflow\'s scoring path, shipped with the model."""\n')
    for name in SHIPPED:
        shutil.copyfile(src / name, pkg / name)
    code = tmp / "model_code.py"
    shutil.copyfile(src / "core" / "model_code.py", code)
    return code, pkg


@contextlib.contextmanager
def _fluent_store(uri: str):
    """MLflow's fluent API (which Model.log uses) pointed at `uri` for the block, through
    the environment variable it reads; the variable is restored afterwards. Not
    mlflow.set_tracking_uri: that also writes the variable, and unsets it on reset,
    so a caller's own MLFLOW_TRACKING_URI would be lost."""
    key = "MLFLOW_TRACKING_URI"
    before = os.environ.get(key)
    os.environ[key] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def log_model(
    client, run_id: str, experiment_id: str, model_dir: Path, task: str, example: Mapping | None
):
    """Log models/<ds>/ as the run's MLflow Model; its ModelInfo (model_id, model_uri)."""
    import mlflow
    import pandas as pd
    import yaml
    from mlflow.models import Model
    from mlflow.utils import environment

    transform = json.loads((model_dir / "transform.json").read_text())
    frame = None
    if example and example.get("data"):
        frame = pd.DataFrame(example["data"], columns=example["columns"])
    # Created in the run's experiment by our client (Model.log would file it in the
    # fluent API's active experiment: MLflow's Default).
    model = client.create_logged_model(
        experiment_id=experiment_id, name=LOGGED_NAME, source_run_id=run_id, model_type="linflow"
    )
    # MLflow checks the pinned requirements against this environment by scanning every
    # installed distribution's files (0.9 s here); they were read from this environment
    # (requirements()), so they hold by construction.
    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda reqs: None
    # It also validates the input example by enforcing the signature on it (784 pandas
    # column casts for Fashion-MNIST, ~0.25 s): the example is the test rows' raw
    # columns, the signature those columns' types, made from one transform.json
    # (tests/stages/test_stage_predict.py scores the logged example). And it reads
    # MLmodel back with PyYAML's pure-Python loader (~0.25 s for 784 columns): the C
    # one (libyaml) reads the same document.
    from mlflow.models import utils as model_utils

    validate = mlflow.pyfunc._validate_prediction_input
    mlflow.pyfunc._validate_prediction_input = lambda *args, **kwargs: None
    validate_serving = model_utils._validate_serving_input  # the same, through a model load
    model_utils._validate_serving_input = lambda *args, **kwargs: None
    safe_load = yaml.safe_load
    if getattr(yaml, "__with_libyaml__", False):
        yaml.safe_load = lambda stream: yaml.load(stream, Loader=yaml.CSafeLoader)  # noqa: S506
    try:
        with (
            tempfile.TemporaryDirectory(prefix="linflow-model-") as tmp,
            _fluent_store(client.tracking_uri),
        ):
            code, pkg = _package(Path(tmp))
            return Model.log(
                artifact_path=None,
                name=LOGGED_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=model.model_id,
                python_model=str(code),
                code_paths=[str(pkg)],
                artifacts={
                    "weights": str(model_dir / "model.safetensors"),
                    "transform": str(model_dir / "transform.json"),
                    "card": str(model_dir / "model.json"),
                },
                signature=signature(transform, task),
                input_example=frame,
                pip_requirements=requirements(),
            )
    finally:
        environment.warn_dependency_requirement_mismatches = check
        mlflow.pyfunc._validate_prediction_input = validate
        model_utils._validate_serving_input = validate_serving
        yaml.safe_load = safe_load


def find_version(client, dataset: str, weights_md5: str):
    """The registered version holding these weights, or None."""
    from mlflow.exceptions import MlflowException

    name = model_name(dataset)
    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.`{WEIGHTS_TAG}` = '{weights_md5}'"
        )
    except MlflowException:  # no registered model of that name yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def register(client, dataset: str, info, run_id: str, tags: Mapping[str, str]):
    """Add a version of linflow-<dataset> for the logged model, unless its weights are
    registered already: (version, added)."""
    from mlflow.exceptions import MlflowException

    name = model_name(dataset)
    existing = find_version(client, dataset, tags[WEIGHTS_TAG])
    if existing is not None:
        return existing, False
    try:
        client.create_registered_model(
            name,
            description=f"linflow's {dataset} model: one version per training with new weights "
            "(docs/mlflow.md#the-model-registry)",
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=dict(tags), model_id=info.model_id
    )
    return version, True


def record_gate(
    client, dataset: str, weights_md5: str, passed: bool, alias: str | None, description: str
):
    """compare's verdict on the version with these weights: its card (description), the
    gate tag, and an alias (None: none). Returns the version number, or None."""
    version = find_version(client, dataset, weights_md5)
    if version is None:
        return None
    name = model_name(dataset)
    tags = version.tags or {}
    commit = tags.get("mlflow.source.git.commit", "unknown")
    dirty = " (with uncommitted changes)" if tags.get("linflow.git_dirty") == "true" else ""
    description += (
        f" Trained at git commit {commit}{dirty} on data md5 {tags.get('linflow.data_md5', '?')}"
        f" (train split); weights md5 {weights_md5}."
    )
    client.update_model_version(name, version.version, description=description)
    client.set_model_version_tag(name, version.version, GATE_TAG, "pass" if passed else "fail")
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version.version
