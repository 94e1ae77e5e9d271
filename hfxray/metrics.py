"""Evaluation metrics on the `evaluate` library, with confidence intervals.

Accuracy, F1 and the confusion matrix come from `evaluate` modules: the Hub's canonical ones when
the Hub is reachable, otherwise the copies shipped in `hfxray/evaluate_modules/` (same inputs and
outputs), so evaluation works offline. On top of that: Wilson intervals for proportions,
bootstrap intervals for AUROC, per-class one-vs-rest metrics and the top-label ECE, assembled
into the JSON-safe `metrics.json` schema by `classification_report`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from hfxray.calibration import expected_calibration_error, reliability_bins

logger = logging.getLogger(__name__)

LOCAL_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
LOCAL_METRICS: tuple[str, ...] = ("accuracy", "f1", "confusion_matrix")

__all__ = [
    "LOCAL_METRICS",
    "LOCAL_MODULES_DIR",
    "bootstrap_auroc",
    "classification_report",
    "classification_report_by_group",
    "expected_calibration_error",
    "load_metric",
    "local_metric_path",
    "reliability_bins",
    "wilson_interval",
]

_TRUE_STRINGS = {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """True when the user asked for offline mode (checked at call time, not import time)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_STRINGS
    env = env or os.environ.get("HF_EVALUATE_OFFLINE", "").upper() in _TRUE_STRINGS
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable() -> bool:
    if _hub_offline():
        return False
    try:
        from hfxray.modeling import hub_reachable
    except ImportError:  # modeling not importable (e.g. partial install): probe the Hub ourselves
        import socket
        from urllib.parse import urlparse

        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=3.0).close()
            return True
        except OSError:
            return False
    return hub_reachable()


def local_metric_path(name: str) -> Path:
    """Directory of the shipped local evaluate module `name` (evaluate loads `<dir>/<dir name>.py`)."""
    path = LOCAL_MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no local evaluate module {name!r}; available: {', '.join(LOCAL_METRICS)}")
    return path


def load_metric(name: str, *, use_hub: bool | None = None) -> evaluate.EvaluationModule:
    """Load an `evaluate` metric: the Hub's canonical module unless offline, else the local copy.

    `use_hub=None` probes the Hub (instant False when HF_HUB_OFFLINE is set); callers loading
    several metrics probe once and pass the answer, so an unplugged machine waits only once.

    `keep_in_memory=True` so concurrent evaluations never share arrow cache files or locks.
    A local module is loaded by path, which `evaluate` resolves without touching the network
    (it copies the script into its modules cache, so the install itself may be read-only).
    """
    if use_hub is None:
        use_hub = _hub_reachable()
    if use_hub:
        try:
            module = evaluate.load(name, keep_in_memory=True)
            logger.info("metric %s: loaded from the Hugging Face Hub", name)
            return module
        except Exception as err:  # any Hub/cache failure: the local copy computes the same thing
            logger.warning("metric %s: Hub load failed (%s); using the local module", name, err)
    path = local_metric_path(name)
    module = evaluate.load(str(path), keep_in_memory=True)
    logger.info("metric %s: loaded the local module %s", name, path)
    return module


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (Wilson 1927; Agresti & Coull 1998).

    Chosen over the normal (Wald) interval because it stays inside [0, 1] and keeps its coverage
    at the small n and extreme proportions of a 50-image validation split. n == 0 -> (nan, nan).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (float(lo), float(hi))


def _auroc_from_ranks(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC via the Mann-Whitney U statistic (midranks for ties), row-wise over 2-D inputs.

    Identical to sklearn's roc_auc_score, but vectorised so 1000 bootstrap replicates cost one
    rankdata call instead of 1000 Python-level sklearn calls. Rows with one class give nan.
    """
    ranks = rankdata(scores, axis=-1)
    n_pos = y.sum(axis=-1).astype(float)
    n_neg = y.shape[-1] - n_pos
    rank_sum = (ranks * y).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_auroc(
    y_true_binary: Any, scores: Any, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(AUROC, 2.5th, 97.5th percentile) from a percentile bootstrap over samples.

    All three are nan when y_true_binary holds only one class; the interval is nan when fewer than
    half of the resamples contain both classes (too few samples for a meaningful interval).
    """
    y = np.asarray(y_true_binary).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true_binary ({y.size}) and scores ({s.size}) differ in length")
    nan = float("nan")
    if y.size == 0 or y.all() or not y.any():
        return (nan, nan, nan)
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    # Resample in blocks of ~2M entries so a large external set does not need n_boot x n memory at once.
    block = max(1, 2_000_000 // y.size)
    parts = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, y.size, size=(min(block, n_boot - start), y.size))
        parts.append(_auroc_from_ranks(y[idx], s[idx]))
    reps = np.concatenate(parts)
    reps = reps[~np.isnan(reps)]
    if reps.size < max(1, n_boot // 2):
        return (auc, nan, nan)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return (auc, float(lo), float(hi))


def _json_safe(obj: Any) -> Any:
    """Convert numpy types to Python ones and NaN/inf to None, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def classification_report(
    y_true: Any, probs: Any, classes: Sequence[str], present_only: bool = False
) -> dict[str, Any]:
    """Metrics for `probs` (n, C) against integer labels, as the JSON-safe metrics.json dict.

    Per class (one-vs-rest): sensitivity, specificity, PPV, NPV with Wilson 95% intervals, F1,
    AUROC with a bootstrap interval, and n. `confusion_matrix` rows are true labels and columns
    predictions, both in `classes` order. When y_true holds only some classes (an external folder
    with only Covid/ and Normal/), undefined metrics are None with a `note`, and `macro_f1` is
    over the classes present. `present_only=True` drops absent classes from `per_class`
    altogether (the confusion matrix keeps every class, so predictions of them stay visible).
    """
    classes = [str(c) for c in classes]
    p, y = _checked(probs, y_true, len(classes))
    c_count = len(classes)
    n = int(y.size)
    preds = p.argmax(axis=1)
    labels = list(range(c_count))
    present = [c for c in labels if (y == c).any()]

    use_hub = _hub_reachable()
    acc = load_metric("accuracy", use_hub=use_hub).compute(predictions=preds, references=y)["accuracy"]
    n_correct = int((preds == y).sum())
    f1_module = load_metric("f1", use_hub=use_hub)
    # No `zero_division` kwarg: the Hub's f1 module does not accept it. sklearn's default already
    # scores an undefined precision as 0 (the F1 of a never-predicted class); only silence its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        macro_f1 = f1_module.compute(predictions=preds, references=y, labels=present, average="macro")["f1"]
        per_class_f1 = f1_module.compute(predictions=preds, references=y, labels=labels, average=None)["f1"]
    cm = np.asarray(
        load_metric("confusion_matrix", use_hub=use_hub).compute(
            predictions=preds, references=y, labels=labels
        )["confusion_matrix"],
        dtype=np.int64,
    )

    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        if present_only and not (y == c).any():
            continue
        per_class[name] = _one_vs_rest(cm, c, y == c, p[:, c], float(per_class_f1[c]))

    report = {
        "n": n,
        "classes": classes,
        "classes_present": [classes[c] for c in present],
        "n_per_class": {name: int((y == c).sum()) for c, name in enumerate(classes)},
        "accuracy": float(acc),
        "accuracy_ci95": list(wilson_interval(n_correct, n)),
        "macro_f1": float(macro_f1),
        "macro_f1_over": [classes[c] for c in present],
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "ece": expected_calibration_error(p, y),
        "intervals": "95%: Wilson score for proportions, percentile bootstrap (1000 resamples) for AUROC",
    }
    if len(present) < c_count:
        report["note"] = (
            "labels cover only "
            + ", ".join(classes[c] for c in present)
            + "; macro_f1 is over these classes, undefined per-class metrics are null"
        )
    return _json_safe(report)


def _checked(probs: Any, y_true: Any, c_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(probs as float64 (n, C), labels as int64 (n,)), or a one-line ValueError saying what is wrong."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != c_count:
        raise ValueError(f"probs must have shape (n, {c_count}), got {p.shape}")
    if p.shape[0] != y.size:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {y.size} labels")
    if y.size == 0:
        raise ValueError("cannot report metrics on zero samples")
    if y.min() < 0 or y.max() >= c_count:
        raise ValueError(f"labels must lie in [0, {c_count - 1}], got {y.min()}..{y.max()}")
    return p, y


def _one_vs_rest(cm: np.ndarray, c: int, is_c: np.ndarray, score: np.ndarray, f1: float) -> dict[str, Any]:
    """Class ``c`` against the rest from the confusion matrix, each proportion with its Wilson
    interval, and a note naming every metric the labels leave undefined (rather than a silent 0)."""
    n = int(cm.sum())
    tp = int(cm[c, c])
    fn = int(cm[c, :].sum()) - tp
    fp = int(cm[:, c].sum()) - tp
    tn = n - tp - fn - fp
    n_c = tp + fn
    auroc, a_lo, a_hi = bootstrap_auroc(is_c, score)
    entry: dict[str, Any] = {"n": n_c}
    for key, k, m in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        entry[key] = _ratio(k, m)
        entry[f"{key}_ci95"] = list(wilson_interval(k, m))
    # F1 needs recall, which is undefined without a positive example.
    entry.update(
        f1=f1 if n_c else float("nan"), auroc=auroc, auroc_ci95=[a_lo, a_hi], tp=tp, fp=fp, fn=fn, tn=tn
    )
    notes = []
    if n_c == 0:
        notes.append("class absent from the labels: sensitivity, F1 and AUROC are undefined")
    elif n_c == n:
        notes.append("only this class in the labels: specificity and AUROC are undefined")
    if tp + fp == 0:
        notes.append("never predicted: PPV is undefined")
    if tn + fn == 0:
        notes.append("always predicted: NPV is undefined")
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def classification_report_by_group(
    y_true: Any, probs: Any, classes: Sequence[str], groups: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """`classification_report` on each group's films: ``{group value: report}``, sorted by value.

    Every metric of the whole report, with its intervals, per group (e.g. per source or
    population); a group holding one class only gets that class's sensitivity and the other
    classes' specificity (how many of its films were *not* called them), the rest null with a note.
    The groups partition the films, so their ``n`` and confusion matrices sum to the whole.
    """
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray([str(v) for v in groups])
    if g.size != y.size:
        raise ValueError(f"{g.size} group values for {y.size} labels")
    return {str(v): classification_report(y[g == v], p[g == v], classes) for v in sorted(set(g.tolist()))}
