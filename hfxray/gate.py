"""Input gate: two questions, two answers, before a class is shown.

A classifier trained on chest X-rays gives a confident answer for *any* input - a knee film, a CT
slice, noise, a scanned letter. The gate asks two separate questions (issue 10):

1. **Is this a frontal chest radiograph?** If not, the input is **refused**: no class, the reason
   in words (``GateResult.refused``; the CSV's ``refused`` column). Refusals come from

   * simple image checks: a short side below 64 px, an aspect ratio beyond 2.5:1, an almost
     uniform image (grey-level standard deviation below 6/255 on the model's S x S input image),
     or colour: a radiograph is grey or tinted in one hue, never several (second-hue share above
     1 %), nor strongly coloured almost everywhere;
   * a **chest-film classifier** (gate v2): a standardised logistic regression on the model's
     own penultimate features plus a few cheap image statistics (:data:`IMAGE_STAT_NAMES`),
     trained on frontal chest films of many sources against other medical images (knee films,
     CT, MRI, ultrasound, fundus, skin, histology) and generated negatives (noise, text pages,
     photos, blank, gradient and checkerboard images). Its threshold is chosen on *held-out*
     groups (each source / kind scored by a classifier that never saw it). The runtime check is
     numpy only: a dot product and a sigmoid, from coefficients stored as JSON lists;
   * an **orientation check** (gates fitted since model v3's refit): a chest film on its side or
     upside down is refused with that reason ("turn it upright"), because the model reads films
     upright only. A logistic regression P(upright) on the 16 x 16 layout, fitted by turning the
     chest films themselves (:func:`hfxray.gate_fit.fit_orientation`), threshold from held-out sources.

2. **Is this film unlike those the model was trained on?** If so, the model still **answers**
   (class and probabilities) and warns that it was not validated on films like it
   (``GateResult.notes`` / ``warning``). The measure is the distance in the same feature space
   to the *nearest* training source: per source a mean, one pooled within-source diagonal
   variance (shrunk 10 % towards its average), distance = RMS z-score. The threshold is the 99th
   percentile of cross-fitted distances of training films (each film measured against a mean
   that did not include it).

Everything is stored under ``gate`` in ``hfxray.json`` (:func:`write_gate`) and applied by
:class:`InputGate`, which :class:`hfxray.inference.Predictor` uses for ``predict.py``,
``evaluate.py`` and the Space alike. Fitting lives in :mod:`hfxray.gate_fit` (scikit-learn, model
features); this module imports neither torch, transformers nor scikit-learn at import time, so the
ONNX prediction path stays lean.

Older model directories carry the gate v1 statistics (one distance to the training mean, threshold
at the 99th percentile of validation distances, :func:`fit_gate`); for them the distance still
refuses, as it did, because they have no chest-film classifier.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GATE_METHOD = "diag-mahalanobis-penultimate-v1"
GATE_METHOD_V2 = "chest-logreg+nearest-source-v2"
METADATA_FILENAME = "hfxray.json"

MIN_SIDE = 64
MAX_ASPECT = 2.5
MIN_GREY_STD = 6.0
MAX_SECOND_HUE_SHARE = 0.01
DEFAULT_MAX_COLOURED_SHARE = 0.60
DEFAULT_QUANTILE = 0.99
SHRINKAGE = 0.10

_THUMB = 224  # side of the measured image when the model's input size is unknown
_SAT_MIN, _VAL_MIN = 50, 40  # of 255, for "clearly coloured" pixels
_HUE_BINS, _HUE_HALF_WINDOW = 36, 2  # 10-degree bins; dominant hue +- 2 bins (25 degrees)

# Cheap statistics of the S x S input image that the chest-film classifier may use besides the
# model's features: noise and text are rough where films are smooth, documents mostly white, and the
# layout (the image box-averaged to LAYOUT_SIDE x LAYOUT_SIDE, z-scored) shows where a chest film
# has its lungs, mediastinum and diaphragm - where a knee film, a CT slice or a fan of ultrasound
# has something else. Measured on held-out kinds, the layout did what the model's features could
# not: a classifier that never saw a knee film still refuses them (docs/gate.md).
SCALAR_STAT_NAMES: tuple[str, ...] = (
    "grey_std",
    "log_roughness",
    "log_roughness_2x",
    "saturated_share",
    "coloured_share",
    "second_hue_share",
    "entropy",
)
LAYOUT_SIDE = 16
LAYOUT_STAT_NAMES: tuple[str, ...] = tuple(f"layout_{i:03d}" for i in range(LAYOUT_SIDE * LAYOUT_SIDE))
IMAGE_STAT_NAMES: tuple[str, ...] = SCALAR_STAT_NAMES + LAYOUT_STAT_NAMES

NO_STATS_WARNING = (
    "feature-space check unavailable: this model has no input-gate statistics, "
    "so only the colour and simple checks ran"
)
NOT_CHEST_TEXT = "not a frontal chest radiograph"
NOT_UPRIGHT_TEXT = "the film looks turned on its side or upside down"
UNFAMILIAR_TEXT = "unlike the films this model was trained on"


@dataclass
class ImageChecks:
    """What the gate measures on the image alone (run in prediction's decoding threads)."""

    blocking: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: np.ndarray | None = None  # values of IMAGE_STAT_NAMES

    def __iter__(self):  # ``blocking, notes = gate.image_checks(image)`` keeps working
        return iter((self.blocking, self.notes))


@dataclass
class GateResult:
    """The gate's verdict on one image. ``ok`` False means refused: show the reasons, no class."""

    ok: bool
    refusals: list[str] = field(default_factory=list)  # why the input is refused (empty when ok)
    notes: list[str] = field(default_factory=list)  # warnings shown next to an answer
    distance: float | None = None  # feature distance (v2: to the nearest training source)
    threshold: float | None = None  # its threshold (v2: warn above; v1: refuse above)
    chest_score: float | None = None  # v2: the chest-film classifier's probability
    chest_threshold: float | None = None
    upright_score: float | None = None  # v2 with an orientation check: upright rather than turned (0-1)
    turn_back: int | None = None  # looks turned: the `turn` that would make it upright
    unfamiliar: bool = False  # v2: answered, but far from every training source
    nearest_source: str | None = None

    @property
    def warnings(self) -> list[str]:
        """Refusal reasons first, then notes: everything there is to tell the user."""
        return self.refusals + self.notes

    @property
    def refused(self) -> str | None:
        """One line: why no class is given, or None when the model answers."""
        return "; ".join(self.refusals) or None

    @property
    def warning(self) -> str | None:
        """One line of notes shown with the answer (unfamiliar film, upscaled image), or None."""
        return "; ".join(self.notes) or None


def thumbnail(image: Image.Image, size: int | None = None) -> Image.Image:
    """The S x S RGB image the checks measure: the model's input image before normalisation.

    Callers that already resized the image for the model (:class:`hfxray.preprocessing.FastProcessor`)
    pass that image instead, so the gate costs no resize of its own.
    """
    size = size or _THUMB
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.BILINEAR)


def colour_stats(image: Image.Image) -> tuple[float, float]:
    """(coloured share, second-hue share) of an image as given (pass a :func:`thumbnail`); both 0.0
    for a grey radiograph."""
    hsv = np.asarray(image.convert("HSV"))
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (sat > _SAT_MIN) & (val > _VAL_MIN)
    n_coloured = int(coloured.sum())
    if n_coloured == 0:
        return 0.0, 0.0
    hist = np.bincount((hue[coloured].astype(np.int32) * _HUE_BINS) // 256, minlength=_HUE_BINS)
    peak = int(hist.argmax())
    window = [(peak + k) % _HUE_BINS for k in range(-_HUE_HALF_WINDOW, _HUE_HALF_WINDOW + 1)]
    outside = n_coloured - int(hist[window].sum())
    return n_coloured / coloured.size, outside / coloured.size


def _roughness(grey: np.ndarray, std: float) -> float:
    """Mean absolute neighbour difference relative to the spread: about 1 for noise, small for films."""
    dx = np.abs(np.diff(grey, axis=1)).mean()
    dy = np.abs(np.diff(grey, axis=0)).mean()
    return float((dx + dy) / 2.0 / (std + 1.0))


def layout(grey_image: Image.Image) -> np.ndarray:
    """The grey image box-averaged to LAYOUT_SIDE x LAYOUT_SIDE and z-scored (flattened)."""
    cells = np.asarray(grey_image.resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.BOX), dtype=np.float64).ravel()
    return (cells - cells.mean()) / (cells.std() + 1.0)


def image_stats(grey: np.ndarray, coloured: float, second_hue: float, grey_image: Image.Image | None = None) -> np.ndarray:
    """Values of :data:`IMAGE_STAT_NAMES` for a grey S x S float array (0..255), its colour shares and
    (for the layout) the same grey image as PIL "L" (made from ``grey`` when not given)."""
    if grey_image is None:
        grey_image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    std = float(grey.std())
    h, w = (grey.shape[0] // 2) * 2, (grey.shape[1] // 2) * 2
    half = grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    hist = np.bincount(np.clip(grey, 0, 255).astype(np.int32).ravel() // 8, minlength=32) / grey.size
    nonzero = hist[hist > 0]
    return np.array(
        [
            std / 255.0,
            np.log(_roughness(grey, std) + 1e-3),
            np.log(_roughness(half, float(half.std())) + 1e-3),
            float(np.mean((grey <= 4) | (grey >= 251))),
            coloured,
            second_hue,
            float(-(nonzero * np.log2(nonzero)).sum()) / 5.0,
            *layout(grey_image),
        ],
        dtype=np.float64,
    )


def simple_checks(
    image: Image.Image, image_size: int | None = None, small: Image.Image | None = None
) -> tuple[list[str], list[str]]:
    """(blocking reasons, non-blocking warnings) from size, aspect ratio and contrast; the contrast
    on ``small``, the image's :func:`thumbnail` (made here when not given)."""
    small = small if small is not None else thumbnail(image, image_size)
    grey = np.asarray(small.convert("L"), dtype=np.float32)
    return _simple_checks(image, image_size, float(grey.std()))


def _simple_checks(image: Image.Image, image_size: int | None, grey_std: float) -> tuple[list[str], list[str]]:
    blocking: list[str] = []
    notes: list[str] = []
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        blocking.append(f"image is tiny ({w}x{h} px); a chest film is hundreds of pixels across")
    elif image_size and min(w, h) < image_size:
        notes.append(f"image is small ({w}x{h} px) and was upscaled to {image_size} px")
    aspect = max(w, h) / max(1, min(w, h))
    if aspect > MAX_ASPECT:
        blocking.append(f"extreme aspect ratio ({w}x{h} px, {aspect:.1f}:1); not a chest film")
    if grey_std < MIN_GREY_STD:
        blocking.append("image is almost uniform (no visible structure)")
    return blocking, notes


def _rms_z(features: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((np.atleast_2d(features) - mean) ** 2 / var, axis=1))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _floats(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


class _StoredLogisticRegression:
    """A standardised logistic regression stored as JSON lists (the numbers of scikit-learn's
    ``StandardScaler`` + ``LogisticRegression``, written by :mod:`hfxray.gate_fit`): numpy only."""

    def __init__(self, stats: dict[str, Any], n_inputs: int, name: str) -> None:
        self.mean = _floats(stats["scaler_mean"])
        self.scale = _floats(stats["scaler_scale"])
        self.coef = _floats(stats["coef"])
        self.intercept = float(stats["intercept"])
        if not (self.mean.shape == self.scale.shape == self.coef.shape == (n_inputs,)):
            raise ValueError(f"the gate's {name} has inconsistent lengths")

    def _logit(self, inputs: np.ndarray) -> np.ndarray:
        return ((inputs - self.mean) / self.scale) @ self.coef + self.intercept


class ChestClassifier(_StoredLogisticRegression):
    """The stored logistic regression: P(frontal chest film | features, image statistics)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.image_stat_names = tuple(stats.get("image_stats") or ())
        unknown = set(self.image_stat_names) - set(IMAGE_STAT_NAMES)
        if unknown:
            raise ValueError(f"unknown image statistics in the gate: {sorted(unknown)}")
        self._stat_index = [IMAGE_STAT_NAMES.index(n) for n in self.image_stat_names]
        self.threshold = float(stats["threshold"])
        self.dim = int(stats["feature_dim"])
        super().__init__(stats, self.dim + len(self._stat_index), "chest classifier")

    def inputs(self, features: np.ndarray, stats: np.ndarray | None) -> np.ndarray:
        """(n, D + k) classifier inputs: features followed by the chosen image statistics."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.shape[1] != self.dim:
            raise ValueError(f"the gate expects {self.dim} features, got {features.shape[1]}")
        if not self._stat_index:
            return features
        if stats is None:
            raise ValueError("the gate's chest classifier needs the image statistics")
        stats = np.atleast_2d(np.asarray(stats, dtype=np.float64))[:, self._stat_index]
        return np.hstack([features, stats])

    def score(self, features: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """P(frontal chest film) per row."""
        return _sigmoid(self._logit(self.inputs(features, stats)))


class SourceDistance:
    """Distance to the nearest training source: RMS z-score with a pooled diagonal variance."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.sources = list(stats["sources"])
        self.means = _floats(stats["means"])
        self.var = _floats(stats["var"])
        self.threshold = float(stats["threshold"])
        if self.means.shape != (len(self.sources), self.var.shape[0]):
            raise ValueError("the gate's source statistics have inconsistent lengths")

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(n, n_sources) RMS z-scores."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        return np.sqrt((((f[:, None, :] - self.means[None]) ** 2) / self.var).mean(axis=2))

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(distance to the nearest source, its name) per row."""
        d = self.distances(features)
        idx = d.argmin(axis=1)
        return d[np.arange(len(d)), idx], [self.sources[i] for i in idx]


def write_gate(model_dir: str | os.PathLike, stats: dict[str, Any]) -> Path:
    """Store ``stats`` under ``gate`` in ``model_dir/hfxray.json`` (other keys kept; atomic replace)."""
    from hfxray.hub import update_metadata  # fitting-time only: the runtime check never writes

    return update_metadata(model_dir, gate=stats)


def read_gate(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``gate`` entry of a model directory's hfxray.json, or None."""
    path = Path(model_dir) / METADATA_FILENAME
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return meta.get("gate") or None


def turn(array: np.ndarray, which: int) -> np.ndarray:
    """Turn ``which`` (0: a quarter turn counter-clockwise, 1: clockwise, 2: a half turn, 3: flipped top to
    bottom) applied to the last two axes (rows, columns) of ``array``: a layout grid, or the model's
    (3, S, S) input. On the square S x S input, turning the array is turning the image (the square resize
    commutes with the turn), so the gate can try a film the other way up without decoding it again."""
    axes = (array.ndim - 2, array.ndim - 1)
    if which == 3:
        return np.flip(array, axis=axes[0])
    return np.rot90(array, (1, 3, 2)[which], axes=axes)


N_TURNS = 4


def turned_layouts(layouts: np.ndarray) -> list[np.ndarray]:
    """(n, 256) layouts of the same images turned each way a film can arrive wrongly (:func:`turn`);
    the z-score is unchanged by a turn."""
    grids = np.asarray(layouts, dtype=np.float64).reshape(-1, LAYOUT_SIDE, LAYOUT_SIDE)
    return [turn(grids, which).reshape(len(grids), -1) for which in range(N_TURNS)]


def turned_stats(stats: np.ndarray, which: int) -> np.ndarray:
    """:data:`IMAGE_STAT_NAMES` values of the image turned by ``which``: the scalar statistics do not
    change with a turn (spread, roughness across and along, colour, entropy), the layout turns."""
    stats = np.asarray(stats, dtype=np.float64)
    first = len(SCALAR_STAT_NAMES)
    return np.concatenate([stats[:first], turned_layouts(stats[first:])[which][0]])


class OrientationCheck(_StoredLogisticRegression):
    """Is a chest film upright? The stored logistic regression's logit for upright (on the layout),
    compared with its logit for the same film turned each other way: a film counts as upright when it
    looks more upright as it is than any turn of it would (score = sigmoid of that margin). Why the
    comparison and not the logit alone: a film with a dark band at its foot, or a bright abdomen, can
    look a little upside down on its own, yet its turned copies look far worse (docs/gate.md)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        super().__init__(stats, len(LAYOUT_STAT_NAMES), "orientation check")
        self.threshold = float(stats.get("threshold", 0.5))  # none while fitting: scores only

    def _margins(self, layouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) logit as it is minus the best turned copy's, and (n,) which :func:`turn` that copy is."""
        layouts = np.atleast_2d(np.asarray(layouts, dtype=np.float64))
        turned = np.stack([self._logit(t) for t in turned_layouts(layouts)])  # (N_TURNS, n)
        return self._logit(layouts) - turned.max(axis=0), turned.argmax(axis=0)

    def score_layouts(self, layouts: np.ndarray) -> np.ndarray:
        """P(upright rather than turned) per row of layouts."""
        return _sigmoid(self._margins(layouts)[0])

    def assess(self, stats: np.ndarray) -> tuple[float, int]:
        """One image's (score, the :func:`turn` that makes it look most upright), from its
        :data:`IMAGE_STAT_NAMES` values: both from one pass over its turned copies."""
        layouts = np.atleast_2d(np.asarray(stats, dtype=np.float64))[:1, len(SCALAR_STAT_NAMES) :]
        margin, best = self._margins(layouts)
        return float(_sigmoid(margin)[0]), int(best[0])


class InputGate:
    """Decides, per image, whether to refuse, answer, or answer with a warning (module docstring).

    ``model``/``processor`` are only needed when :meth:`check` must compute features itself (tests,
    v1 callers); :class:`hfxray.inference.Predictor` passes the features of its own forward pass.
    """

    def __init__(
        self,
        stats: dict[str, Any] | None = None,
        model: Any = None,
        processor: Any = None,
        image_size: int | None = None,
    ) -> None:
        self.stats = stats or None
        self.model = model
        self.processor = processor
        self.image_size = image_size or (_processor_size(processor) if processor is not None else None)
        self.chest: ChestClassifier | None = None
        self.orientation: OrientationCheck | None = None
        self.familiarity: SourceDistance | None = None
        self.threshold: float | None = None
        self.max_coloured_share = DEFAULT_MAX_COLOURED_SHARE
        if self.stats is None:
            return
        method = self.stats.get("method")
        if method == GATE_METHOD_V2:
            self.chest = ChestClassifier(self.stats["chest"])
            if self.stats.get("orientation"):  # gates fitted before it have none: no orientation check
                self.orientation = OrientationCheck(self.stats["orientation"])
            if self.stats.get("familiarity"):
                self.familiarity = SourceDistance(self.stats["familiarity"])
                self.threshold = self.familiarity.threshold
        elif method == GATE_METHOD:
            self._mean = _floats(self.stats["mean"])
            self._var = _floats(self.stats["var"])
            self.threshold = float(self.stats["threshold"])
        else:
            raise ValueError(f"unknown gate method {method!r}; expected {GATE_METHOD_V2} or {GATE_METHOD}")
        if self.stats.get("max_coloured_share") is not None:
            self.max_coloured_share = min(1.0, float(self.stats["max_coloured_share"]) * 1.2 + 0.02)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, model: Any = None, processor: Any = None) -> InputGate:
        """Gate for a saved model directory; no ``gate`` key in hfxray.json -> colour/simple checks only."""
        path = Path(model_dir) / METADATA_FILENAME
        meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if processor is None and model is not None:
            from hfxray.modeling import load_processor

            processor = load_processor(model_dir)
        return cls(meta.get("gate"), model=model, processor=processor, image_size=meta.get("image_size"))

    @property
    def has_feature_stats(self) -> bool:
        return self.stats is not None

    @property
    def version(self) -> int | None:
        """2 for the two-question gate, 1 for the single distance, None without statistics."""
        return None if self.stats is None else (2 if self.chest is not None else 1)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Feature distance of each row: to the nearest training source (v2) or to the training mean (v1)."""
        if self.familiarity is not None:
            return self.familiarity.nearest(features)[0]
        if self.stats is None or self.chest is not None:
            raise ValueError("this gate has no feature-distance statistics")
        return _rms_z(np.asarray(features, dtype=np.float64), self._mean, self._var)

    def image_checks(self, image: Image.Image, small: Image.Image | None = None) -> ImageChecks:
        """Checks that need only the image (size, contrast, colour) and its statistics.

        Separate from :meth:`check` so that prediction can run them in its decoding threads, next to
        the resize that made ``small`` (the image's S x S :func:`thumbnail`, made here when not given).
        """
        small = small if small is not None else thumbnail(image, self.image_size)
        grey_image = small.convert("L") if small.mode != "L" else small
        grey = np.asarray(grey_image, dtype=np.float32)
        blocking, notes = _simple_checks(image, self.image_size, float(grey.std()))
        # a one-channel image has no saturation anywhere: its colour statistics are exactly zero
        coloured, second_hue = (0.0, 0.0) if image.mode == "L" else colour_stats(small)
        if second_hue > MAX_SECOND_HUE_SHARE:
            blocking.append(
                f"looks like a colour photograph ({second_hue:.0%} of the image in a second colour); "
                "radiographs are grey or tinted in one hue"
            )
        elif coloured > self.max_coloured_share:
            blocking.append(
                f"looks like a colour photograph ({coloured:.0%} of the image strongly coloured, "
                f"above the {self.max_coloured_share:.0%} limit set from the training films)"
            )
        return ImageChecks(blocking, notes, image_stats(grey, coloured, second_hue, grey_image))

    def check(
        self,
        image: Image.Image | None,
        features: np.ndarray | None = None,
        small: Image.Image | None = None,
        image_checks: ImageChecks | tuple[list[str], list[str]] | None = None,
    ) -> GateResult:
        """Run all checks on one decoded image. What the caller already computed saves work:
        ``features`` (its penultimate features: no second model pass), ``small`` (its S x S
        :func:`thumbnail`) or the whole result of :meth:`image_checks` (then ``image`` may be None
        unless the feature checks must run the model themselves)."""
        if image_checks is None:
            if image is None:
                raise ValueError("check() needs the image or the result of image_checks()")
            image_checks = self.image_checks(image, small)
        if not isinstance(image_checks, ImageChecks):
            image_checks = ImageChecks(list(image_checks[0]), list(image_checks[1]))
        result = GateResult(ok=True, refusals=list(image_checks.blocking), notes=list(image_checks.notes))
        if self.stats is None:
            result.notes.append(NO_STATS_WARNING)
        else:
            if features is None and image is not None and self.model is not None and self.processor is not None:
                from hfxray.gate_fit import extract_features

                pixel_values = self.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
                features = extract_features(self.model, pixel_values)
            if features is None:
                result.notes.append("feature-space check skipped: no model features given")
            elif self.chest is not None:
                self._check_v2(result, np.asarray(features).reshape(1, -1), image_checks)
            else:
                self._check_v1(result, np.asarray(features).reshape(1, -1))
        result.ok = not result.refusals
        return result

    def _check_v1(self, result: GateResult, features: np.ndarray) -> None:
        dist = float(self.distance(features)[0])
        result.distance, result.threshold = dist, self.threshold
        if dist > self.threshold:
            result.refusals.append(
                f"does not look like the chest X-rays this model was trained on "
                f"(feature distance {dist:.2f} > threshold {self.threshold:.2f})"
            )

    def _check_v2(self, result: GateResult, features: np.ndarray, checks: ImageChecks) -> None:
        assert self.chest is not None
        stats = checks.stats
        if stats is None and self.chest.image_stat_names:
            result.notes.append("chest-film check skipped: image statistics missing")
            return
        score = float(self.chest.score(features, stats)[0])
        result.chest_score, result.chest_threshold = score, self.chest.threshold
        turned = False
        if self.orientation is not None and stats is not None:
            result.upright_score, best = self.orientation.assess(stats)
            turned = result.upright_score < self.orientation.threshold
            result.turn_back = best if turned else None
        if score < self.chest.threshold:  # a turned chest film among these: see needs_turned_check
            result.refusals.append(
                f"{NOT_CHEST_TEXT} (chest-film score {score:.2f}, needs {self.chest.threshold:.2f}); "
                "upload a frontal (PA or AP) chest X-ray"
            )
        elif turned:
            result.refusals.append(self._turned_text(result))
        if self.familiarity is None:
            return
        dist, nearest = self.familiarity.nearest(features)
        result.distance, result.threshold, result.nearest_source = float(dist[0]), self.threshold, nearest[0]
        if not result.refusals and result.distance > self.familiarity.threshold:
            result.unfamiliar = True
            result.notes.append(
                f"{UNFAMILIAR_TEXT}: the model was not validated on films like it, treat the answer with "
                f"extra caution (feature distance {result.distance:.2f} to the nearest training source "
                f"'{nearest[0]}', above {self.familiarity.threshold:.2f})"
            )

    def _turned_text(self, result: GateResult) -> str:
        assert self.orientation is not None and result.upright_score is not None
        return (
            f"{NOT_UPRIGHT_TEXT} (upright score {result.upright_score:.2f}, needs {self.orientation.threshold:.2f}); "
            "the model reads films upright only: turn it so that the neck is at the top and upload it again"
        )

    def needs_turned_check(self, result: GateResult) -> bool:
        """Refused only as not a chest film, but looks turned: worth one more look the other way up
        (:meth:`confirm_turned`), since the chest-film classifier learnt chest films upright. Inputs the
        image checks refused (colour, size, uniform) get none: turning would not change those."""
        return (
            result.turn_back is not None
            and bool(result.refusals)
            and all(r.startswith(NOT_CHEST_TEXT) for r in result.refusals)
        )

    def confirm_turned(self, result: GateResult, features: np.ndarray, stats: np.ndarray) -> None:
        """If the image turned back (its ``features`` and ``stats`` after :func:`turn` by
        ``result.turn_back``) is a chest film, the refusal becomes "turned on its side or upside down":
        a doctor is told to turn the film, not that it is no chest film."""
        assert self.chest is not None
        if float(self.chest.score(np.asarray(features).reshape(1, -1), stats)[0]) < self.chest.threshold:
            return
        result.refusals = [r for r in result.refusals if not r.startswith(NOT_CHEST_TEXT)] + [self._turned_text(result)]


# ------------------------------------------------------------------------------------------
# Gate v1 fitting (still called by training; needs torch, imported lazily)


def _processor_size(processor: Any) -> int:
    size = processor.size
    size = size if isinstance(size, dict) else vars(size)
    return int(size.get("height") or size.get("shortest_edge") or 224)


def extract_features(model: Any, pixel_values: Any) -> np.ndarray:
    """(N, D) penultimate features of a torch model (see :func:`hfxray.gate_fit.extract_features`)."""
    from hfxray.gate_fit import extract_features as _extract

    return _extract(model, pixel_values)


def fit_gate(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image | str | os.PathLike],
    *,
    validation_images: Sequence[Image.Image | str | os.PathLike] | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Gate v1 statistics (one distance to the training mean); see :func:`hfxray.gate_fit.fit_gate_v1`."""
    from hfxray.gate_fit import fit_gate_v1

    return fit_gate_v1(
        model, processor, images, validation_images=validation_images, quantile=quantile, batch_size=batch_size
    )


def fit_gate_v2(predictor_or_model_dir: Any, chest_dirs: Sequence[str | os.PathLike], **kwargs: Any) -> dict[str, Any]:
    """Fit the two-question gate; see :func:`hfxray.gate_fit.fit_gate_v2`."""
    from hfxray.gate_fit import fit_gate_v2 as _fit

    return _fit(predictor_or_model_dir, chest_dirs, **kwargs)
