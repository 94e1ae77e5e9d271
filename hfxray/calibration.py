"""Probability calibration: top-label ECE, reliability bins and temperature scaling.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides
the logits by one scalar T fitted on held-out data. It never changes the arg-max, so accuracy
and the confusion matrix are untouched; only the stated probabilities move. The fitted T is
folded into the classifier's Linear layer so that every consumer of the saved model (pipeline,
ONNX export, Space) gets calibrated probabilities without extra code.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

logger = logging.getLogger(__name__)

# Search range for T. Below 0.05 or above 20 a network is broken rather than mis-calibrated;
# hitting a bound is logged so it is never silent.
T_MIN = 0.05
T_MAX = 20.0


def _as_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_probs_labels(probs: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_numpy(probs)
    y = _as_numpy(y_true, dtype=np.int64).reshape(-1)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, classes), got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but y_true has {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}], got {y.min()}..{y.max()}")
    return p, y


def reliability_bins(probs: Any, y_true: Any, n_bins: int = 15) -> dict[str, list]:
    """Top-label reliability table: per equal-width confidence bin, mean confidence and accuracy.

    Bin b holds samples whose top probability lies in (edges[b], edges[b+1]] (the first bin also
    takes 0). Empty bins have `None` confidence/accuracy, so the result is JSON-safe and plots
    can leave a gap instead of drawing a fake 0.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _check_probs_labels(probs, y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = p.max(axis=1) if p.size else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if p.size else np.zeros(0, dtype=bool)
    # right=True -> (lo, hi]; clip puts confidence 0 into the first bin.
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    counts, mean_conf, acc = [], [], []
    for b in range(n_bins):
        mask = idx == b
        m = int(mask.sum())
        counts.append(m)
        mean_conf.append(float(conf[mask].mean()) if m else None)
        acc.append(float(correct[mask].mean()) if m else None)
    return {"edges": edges.tolist(), "count": counts, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error: sum_b (n_b / n) * |accuracy_b - confidence_b|.

    Equal-width bins as in Guo et al. 2017. Returns nan for an empty input.
    """
    bins = reliability_bins(probs, y_true, n_bins=n_bins)
    n = sum(bins["count"])
    if n == 0:
        return float("nan")
    ece = 0.0
    for m, c, a in zip(bins["count"], bins["confidence"], bins["accuracy"], strict=True):
        if m:
            ece += m / n * abs(a - c)
    return float(ece)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    logp = log_softmax(logits / temperature, axis=1)
    return float(-logp[np.arange(y.size), y].mean())


def fit_temperature(logits: Any, y_true: Any) -> float:
    """Return T > 0 minimising the mean NLL of softmax(logits / T) on held-out labels.

    Why a bounded scalar search (scipy's Brent on log T) rather than LBFGS in torch: the problem
    has one parameter and the NLL is convex in 1/T, so it is unimodal in log T; Brent's method
    finds the minimum deterministically, needs no learning rate or iteration budget, cannot
    step to T <= 0, and costs a few dozen cheap numpy evaluations.
    """
    z = _as_numpy(logits)
    y = _as_numpy(y_true, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be (n, classes) matching {y.shape[0]} labels, got {z.shape}")
    if y.size == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}]")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    res = minimize_scalar(
        lambda log_t: _nll(z, y, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    t = float(math.exp(res.x))
    if min(abs(t - T_MIN), abs(t - T_MAX)) / t < 1e-3:
        logger.warning("fitted temperature %.4g sits at the search bound [%g, %g]", t, T_MIN, T_MAX)
    logger.info("temperature %.4f: NLL %.4f -> %.4f", t, _nll(z, y, 1.0), _nll(z, y, t))
    return t


def fold_temperature_into_classifier(linear: torch.nn.Linear, temperature: float) -> None:
    """Divide `linear`'s weight and bias by T in place, so its logits become logits / T.

    Softmax of the folded layer's output equals softmax(original logits / T) exactly; the saved
    weights then carry the calibration and nobody downstream needs to know T.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"expected torch.nn.Linear, got {type(linear).__name__}")
    with torch.no_grad():
        linear.weight.div_(t)
        if linear.bias is not None:
            linear.bias.div_(t)
