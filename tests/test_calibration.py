"""Calibration: ECE, reliability bins, temperature fitting and folding T into a Linear layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from hfxray.calibration import (
    expected_calibration_error,
    fit_temperature,
    fold_temperature_into_classifier,
    reliability_bins,
)


def test_ece_hand_built():
    probs = np.tile([0.8, 0.2], (10, 1))
    y_calibrated = np.array([0] * 8 + [1] * 2)  # 80% confident, 80% right
    assert expected_calibration_error(probs, y_calibrated) == pytest.approx(0.0, abs=1e-12)
    y_all_right = np.zeros(10, dtype=int)  # 80% confident, 100% right
    assert expected_calibration_error(probs, y_all_right) == pytest.approx(0.2)
    # Two bins: 0.6-confident all wrong (gap 0.6), 0.9-confident all right (gap 0.1), equal weight.
    probs2 = np.array([[0.6, 0.4]] * 5 + [[0.9, 0.1]] * 5)
    y2 = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(probs2, y2, n_bins=10) == pytest.approx(0.5 * 0.6 + 0.5 * 0.1)


def test_reliability_bins_shape_and_empty_bins():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([2, 2, 2], 200)
    y = rng.integers(0, 3, 200)
    bins = reliability_bins(probs, y, n_bins=10)
    assert len(bins["edges"]) == 11 and len(bins["count"]) == 10
    assert sum(bins["count"]) == 200
    # Top-label confidence of 3 classes is >= 1/3, so the lowest bins are empty -> None, not 0.
    assert bins["count"][0] == 0 and bins["accuracy"][0] is None and bins["confidence"][0] is None
    for c, lo, hi in zip(bins["confidence"], bins["edges"][:-1], bins["edges"][1:], strict=True):
        assert c is None or lo <= c <= hi
    with pytest.raises(ValueError):
        reliability_bins(probs, y[:10])


def _overconfident_logits():
    x, y = make_classification(
        n_samples=6000,
        n_features=10,
        n_informative=5,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=0.8,
        flip_y=0.05,
        random_state=0,
    )
    clf = LogisticRegression(max_iter=1000).fit(x[:2000], y[:2000])
    # decision_function gives the multinomial logits (predict_proba = their softmax); x5 = over-confident.
    return clf.decision_function(x[2000:]) * 5.0, y[2000:]


def test_temperature_scaling_lowers_ece_on_overconfident_model():
    logits, y = _overconfident_logits()
    fit_z, fit_y, test_z, test_y = logits[:2000], y[:2000], logits[2000:], y[2000:]
    t = fit_temperature(fit_z, fit_y)
    assert 3.0 < t < 8.0  # logits were inflated 5x, so the fitted T must deflate them by about 5
    before = expected_calibration_error(softmax(test_z, axis=1), test_y)
    after = expected_calibration_error(softmax(test_z / t, axis=1), test_y)
    assert after < before / 2
    # Scaling never changes the arg-max, so accuracy is untouched.
    np.testing.assert_array_equal(test_z.argmax(1), (test_z / t).argmax(1))


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(4000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])  # labels drawn from softmax(z)
    t = fit_temperature(z * 3.0, y)  # so the ideal temperature for z * 3 is 3
    assert t == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(torch.tensor(z), torch.tensor(y)) == pytest.approx(1.0, rel=0.1)


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError):
        fit_temperature(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_temperature_gives_softmax_of_scaled_logits(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 3, bias=bias)
    x = torch.randn(32, 16)
    with torch.no_grad():
        original = linear(x)
    t = 2.7
    fold_temperature_into_classifier(linear, t)
    with torch.no_grad():
        folded = linear(x)
    torch.testing.assert_close(folded.softmax(-1), (original / t).softmax(-1))
    torch.testing.assert_close(folded, original / t)
    assert linear.weight.requires_grad  # still a normal trainable parameter


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_fold_temperature_rejects_bad_t(bad):
    linear = torch.nn.Linear(4, 2)
    before = linear.weight.detach().clone()
    with pytest.raises(ValueError):
        fold_temperature_into_classifier(linear, bad)
    torch.testing.assert_close(linear.weight.detach(), before)  # nothing changed
