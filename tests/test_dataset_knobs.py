"""Per-dataset knobs as a learner sets them: `dvc exp run -S datasets.<ds>.<key>=...`.

Every key of ``datasets.<ds>.train`` and ``datasets.<ds>.split`` is in params.yaml
(null: the task's / the top-level value), so DVC's override needs no ``++``; and
each re-runs only the stages that read it (dvc.yaml lists keys, not whole sections).
Checked with DVC's own override code and ``dvc status`` on a copy of the project.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from linflow.core.config import ConfigError, SplitOverrides, TrainOverrides, parse_params

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _apply(path: Path, overrides: list[str]) -> None:
    """What `dvc exp run -S` does to params.yaml before it runs anything."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, overrides)


def test_every_train_and_split_key_of_every_dataset_is_settable_without_plus(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    raw = yaml.safe_load(params.read_text())
    overrides = []
    for name, ds in raw["datasets"].items():
        assert set(ds["train"]) == set(TrainOverrides.model_fields), name
        assert set(ds["split"]) == set(SplitOverrides.model_fields), name
        overrides += [f"datasets.{name}.train.epochs=7", f"datasets.{name}.split.test=0.2"]
        overrides += [f"datasets.{name}.split.val=0.1"]
    _apply(params, overrides)  # a key missing from params.yaml would need `++` here
    p = parse_params(yaml.safe_load(params.read_text()))
    for name in raw["datasets"]:
        assert p.train_config(name).epochs == 7
        s = p.split_config(name)
        assert (s.train, s.val, s.test) == (0.7, 0.1, 0.2)


def test_a_key_not_in_params_yaml_still_needs_plus(tmp_path):
    """The check above can fail: DVC refuses a key params.yaml lacks."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    with pytest.raises(Exception, match="Invalid `--set-param` value"):
        _apply(params, ["datasets.synthetic.train.no_such_knob=1"])


def test_a_dataset_loss_must_suit_its_task(params):
    raw = params
    raw["datasets"]["synthetic"]["train"]["loss"] = "mae"
    assert parse_params(raw).train_config("synthetic").loss == "mae"
    assert parse_params(raw).train_config("line").loss == "mse"  # the others keep theirs
    raw["datasets"]["digits"]["train"]["loss"] = "mae"
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "datasets.digits.train.loss must be one of 'cross_entropy'" in str(err.value)
    assert "got 'mae'" in str(err.value)


def test_a_dataset_split_must_still_sum_to_one(params):
    raw = params
    raw["datasets"]["line"]["split"]["train"] = 0.8  # val, test stay 0.15 + 0.15
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert msg.startswith("params.yaml: datasets.line.split: train + val + test must sum to 1")
    assert "0.8 + 0.15 + 0.15" in msg


def _stages_whose_params_changed(project: Path) -> set[str]:
    res = subprocess.run(
        [str(DVC), "status", "--json"], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    changed = set()
    for stage, entries in json.loads(res.stdout or "{}").items():
        for entry in entries:
            deps = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            if isinstance(deps.get("params.yaml"), dict):  # a params dep, not validate's file
                changed.add(stage)
    return changed


@pytest.fixture
def project(tmp_path):
    """The pipeline's definition and lock, without its data (status compares params)."""
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    autostage = false\n")
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "stages"),
    [
        (["datasets.synthetic.train.lr=0.03"], {"train@synthetic"}),
        (["datasets.synthetic.train.loss=mae"], {"train@synthetic", "reference@synthetic"}),
        (["datasets.digits.split.test=0.2", "datasets.digits.split.val=0.1"], {"split@digits"}),
        (["datasets.line.data.noise=0.5"], {"prepare@line"}),
    ],
    ids=["lr", "loss", "split", "data"],
)
def test_a_dataset_knob_reruns_only_what_reads_it(project, overrides, stages):
    """(Downstream stages follow through their data deps, as DVC runs them.)"""
    _apply(project / "params.yaml", overrides)
    parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    assert _stages_whose_params_changed(project) == stages, "(or dvc.lock is stale: dvc repro)"
