import numpy as np
import pytest

from linflow.core.artifacts import validate_arrays
from linflow.core.config import ConfigError, parse_params
from linflow.core.storage import DataError
from linflow.datasets import load_source


@pytest.fixture
def cfgs(base_params):
    return parse_params(base_params).datasets


def test_line_follows_y_3x_plus_1(cfgs):
    raw = load_source("line", cfgs["line"], seed=0)
    assert raw.X.shape == (100, 1) and raw.task == "regression"
    w, b = np.polyfit(raw.X[:, 0], raw.y, 1)
    assert w == pytest.approx(3.0, abs=0.1) and b == pytest.approx(1.0, abs=0.05)


def test_line_degree_adds_the_powers_of_x_and_degree_1_is_x_itself(base_params):
    raw_params = {**base_params, "datasets": {"line": base_params["datasets"]["line"]}}
    line = raw_params["datasets"]["line"] = dict(raw_params["datasets"]["line"])
    plain = load_source("line", parse_params(raw_params).datasets["line"], seed=0)
    line["data"] = {**line["data"], "degree": 3}
    cubic = load_source("line", parse_params(raw_params).datasets["line"], seed=0)
    assert cubic.feature_names == ["x", "x^2", "x^3"] and cubic.X.shape == (100, 3)
    np.testing.assert_array_equal(cubic.X[:, 0], plain.X[:, 0])  # same draws, same x
    x = plain.X[:, 0].astype(np.float64)  # x^3 was taken before the cast to float32
    np.testing.assert_allclose(cubic.X[:, 2], x**3, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(cubic.y, plain.y)
    for bad in (0, 31, 2.0):
        line["data"] = {**line["data"], "degree": bad}
        with pytest.raises(
            ConfigError, match=r"datasets.line.data.degree must be an integer in \[1, 30\]"
        ):
            parse_params(raw_params)


@pytest.mark.parametrize(
    ("truth", "g"),
    [
        ("quadratic", lambda x: x**2),
        ("cubic", lambda x: x**3),
        ("sine", lambda x: np.sin(np.pi * x)),
    ],
)
def test_line_truth_bends_y_and_keeps_x_and_the_noise(base_params, truth, g):
    """y = slope g(x) + intercept + noise: the same x and noise draws as the linear line,
    and a straight line explains clearly less of it than the true curve does."""
    raw_params = {**base_params, "datasets": {"line": dict(base_params["datasets"]["line"])}}
    line = raw_params["datasets"]["line"]
    plain = load_source("line", parse_params(raw_params).datasets["line"], seed=0)
    line["data"] = {**line["data"], "truth": truth}
    bent = load_source("line", parse_params(raw_params).datasets["line"], seed=0)
    np.testing.assert_array_equal(bent.X, plain.X)
    x = plain.X[:, 0].astype(np.float64)
    noise = plain.y - (3.0 * x + 1.0)  # the linear line's noise draws
    np.testing.assert_allclose(bent.y, 3.0 * g(x) + 1.0 + noise, atol=1e-5)

    def r2(features):
        A = np.column_stack([*features, np.ones_like(x)])
        res = bent.y - A @ np.linalg.lstsq(A, bent.y, rcond=None)[0]
        return 1 - res.var() / bent.y.var()

    assert r2([x]) < 0.9 < 0.98 < r2([g(x)])
    line["data"]["truth"] = "exp"
    with pytest.raises(ConfigError, match=r"datasets.line.data.truth must be one of 'linear'"):
        parse_params(raw_params)


def test_synthetic_matches_d2l(cfgs):
    raw = load_source("synthetic", cfgs["synthetic"], seed=0)
    assert raw.X.shape == (1000, 2)
    Xa = np.hstack([raw.X, np.ones((1000, 1))]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(Xa, raw.y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(coef, [2.0, -3.4, 4.2], atol=2e-3)


def test_same_seed_same_bytes_other_seed_other_data(cfgs):
    a = load_source("line", cfgs["line"], seed=0)
    b = load_source("line", cfgs["line"], seed=0)
    c = load_source("line", cfgs["line"], seed=1)
    assert a.X.tobytes() == b.X.tobytes() and a.y.tobytes() == b.y.tobytes()
    assert a.X.tobytes() != c.X.tobytes()


def test_bundled_sets(cfgs):
    d = load_source("diabetes", cfgs["diabetes"], seed=0)
    assert d.X.shape == (442, 10) and d.task == "regression"
    g = load_source("digits", cfgs["digits"], seed=0)
    assert g.X.shape == (1797, 64) and g.X.min() == 0 and g.X.max() == 1
    assert len(g.class_names) == 10 and set(np.unique(g.y)) == set(range(10))


def _arrays(**over):
    a = {
        "task": np.array("classification"),
        "X": np.zeros((4, 2), dtype=np.float32),
        "y": np.array([0, 1, 2, 1]),
        "class_names": np.array(["a", "b", "c"]),
    }
    a.update(over)
    return a


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"X": np.array([[0.0, np.nan]] * 4, dtype=np.float32)}, "X has a non-finite value"),
        ({"X": np.zeros((4, 2), dtype=np.complex64)}, "X must be a 2-D float or uint8 array"),
        ({"y": np.array([0, 1, 3, 1])}, r"labels must be in \[0, 3\)"),
        ({"y": np.array([0.0, 1.0, 2.0, 1.0])}, "classification labels must be integers"),
        ({"task": np.array("regression")}, "regression targets must be floats"),
        ({"y": np.array([0, 1])}, r"y must have shape \(4,\)"),
    ],
)
def test_validate_arrays_rejects_bad_data(over, match):
    with pytest.raises(DataError, match=match):
        validate_arrays(_arrays(**over), "some.npz")


def test_sources_are_registered_once_with_a_loader_and_a_params_model():
    from linflow.core.config import SOURCE_MODELS, SOURCES
    from linflow.datasets import LOADERS

    assert tuple(LOADERS) == SOURCES == tuple(SOURCE_MODELS)
