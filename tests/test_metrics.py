import numpy as np
import pytest
from sklearn import metrics as skm

from linflow.metrics import classification_metrics, log_softmax, regression_metrics


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    y_hat = y + rng.normal(scale=0.3, size=50)
    m = regression_metrics(y, y_hat)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, y_hat))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, y_hat)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, y_hat))
    assert m["r2"] == pytest.approx(skm.r2_score(y, y_hat))


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3)) * 3
    y = rng.integers(0, 3, size=40)
    m = classification_metrics(y, logits)
    p = np.exp(log_softmax(logits))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, logits.argmax(1)))
    assert m["cross_entropy"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]))
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(y, logits.argmax(1)))


def test_log_softmax_is_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 0.0]])
    out = log_softmax(z)
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(0.0)
