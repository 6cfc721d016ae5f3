import subprocess
import sys

import pytest
import yaml

from linflow.core.config import ConfigError, load_params, parse_params


def _set(d: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


def test_default_params_are_valid(base_params):
    p = parse_params(base_params)
    assert p.split.train + p.split.val + p.split.test == pytest.approx(1.0)
    assert set(p.datasets) >= {"line", "synthetic", "diabetes", "digits"}


BAD = [
    ("train.regression.lr", -0.1, r"train\.regression\.lr must be a finite float > 0, got -0\.1$"),
    ("train.regression.lr", 0.0, r"train\.regression\.lr must be a finite float > 0, got 0\.0$"),
    ("train.regression.lr", float("nan"), r"lr must be a finite float > 0, got nan$"),
    ("train.regression.lr", float("inf"), r"lr must be a finite float > 0, got inf$"),
    ("train.classification.epochs", 2.5, r"epochs must be an integer >= 1, got 2\.5$"),
    ("train.classification.epochs", True, r"epochs must be an integer >= 1, got True$"),
    (
        "train.classification.batch_size",
        0,
        r"batch_size must be an integer >= 1, or 'full' for the whole train split "
        r"\(full-batch gradient descent\), got 0$",
    ),
    ("train.classification.lrr", 0.1, r"train\.classification\.lrr is not a known key"),
    ("split.train", 0.8, r"split: train \+ val \+ test must sum to 1, got .* = 1\.1$"),
    (
        "datasets.line.source",
        "mnist",
        r"datasets\.line\.source must be one of line, .*got 'mnist'$",
    ),
    ("seed", -1, r"seed must be an integer in \[0, 2\*\*32\), got -1$"),
    ("seed", 2**32, r"seed must be an integer in \[0, 2\*\*32\), got 4294967296$"),
    ("train.device", "tpu", r"train\.device must be one of 'cpu', 'cuda', got 'tpu'$"),
    ("datasets.line.task", "classification", r"datasets\.line\.task must be 'regression'"),
    (
        "datasets.line.train.flip",
        True,
        r"datasets\.line\.train\.flip is for images \(sources fashion_mnist, digits\), not "
        r"source 'line': use noise, or switch it off; got True$",
    ),
    ("train.regression.shift", 2, r"train\.regression\.shift \(dataset line\) is for images"),
    ("datasets.digits.train.shift", 5, r"shift must be less than or equal to 4, got 5$"),
    ("train.regression.noise", -0.1, r"noise must be a finite float >= 0, got -0\.1$"),
]


@pytest.mark.parametrize(("key", "value", "match"), BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_values_give_one_line_naming_key_value_and_allowed(params, key, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_params(_set(params, key, value))
    assert "\n" not in str(info.value)


def test_missing_section_is_named(params):
    del params["datasets"]
    with pytest.raises(ConfigError, match=r"datasets is required"):
        parse_params(params)


def test_config_is_frozen(base_params):
    p = parse_params(base_params)
    with pytest.raises(Exception, match="frozen"):
        p.train.regression.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "file is empty"),
        ("train: [1, 2\n", "not valid YAML at line"),
        ("- 1\n", "must hold a mapping"),
    ],
)
def test_unreadable_params_file(tmp_path, text, match):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


CLI_CASES = [
    ("train.regression.lr", -0.1, "lr must be a finite float > 0, got -0.1"),
    (
        "train.regression.lr",
        float("nan"),
        "train.regression.lr must be a finite float > 0, got nan",
    ),
    (
        "train.regression.lr",
        float("inf"),
        "train.regression.lr must be a finite float > 0, got inf",
    ),
    ("train.regression.lr", 0.0, "train.regression.lr must be a finite float > 0, got 0.0"),
    ("seed", -1, "seed must be an integer in [0, 2**32), got -1"),
    ("seed", 2**32, "seed must be an integer in [0, 2**32), got 4294967296"),
    (
        "train.regression.batch_size",
        0,
        "train.regression.batch_size must be an integer >= 1, or 'full' for the whole train "
        "split (full-batch gradient descent), got 0",
    ),
    ("train.regression.epochs", 2.5, "epochs must be an integer >= 1, got 2.5"),
    ("train.regression.epochs", True, "epochs must be an integer >= 1, got True"),
    ("train.regression.learning_rate", 0.1, "learning_rate is not a known key"),
    ("split.train", 0.8, "must sum to 1"),
    ("datasets.line.source", "csv", "source must be one of"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), CLI_CASES, ids=[c[0] + "=" + str(c[1]) for c in CLI_CASES]
)
@pytest.mark.parametrize("stage", ["prepare", "train"])
def test_cli_exits_nonzero_with_one_line_and_writes_nothing(
    tmp_path, params, key, value, message, stage
):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_set(params, key, value)))
    out = tmp_path / "out"
    if stage == "prepare":
        args = ["prepare", "line", "--out", str(out / "line.npz")]
    else:
        args = [
            "train",
            "line",
            "--data",
            str(tmp_path / "nodata"),
            "--model",
            str(out / "m"),
            "--reports",
            str(out / "r"),
        ]
    res = subprocess.run(
        [sys.executable, "-m", "linflow", "--params", str(bad), *args],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"linflow {stage}: error: ") and message in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("section", ["split", "reference", "compare", "verify", "gd"])
def test_code_defaults_equal_params_yaml(base_params, section):
    """A params file without the section behaves as the committed params.yaml documents."""
    full = parse_params(base_params)
    trimmed = {k: v for k, v in base_params.items() if k != section}
    assert getattr(parse_params(trimmed), section) == getattr(full, section)


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def test_a_minimal_params_file_gets_every_committed_value_leaf_by_leaf(base_params):
    """Every code default is the committed params.yaml's value: a params file that names
    only its datasets' sources parses to the same config, every leaf of it."""
    minimal = {"datasets": {n: {"source": e["source"]} for n, e in base_params["datasets"].items()}}
    got = _leaves(parse_params(minimal).model_dump())
    want = _leaves(parse_params(base_params).model_dump())
    assert sorted(got) == sorted(want)
    differ = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert differ == {}, f"code default != params.yaml (code, params.yaml): {differ}"
    # ... and the committed file names every leaf the code has (nothing is hidden
    # in the code): each leaf of params.yaml's own text is one of the config's.
    assert set(_leaves(base_params)) <= set(want)
