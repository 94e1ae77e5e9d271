"""Input gate: is this image a frontal chest film like the training data? If not, abstain.

A classifier trained on three kinds of chest X-ray gives a confident answer for *any* input - a
cat, a selfie, a scanned letter. The gate runs before the answer is shown and turns such inputs
into a warning and no class ("outside what this model has seen"). It combines four checks, each
cheap, each explainable to a user:

1. **Simple checks** on the decoded image: a short side below 64 px, an aspect ratio beyond 2.5:1
   (chest films are between about 0.75:1 and 2:1), or an almost constant image (grey-level
   standard deviation below 6/255 on the model's S x S input image) -> abstain. A short side below the
   model's input size is a (non-blocking) warning: the image is upscaled.
2. **Colour.** A radiograph has one channel. Displayed, scanned or re-encoded it may come out
   grey *or tinted in one hue* (sepia scans, green-tinted exports - the shared training data is
   such a set), but never in several distinct hues. On the model's S x S input image (HSV), "coloured"
   pixels have saturation > 50/255 and value > 40/255; the *second-hue share* is the fraction of
   all pixels that are coloured with a hue more than 25 degrees away from the dominant hue.
   Above 1 % -> "looks like a colour photograph" -> abstain. A photo in one hue family (a
   ginger cat, a cup of coffee) is caught by the *coloured share* (fraction of coloured pixels)
   exceeding the largest share seen in the training data (x 1.2 + 0.02), or, without fitted
   statistics, 60 %.
3. **Feature-space distance** (when the model directory has fitted statistics). The model's own
   penultimate features (the pooled vector that enters the classifier, i.e. timm's
   ``forward_head(..., pre_logits=True)``) of the training images give a class-agnostic mean and a
   diagonal covariance shrunk 10 % towards its average (stable with a few hundred images). The
   distance is the root-mean-square z-score ``sqrt(mean((f - mean)^2 / var))``. The threshold is
   the 99th percentile of that distance on *held-out* validation images (not the ones the mean
   and variance were fitted on), so by construction about 99 % of in-distribution films pass and
   the gate abstains on the rest of what lies further out. Above it -> abstain.
4. Without fitted statistics (``hfxray.json`` has no ``gate``), only checks 1 and 2 run and every
   result says so in its warnings.

``fit_gate`` computes the statistics; ``write_gate`` stores them under ``gate`` in
``hfxray.json``. Limits: the feature check only knows "like the training images or not"; it says
nothing about image quality within the distribution, and an unusual but genuine film (a child, a
lateral view, a different scanner) may be refused - that is the intended, conservative direction.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hfxray.modeling import classifier_module

GATE_METHOD = "diag-mahalanobis-penultimate-v1"
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

NO_STATS_WARNING = (
    "feature-space check unavailable: this model has no input-gate statistics, "
    "so only the colour and simple checks ran"
)


@dataclass
class GateResult:
    """``ok`` False means abstain: show the warnings and no class."""

    ok: bool
    warnings: list[str] = field(default_factory=list)
    distance: float | None = None
    threshold: float | None = None


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


def simple_checks(
    image: Image.Image, image_size: int | None = None, small: Image.Image | None = None
) -> tuple[list[str], list[str]]:
    """(blocking reasons, non-blocking warnings) from size, aspect ratio and contrast; the contrast
    on ``small``, the image's :func:`thumbnail` (made here when not given)."""
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
    small = small if small is not None else thumbnail(image, image_size)
    grey = np.asarray(small.convert("L"), dtype=np.float32)
    if float(grey.std()) < MIN_GREY_STD:
        blocking.append("image is almost uniform (no visible structure)")
    return blocking, notes


def extract_features(model: torch.nn.Module, pixel_values: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, D) penultimate features: the input of the final Linear layer, captured with a hook.

    For a timm backbone this equals ``forward_head(forward_features(x), pre_logits=True)``; using
    the classifier's input works for transformers CNNs too and adds nothing to the forward pass.
    """
    if isinstance(pixel_values, np.ndarray):
        pixel_values = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    captured: list[torch.Tensor] = []
    handle = classifier_module(model).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0].detach().flatten(1))
    )
    try:
        with torch.inference_mode():
            model(pixel_values=pixel_values)
    finally:
        handle.remove()
    return captured[-1].float().numpy()


def _as_images(images: Sequence[Image.Image | str | os.PathLike], image_size: int) -> list[Image.Image]:
    from hfxray.images import load_image

    return [im if isinstance(im, Image.Image) else load_image(im, draft_size=image_size) for im in images]


def _processor_size(processor: Any) -> int:
    size = processor.size
    size = size if isinstance(size, dict) else vars(size)
    return int(size.get("height") or size.get("shortest_edge") or 224)


def _features_of(model, processor, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [im.convert("RGB") for im in images[start : start + batch_size]]
        pixel_values = processor(images=chunk, return_tensors="pt")["pixel_values"]
        out.append(extract_features(model, pixel_values))
    return np.concatenate(out)


def _rms_z(features: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((np.atleast_2d(features) - mean) ** 2 / var, axis=1))


def fit_gate(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Image.Image | str | os.PathLike],
    *,
    validation_images: Sequence[Image.Image | str | os.PathLike] | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Gate statistics (JSON-ready) from training ``images`` and held-out ``validation_images``.

    Mean and shrunk diagonal variance come from ``images``; the distance threshold is the
    ``quantile`` of the distances of ``validation_images``. Without validation images, every
    fourth image is held out. Images may be PIL images or paths (read with ``images.load_image``).
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    image_size = _processor_size(processor)
    images = _as_images(images, image_size)
    if validation_images is None:
        validation = [im for i, im in enumerate(images) if i % 4 == 3]
        fit = [im for i, im in enumerate(images) if i % 4 != 3]
    else:
        fit, validation = images, _as_images(validation_images, image_size)
    if len(fit) < 8 or len(validation) < 4:
        raise ValueError(
            f"need at least 8 fitting and 4 validation images, got {len(fit)} and {len(validation)}"
        )
    model.eval()
    fit_feats = _features_of(model, processor, fit, batch_size).astype(np.float64)
    val_feats = _features_of(model, processor, validation, batch_size).astype(np.float64)
    mean = fit_feats.mean(axis=0)
    var = fit_feats.var(axis=0)
    var = (1.0 - SHRINKAGE) * var + SHRINKAGE * var.mean() + 1e-6
    val_dist = _rms_z(val_feats, mean, var)
    threshold = float(np.quantile(val_dist, quantile))
    coloured = [colour_stats(thumbnail(im, image_size))[0] for im in (*fit, *validation)]
    return {
        "method": GATE_METHOD,
        "feature": "penultimate",
        "dim": int(mean.shape[0]),
        "mean": [float(f"{v:.6g}") for v in mean],
        "var": [float(f"{v:.6g}") for v in var],
        "shrinkage": SHRINKAGE,
        "threshold": threshold,
        "quantile": quantile,
        "n_fit": len(fit),
        "n_validation": len(validation),
        "validation_pass_rate": float(np.mean(val_dist <= threshold)),
        "validation_distance_median": float(np.median(val_dist)),
        "max_coloured_share": float(max(coloured)),
    }


def write_gate(model_dir: str | os.PathLike, stats: dict[str, Any]) -> Path:
    """Store ``stats`` under ``gate`` in ``model_dir/hfxray.json`` (other keys kept; atomic replace)."""
    path = Path(model_dir) / METADATA_FILENAME
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    meta["gate"] = stats
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hfxray-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class InputGate:
    """Decides, per image, whether to answer or abstain (see the module docstring)."""

    def __init__(
        self,
        stats: dict[str, Any] | None = None,
        model: torch.nn.Module | None = None,
        processor: Any = None,
        image_size: int | None = None,
    ) -> None:
        self.stats = stats or None
        self.model = model
        self.processor = processor
        self.image_size = image_size or (_processor_size(processor) if processor is not None else None)
        if self.stats is not None:
            if self.stats.get("method") != GATE_METHOD:
                raise ValueError(f"unknown gate method {self.stats.get('method')!r}; expected {GATE_METHOD}")
            self._mean = np.asarray(self.stats["mean"], dtype=np.float64)
            self._var = np.asarray(self.stats["var"], dtype=np.float64)
            self.threshold: float | None = float(self.stats["threshold"])
            self.max_coloured_share = min(1.0, float(self.stats.get("max_coloured_share", 0.5)) * 1.2 + 0.02)
        else:
            self.threshold = None
            self.max_coloured_share = DEFAULT_MAX_COLOURED_SHARE

    @classmethod
    def from_model_dir(
        cls, model_dir: str | os.PathLike, model: torch.nn.Module | None = None, processor: Any = None
    ) -> InputGate:
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

    def distance(self, features: np.ndarray) -> np.ndarray:
        """RMS z-score of each feature row to the training mean."""
        if self.stats is None:
            raise ValueError("this gate has no feature statistics")
        return _rms_z(np.asarray(features, dtype=np.float64), self._mean, self._var)

    def image_checks(self, image: Image.Image, small: Image.Image | None = None) -> tuple[list[str], list[str]]:
        """(blocking reasons, notes) of the checks that need only the image: size, contrast, colour.

        Separate from :meth:`check` so that prediction can run them in its decoding threads, next to
        the resize that made ``small`` (the image's S x S :func:`thumbnail`, made here when not given).
        """
        small = small if small is not None else thumbnail(image, self.image_size)
        blocking, notes = simple_checks(image, self.image_size, small)
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
        return blocking, notes

    def check(
        self,
        image: Image.Image | None,
        features: np.ndarray | None = None,
        small: Image.Image | None = None,
        image_checks: tuple[list[str], list[str]] | None = None,
    ) -> GateResult:
        """Run all checks on one decoded image. What the caller already computed saves work:
        ``features`` (its penultimate features: no second model pass), ``small`` (its S x S
        :func:`thumbnail`) or the whole result of :meth:`image_checks` (then ``image`` may be None
        unless the feature check must run the model itself)."""
        if image_checks is None:
            if image is None:
                raise ValueError("check() needs the image or the result of image_checks()")
            image_checks = self.image_checks(image, small)
        blocking, notes = list(image_checks[0]), list(image_checks[1])
        dist = None
        if self.stats is None:
            notes.append(NO_STATS_WARNING)
        else:
            if features is None and image is not None and self.model is not None and self.processor is not None:
                pixel_values = self.processor(images=[image.convert("RGB")], return_tensors="pt")[
                    "pixel_values"
                ]
                features = extract_features(self.model, pixel_values)
            if features is None:
                notes.append("feature-space check skipped: no model features given")
            else:
                dist = float(self.distance(np.asarray(features).reshape(1, -1))[0])
                if dist > self.threshold:
                    blocking.append(
                        f"does not look like the chest X-rays this model was trained on "
                        f"(feature distance {dist:.2f} > threshold {self.threshold:.2f})"
                    )
        return GateResult(ok=not blocking, warnings=blocking + notes, distance=dist, threshold=self.threshold)
