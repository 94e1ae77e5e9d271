"""Metrics: Wilson intervals, bootstrap AUROC, offline evaluate modules, the metrics.json report."""

from __future__ import annotations

import json
import logging
import math
import socket

import evaluate
import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from hfxray import metrics
from hfxray.metrics import (
    LOCAL_METRICS,
    bootstrap_auroc,
    classification_report,
    load_metric,
    local_metric_path,
    wilson_interval,
)

CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


def _wilson_closed_form(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(81, 100), (0, 10), (10, 10), (3, 7), (1, 1), (250, 251)])
def test_wilson_matches_closed_form_and_scipy(k, n):
    lo, hi = wilson_interval(k, n)
    exp_lo, exp_hi = _wilson_closed_form(k, n)
    assert lo == pytest.approx(max(0.0, exp_lo), abs=1e-12)
    assert hi == pytest.approx(min(1.0, exp_hi), abs=1e-12)
    # An independent implementation (scipy) agrees.
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-3)
    assert hi == pytest.approx(ref.high, abs=1e-3)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_textbook_values():
    # 0 successes in 10: the Wilson upper bound is 0.2775 (Brown, Cai & DasGupta 2001 style tables).
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-4)
    assert hi == pytest.approx(0.8749, abs=1e-4)


def test_wilson_edge_cases():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    narrow = wilson_interval(500, 1000)
    wide = wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_rank_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(20, 40))
    s = np.round(rng.random((20, 40)), 1)  # coarse scores -> many ties
    fast = metrics._auroc_from_ranks(y, s)
    for row in range(20):
        assert fast[row] == pytest.approx(roc_auc_score(y[row], s[row]), abs=1e-12)


def test_bootstrap_auroc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    s = y + rng.normal(0, 1.0, 120)
    auc, lo, hi = bootstrap_auroc(y, s, n_boot=500, seed=3)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert lo < auc < hi
    assert lo > 0.5 and hi <= 1.0
    assert bootstrap_auroc(y, s, n_boot=500, seed=3) == (auc, lo, hi)  # seeded -> reproducible
    one_class = bootstrap_auroc(np.ones(10), rng.random(10))
    assert all(math.isnan(v) for v in one_class)


@pytest.fixture
def no_network(monkeypatch):
    """Make any socket connection fail loudly, to prove a code path never touches the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", LOCAL_METRICS)
def test_local_modules_load_offline_without_network(name, monkeypatch, no_network, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = local_metric_path(name)
    before = sorted(p.name for p in path.rglob("*") if "__pycache__" not in p.parts)
    module = evaluate.load(str(path))
    assert isinstance(module, evaluate.EvaluationModule)
    with caplog.at_level(logging.INFO, logger="hfxray.metrics"):
        via_helper = load_metric(name)
    assert isinstance(via_helper, evaluate.EvaluationModule)
    assert "local module" in caplog.text
    # Loading must not write next to the shipped script (the install may be read-only).
    after = sorted(p.name for p in path.rglob("*") if "__pycache__" not in p.parts)
    assert after == before == [f"{name}.py"]


def test_local_modules_compute_like_sklearn():
    y = [0, 1, 2, 2, 1, 0, 2]
    pred = [0, 2, 2, 1, 1, 0, 2]
    assert load_metric("accuracy").compute(predictions=pred, references=y)["accuracy"] == pytest.approx(5 / 7)
    f1 = load_metric("f1").compute(predictions=pred, references=y, average="macro")["f1"]
    assert f1 == pytest.approx(f1_score(y, pred, average="macro"))
    cm = load_metric("confusion_matrix").compute(predictions=pred, references=y, labels=[0, 1, 2])
    np.testing.assert_array_equal(cm["confusion_matrix"], confusion_matrix(y, pred, labels=[0, 1, 2]))
    with pytest.raises(ValueError, match="no local evaluate module"):
        local_metric_path("bleu")


def _probs_for(preds: list[int], n_classes: int = 3, confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(preds), n_classes), (1 - confidence) / (n_classes - 1))
    p[np.arange(len(preds)), preds] = confidence
    return p


def test_report_hand_built_case():
    y = [0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 0, 2]
    rep = classification_report(y, _probs_for(pred), CLASSES)
    assert rep["n"] == 7
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert sum(map(sum, rep["confusion_matrix"])) == rep["n"]
    assert rep["n_per_class"] == {"Covid": 2, "Normal": 2, "Viral Pneumonia": 3}
    assert rep["accuracy"] == pytest.approx(5 / 7)
    assert rep["accuracy_ci95"] == pytest.approx(list(wilson_interval(5, 7)))
    assert rep["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    covid = rep["per_class"]["Covid"]  # tp=1 fn=1 fp=1 tn=4
    assert covid["n"] == 2
    assert covid["sensitivity"] == pytest.approx(1 / 2)
    assert covid["specificity"] == pytest.approx(4 / 5)
    assert covid["ppv"] == pytest.approx(1 / 2)
    assert covid["npv"] == pytest.approx(4 / 5)
    assert covid["sensitivity_ci95"] == pytest.approx(list(wilson_interval(1, 2)))
    assert covid["f1"] == pytest.approx(0.5)
    normal = rep["per_class"]["Normal"]  # tp=2 fn=0 fp=1 tn=4
    assert normal["sensitivity"] == 1.0 and normal["ppv"] == pytest.approx(2 / 3)
    assert normal["f1"] == pytest.approx(f1_score(y, pred, labels=[1], average="macro"))
    assert "note" not in normal
    assert rep["ece"] == pytest.approx(abs(5 / 7 - 0.8))
    json.dumps(rep, allow_nan=False)


def test_report_random_matches_sklearn():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3))
    logits[np.arange(90), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rep = classification_report(y, probs, CLASSES)
    cm = np.array(rep["confusion_matrix"])
    assert cm.sum() == 90
    np.testing.assert_array_equal(cm, confusion_matrix(y, probs.argmax(1), labels=[0, 1, 2]))
    for c, name in enumerate(CLASSES):
        entry = rep["per_class"][name]
        assert entry["auroc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
        assert entry["auroc_ci95"][0] <= entry["auroc"] <= entry["auroc_ci95"][1]
        assert entry["n"] == int((y == c).sum())
    json.dumps(rep, allow_nan=False)


def test_report_class_subset_has_nulls():
    # External folder with only Covid/ and Normal/, while the model sometimes says Viral Pneumonia.
    y = [0, 0, 0, 1, 1, 1, 1]
    pred = [0, 2, 0, 1, 1, 0, 2]
    rep = classification_report(y, _probs_for(pred), CLASSES)
    text = json.dumps(rep, allow_nan=False)  # no NaN in the JSON
    absent = rep["per_class"]["Viral Pneumonia"]
    assert absent["n"] == 0
    for key in ("sensitivity", "f1", "auroc"):
        assert absent[key] is None
    assert absent["sensitivity_ci95"] == [None, None]
    assert absent["auroc_ci95"] == [None, None]
    assert absent["ppv"] == 0.0  # predicted twice, never right: defined and meaningful
    assert "absent" in absent["note"]
    assert rep["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))
    assert rep["macro_f1_over"] == ["Covid", "Normal"]
    assert "note" in rep and '"note"' in text
    assert rep["confusion_matrix"][2] == [0, 0, 0]
    dropped = classification_report(y, _probs_for(pred), CLASSES, present_only=True)
    assert set(dropped["per_class"]) == {"Covid", "Normal"}
    assert dropped["confusion_matrix"] == rep["confusion_matrix"]


def test_report_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        classification_report([0, 1], np.ones((2, 2)) / 2, CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_report([0, 3], np.ones((2, 3)) / 3, CLASSES)


def test_hub_failure_falls_back_to_local(monkeypatch, no_network, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub load fails as it would without network
    with caplog.at_level(logging.INFO, logger="hfxray.metrics"):
        module = load_metric("confusion_matrix", use_hub=True)
    assert "Hub load failed" in caplog.text and "local module" in caplog.text
    cm = module.compute(predictions=[1, 1, 0], references=[1, 0, 0], labels=[0, 1])["confusion_matrix"]
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])
