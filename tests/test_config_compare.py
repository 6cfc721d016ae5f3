"""params.yaml validation of the keys issue 3 adds: batch_size 'full', reference, compare."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from linflow.core.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def edited(raw, dotted: str, value):
    params = copy.deepcopy(raw)
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return params


def test_default_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.compare.regression.weight_rel_l2 == 1e-3
    assert params.compare.classification.min_agreement == 0.97
    assert params.reference.max_iter >= 100


@pytest.mark.parametrize("value", ["full", 1, 64])
def test_batch_size_accepts_full_or_a_positive_int(raw, value):
    params = parse_params(edited(raw, "train.regression.batch_size", value))
    assert params.train.regression.batch_size == value


@pytest.mark.parametrize("value", [0, -3, 2.5, "ful", True, None])
def test_batch_size_rejects_the_rest_in_one_line(raw, value):
    with pytest.raises(ConfigError) as info:
        parse_params(edited(raw, "train.regression.batch_size", value))
    msg = str(info.value)
    assert msg == (
        "params.yaml: train.regression.batch_size must be an integer >= 1, or 'full' for the "
        f"whole train split (full-batch gradient descent), got {value!r}"
    )


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("compare.regression.weight_rel_l2", -1.0, "a finite float >= 0, or null"),
        ("compare.regression.test_r2_delta", float("inf"), "a finite float >= 0, or null"),
        ("compare.classification.min_agreement", 1.5, "a float in [0, 1], or null"),
        ("compare.classification.min_agreement", "high", "a float in [0, 1], or null"),
        ("reference.max_iter", 0, "an integer >= 1"),
        ("reference.tol", 0.0, "a finite float > 0"),
    ],
)
def test_bad_tolerances_name_key_value_and_allowed(raw, key, value, allowed):
    with pytest.raises(ConfigError, match=rf"^params\.yaml: {key} must be .*got "):
        parse_params(edited(raw, key, value))
    with pytest.raises(ConfigError) as info:
        parse_params(edited(raw, key, value))
    assert allowed in str(info.value)


def test_null_tolerance_means_report_only(raw):
    params = parse_params(edited(raw, "compare.regression.weight_rel_l2", None))
    assert params.compare.regression.weight_rel_l2 is None


def test_unknown_compare_key_is_rejected(raw):
    with pytest.raises(ConfigError, match="compare.regression.weight_rel is not a known key"):
        parse_params(edited(raw, "compare.regression.weight_rel", 0.1))
