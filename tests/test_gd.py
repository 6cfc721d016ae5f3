"""Gradient descent on plain functions: the closed form of each step, the bound."""

from __future__ import annotations

import numpy as np
import pytest

from linflow import gd


@pytest.mark.parametrize("lr", [0.05, 0.2, 0.45, 0.55, 1.05])
def test_each_step_scales_x_by_one_minus_lr_lambda(lr):
    f = gd.FUNCTIONS["2x^2"]  # f = 2x^2, f' = 4x, lambda = 4
    path = gd.descend_numpy(f, np.array([1.0]), lr, 20)
    np.testing.assert_allclose(path[:, 0], (1 - 4 * lr) ** np.arange(21), rtol=1e-12)


def test_the_bound_is_two_over_lambda_max_and_splits_converge_from_diverge():
    f, g = gd.FUNCTIONS["2x^2"], gd.FUNCTIONS["x^2+y^2+z^2"]
    assert (f.lambda_max, f.lr_bound) == (4.0, 0.5)
    assert (g.lambda_max, g.lr_bound) == (2.0, 1.0)
    below = gd.descend_numpy(f, np.array([1.0]), 0.49, 200)
    above = gd.descend_numpy(f, np.array([1.0]), 0.51, 200)
    assert f.value(below[-1]) < 1e-3 < 1e3 < f.value(above[-1])


@pytest.mark.parametrize("name", ["2x^2", "x^2+y^2+z^2"])
@pytest.mark.parametrize("lr", [0.1, 0.55])
def test_autograd_takes_the_same_steps_as_the_hand_written_gradient(name, lr):
    f = gd.FUNCTIONS[name]
    start = np.linspace(1.0, -0.5, len(f.coef))
    by_hand = gd.descend_numpy(f, start, lr, 15)
    auto, values = gd.descend_torch(gd.torch_function(f), start, lr, 15)
    np.testing.assert_array_equal(auto, by_hand)
    np.testing.assert_allclose(values, [f.value(x) for x in by_hand], rtol=1e-15)
