"""How far a checked number may move between CPUs: one rule per kind of number.

A re-run on another CPU runs other kernels (torch's vector ISA, MKL's code path,
numpy's SIMD dispatch, OpenBLAS's core type): floats differ in their last bits,
and minibatch SGD amplifies that into weights that differ visibly. A blanket
``abs + rel * |value|`` on each number is wrong both ways: too tight for a
difference of two large numbers (a delta of two MSEs of ~2600), too loose for
an accuracy on a small test split. Each kind of number instead gets a tolerance
on the scale of what it measures:

========================  ================================================  ===================
kind (keys)               allowed move                                      why
========================  ================================================  ===================
accuracy (test.accuracy)  max(min_rows, rows * n_test) / n_test             a few test rows near
                                                                            the boundary flip
agreement,                twice the accuracy's                              both models' rows
test_accuracy_delta                                                         may flip
loss (test.mse, rmse,     loss * |value|                                    losses move relatively
mae, cross_entropy)
test.r2                   loss * |1 - r2|                                   r2 = 1 - mse/var: the
                                                                            mse's relative move
test_r2_delta             loss * (2 |1 - r2| + delta)                       on the scale of the two
                                                                            r2 it subtracts
weight_rel_l2             weights                                           already in units of
                                                                            ||W*||
train_objective_rel_gap   2 * loss * (1 + gap)                              J and J* each move by
                                                                            `loss` relatively
========================  ================================================  ===================

The knobs (rows, min_rows, loss, weights) are params.yaml ``verify.tolerance``.
A number of no known kind must be equal. Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Allowed", "KINDS", "allowed", "kind_of"]

# The last part of a dotted metric key -> its kind.
KINDS: dict[str, str] = {
    "accuracy": "accuracy",
    "agreement": "agreement",
    "test_accuracy_delta": "agreement",
    "mse": "loss",
    "rmse": "loss",
    "mae": "loss",
    "cross_entropy": "loss",
    "r2": "r2",
    "test_r2_delta": "r2_delta",
    "weight_rel_l2": "weights",
    "train_objective_rel_gap": "objective_gap",
}


@dataclass(frozen=True)
class Allowed:
    """The largest move a number may make, and the rule that gave it (for the report)."""

    value: float
    rule: str


def kind_of(key: str) -> str | None:
    """The kind of a dotted metric key (`test.accuracy` -> 'accuracy'), None if unknown."""
    return KINDS.get(key.rsplit(".", 1)[-1])


def allowed(key: str, committed: float, tol, context: Mapping[str, Any] | None = None) -> Allowed:
    """How far metric `key` may move from its committed value.

    tol : config.VerifyTolerance (rows, min_rows, loss, weights)
    context : what the scale needs, from the same dataset's committed reports:
        ``n_test`` (test rows) and ``r2`` (our test r2); absent keys fall back to
        the share ``rows`` alone and to |1 - r2| = 1.
    """
    ctx = context or {}
    kind = kind_of(key)
    if kind in ("accuracy", "agreement"):
        n = ctx.get("n_test")
        if n:
            flips = max(tol.min_rows, tol.rows * n)
            share, rule = flips / n, f"{flips:g} of {n} test rows"
        else:
            share, rule = tol.rows, f"{tol.rows:g} of the test rows"
        if kind == "agreement":
            return Allowed(2 * share, f"2 x {rule} (both models)")
        return Allowed(share, rule)
    if kind == "loss":
        return Allowed(tol.loss * abs(committed), f"{tol.loss:g} relative")
    if kind == "r2":
        return Allowed(tol.loss * abs(1.0 - committed), f"{tol.loss:g} x |1 - r2|")
    if kind == "r2_delta":
        scale = abs(1.0 - ctx.get("r2", 0.0))
        return Allowed(
            tol.loss * (2 * scale + abs(committed)), f"{tol.loss:g} x (2|1 - r2| + delta)"
        )
    if kind == "weights":
        return Allowed(tol.weights, f"{tol.weights:g} x ||W*||")
    if kind == "objective_gap":
        return Allowed(2 * tol.loss * (1 + abs(committed)), f"2 x {tol.loss:g} (J and J*)")
    return Allowed(0.0, "no rule for this key: must be equal")
