"""Shortcut audit: does the model read the lungs, or the source of the film?

Classifiers trained on data where each class comes from a different source learn the source
(borders, text markers, resolution, JPEG history, exposure) instead of the lungs (DeGrave et al.
2021, Roberts et al. 2021). Each check here is an intervention with a known answer for a model
that reads the lungs:

- border-only: blank the central lung box -> a lung-reading model falls to chance;
- lungs-only: blank the border band and the corners (text markers) -> it keeps its accuracy;
- heatmap mass: its Grad-CAM heat sits inside the lung box;
- invariance: downscaling, JPEG recompression, re-saving as a 224 px archive copy, gamma and contrast
  shifts of the same film do not change its answer;
- leakage: audit images that are (near) copies of recorded training images make all of the above
  look better than it is.

Every proportion carries a 95% Wilson interval; the verdict is in plain language.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from hfxray import DISCLAIMER, __version__
from hfxray.gradcam import DEFAULT_LUNG_BOX, central_mass, explain
from hfxray.images import ImageReadError, is_supported_path, load_image
from hfxray.inference import Predictor, softmax
from hfxray.metrics import wilson_interval

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width / height

# Border-only blanks the same generous lung box that Grad-CAM mass is measured in.
CENTRAL_BOX: Box = DEFAULT_LUNG_BOX
# Lungs-only keeps this box and blanks everything outside it plus the corner squares, where
# text markers ("L", "PORTABLE", hospital names) sit on most films.
BORDER_BAND = 0.12
CORNER_FRACTION = 0.22
# Decode so that the 512 px downscale test is a real change for large JPEGs (PIL draft keeps both
# sides >= 2 x this); the model's own squash resize to S x S follows, as in prediction.
AUDIT_DRAFT_SIZE = 512
DEFAULT_DOWNSCALE = (224, 512)
DEFAULT_JPEG_QUALITY = (30, 70)
DEFAULT_GAMMA = (0.7, 1.4)
DEFAULT_CONTRAST = (0.8, 1.2)

# Verdict thresholds (named so that reports and tests can cite them).
RETAINED_HIGH = 0.5  # border-only keeps >= half of the above-chance accuracy -> high risk
FLIP_HIGH = 0.20  # flip rate >= 20% with Wilson lower bound >= 10% -> high risk
FLIP_HIGH_LO = 0.10
FLIP_MODERATE = 0.10  # flip rate >= 10% with lower bound >= 3% -> moderate
FLIP_MODERATE_LO = 0.03
HEAT_LOW = 0.5  # less heat inside the lung box than half the map -> moderate
_LEVELS = {"low": 0, "moderate": 1, "high": 2}


# ------------------------------------------------------------------------------------------------
# image interventions
# ------------------------------------------------------------------------------------------------
def _fill(arr: np.ndarray) -> np.ndarray:
    """Mean grey of the image: blanking with it adds no new edge contrast or intensity shift."""
    return arr.reshape(-1, arr.shape[-1]).mean(axis=0).astype(arr.dtype)


def _pixel_box(box: Box, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)


def border_only(image: Image.Image, box: Box = CENTRAL_BOX) -> Image.Image:
    """The film with the central lung box filled with its mean grey: only borders remain."""
    arr = np.array(image.convert("RGB"))
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = _pixel_box(box, w, h)
    arr[y0:y1, x0:x1] = _fill(arr)
    return Image.fromarray(arr)


def lungs_only(image: Image.Image, band: float = BORDER_BAND, corner: float = CORNER_FRACTION) -> Image.Image:
    """The film with a border band and the four corner squares filled with its mean grey."""
    arr = np.array(image.convert("RGB"))
    h, w = arr.shape[:2]
    fill = _fill(arr)
    keep = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = _pixel_box((band, band, 1 - band, 1 - band), w, h)
    keep[y0:y1, x0:x1] = True
    cw, ch = round(corner * w), round(corner * h)
    for ys in (slice(0, ch), slice(h - ch, h)):
        for xs in (slice(0, cw), slice(w - cw, w)):
            keep[ys, xs] = False
    arr[~keep] = fill
    return Image.fromarray(arr)


def downscale(image: Image.Image, short_side: int) -> Image.Image:
    """A low-resolution copy (short side -> ``short_side``) scaled back to the original size."""
    w, h = image.size
    scale = short_side / min(w, h)
    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def archive_copy(image: Image.Image, size: int = 224, quality: int = 92) -> Image.Image:
    """The film as a public 224 px archive copy holds it: squashed to size x size (Lanczos), saved as
    JPEG. Why this one: it is how two of the corpus's largest sources were stored, and it moved a
    held-out fold's children's films from Normal to Viral Pneumonia (docs/loso.md)."""
    return jpeg_recompress(image.convert("L").resize((size, size), Image.Resampling.LANCZOS), quality)


def gamma_shift(image: Image.Image, gamma: float) -> Image.Image:
    lut = [round(255 * (i / 255) ** gamma) for i in range(256)] * 3
    return image.convert("RGB").point(lut)


def contrast_shift(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(image.convert("RGB")).enhance(factor)


@dataclass(frozen=True)
class Transform:
    """One invariance intervention; ``applies`` says whether it changes this image at all."""

    name: str
    description: str
    apply: Callable[[Image.Image], Image.Image]
    applies: Callable[[Image.Image], bool] = lambda _im: True


def invariance_transforms(
    downscale_to: Sequence[int] = DEFAULT_DOWNSCALE,
    jpeg_quality: Sequence[int] = DEFAULT_JPEG_QUALITY,
    gamma: Sequence[float] = DEFAULT_GAMMA,
    contrast: Sequence[float] = DEFAULT_CONTRAST,
) -> list[Transform]:
    """The transforms a lung-reading model should be indifferent to."""
    out = []
    for s in downscale_to:
        out.append(
            Transform(
                f"downscale_{s}",
                f"downscaled to {s} px short side and back",
                lambda im, s=s: downscale(im, s),
                lambda im, s=s: min(im.size) > s,
            )
        )
    out += [
        Transform(f"jpeg_q{q}", f"JPEG recompressed at quality {q}", lambda im, q=q: jpeg_recompress(im, q))
        for q in jpeg_quality
    ]
    out.append(Transform("archive_224", "re-saved as a 224 px archive copy (squashed, Lanczos, JPEG 92)", archive_copy))
    out += [Transform(f"gamma_{g:g}", f"gamma {g:g}", lambda im, g=g: gamma_shift(im, g)) for g in gamma]
    out += [
        Transform(f"contrast_{c:g}", f"contrast x{c:g}", lambda im, c=c: contrast_shift(im, c))
        for c in contrast
    ]
    return out


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def scan_labelled_folder(
    data_dir: str | os.PathLike, classes: Sequence[str]
) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, skipped class folders). Folders must be named like the model's classes;
    a folder holding only some of them (an external set) is fine."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if sub.name not in index:
            skipped.append(sub.name)
            continue
        for f in sorted(p for p in sub.rglob("*") if p.is_file() and is_supported_path(p)):
            paths.append(str(f.resolve()))
            labels.append(index[sub.name])
    if not paths:
        raise ValueError(
            f"no images of the model's classes ({', '.join(classes)}) in {root}; expected one sub-folder per class"
        )
    return paths, labels, skipped


# ------------------------------------------------------------------------------------------------
# statistics and verdicts
# ------------------------------------------------------------------------------------------------
def _proportion(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(int(k), int(n))
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci95": [lo, hi] if n else None}


def _accuracy_block(preds: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    p = _proportion(int((preds == labels).sum()), len(labels))
    return {"accuracy": p["rate"], "ci95": p["ci95"], "n_correct": p["k"], "n": p["n"]}


def _masking_verdict(
    name: str, block: dict[str, Any], full: dict[str, Any], chance: float
) -> tuple[str, str]:
    """Plain-language verdict for border-only / lungs-only; returns (level, sentence)."""
    acc, (lo, hi) = block["accuracy"], block["ci95"]
    full_gain = full["accuracy"] - chance
    retained = (acc - chance) / full_gain if full_gain > 0 else float("nan")
    block["chance"] = chance
    block["retained"] = None if np.isnan(retained) else float(retained)
    text = f"{name} accuracy {acc:.2f} [{lo:.2f}, {hi:.2f}] vs chance {chance:.2f} (full image {full['accuracy']:.2f})"
    if full["ci95"][0] <= chance:
        return "low", text + ": the full-image accuracy is not above chance either, so this check cannot tell"
    if name == "border-only":
        if lo > chance and retained >= RETAINED_HIGH:
            return (
                "high",
                text
                + ": far above chance - the model can classify from the borders alone -> likely source shortcut",
            )
        if lo > chance:
            return (
                "moderate",
                text + ": above chance - the borders carry some class information the model uses",
            )
        return "low", text + ": near chance - the model needs the central lung region"
    if not np.isnan(retained) and retained < RETAINED_HIGH:
        return (
            "moderate",
            text + ": most of the accuracy is lost without borders and corners - the model relies on them",
        )
    return "low", text + ": the lung region alone keeps most of the accuracy"


def _invariance_verdict(transforms: dict[str, dict[str, Any]]) -> tuple[str, str, str | None, float | None]:
    measured = {k: v for k, v in transforms.items() if v["n"] > 0}
    if not measured:
        return "low", "invariance: no transform applied to these images (all too small)", None, None
    worst = max(measured, key=lambda k: measured[k]["flip_rate"])
    rate = measured[worst]["flip_rate"]
    lo, hi = measured[worst]["flip_ci95"]
    text = f"{measured[worst]['description']} changes the predicted class of {rate:.0%} of images [{lo:.0%}, {hi:.0%}]"
    if rate >= FLIP_HIGH and lo >= FLIP_HIGH_LO:
        return (
            "high",
            text + ": the answer depends on image quality, not anatomy -> likely source shortcut",
            worst,
            rate,
        )
    if rate >= FLIP_MODERATE and lo >= FLIP_MODERATE_LO:
        return "moderate", text + ": the model is sensitive to how the film was stored", worst, rate
    return (
        "low",
        f"invariance: at most {rate:.0%} flips [{lo:.0%}, {hi:.0%}] ({measured[worst]['description']})",
        worst,
        rate,
    )


# ------------------------------------------------------------------------------------------------
# leakage
# ------------------------------------------------------------------------------------------------
def _leakage(training: dict[str, Any] | None, records: list[Any]) -> dict[str, Any]:
    """Exact (sha256) and near (perceptual hash) copies of recorded training images in the audit folder."""
    from hfxray.data import FileRecord, cross_duplicates

    if not isinstance(training, dict) or not training.get("files"):
        return {
            "measured": False,
            "verdict": "leakage: not measured (the model records no training_data files)",
        }
    root = str(training.get("dir") or "")
    phash = training.get("phash") or {}
    phash16 = training.get("phash16") or {}
    train_records = [
        FileRecord(
            os.path.join(root, rel) if root else rel, sha, phash.get(rel) or None, phash16.get(rel) or None
        )
        for sha, rel in training["files"].items()
    ]
    by_path = {r.path: r for r in records}
    groups = cross_duplicates(train_records, records)
    train_shas = set(training["files"])
    leaked: dict[str, dict[str, Any]] = {}
    for g in groups:
        train_members = [m for m in g.members if m not in by_path]
        for m in g.members:
            if m in by_path:
                leaked[m] = {
                    "path": m,
                    "kind": "exact" if by_path[m].sha256 in train_shas else "near",
                    "training": sorted(set(train_members)) or [m],
                }
    n_exact = sum(v["kind"] == "exact" for v in leaked.values())
    n_near = len(leaked) - n_exact
    rows = sorted(leaked.values(), key=lambda v: v["path"])
    verdict = (
        f"leakage: {len(leaked)} of {len(records)} audit images are copies of training images "
        f"({n_exact} exact, {n_near} near): the audit's accuracies on them are not independent"
        if leaked
        else f"leakage: none of the {len(records)} audit images is a copy of a recorded training image"
    )
    return {"measured": True, "n_exact": n_exact, "n_near": n_near, "images": rows, "verdict": verdict}


# ------------------------------------------------------------------------------------------------
# the audit
# ------------------------------------------------------------------------------------------------
def _as_predictor(predictor_or_model_dir: Predictor | str | os.PathLike | None) -> Predictor:
    if isinstance(predictor_or_model_dir, Predictor):
        return predictor_or_model_dir
    return Predictor.from_pretrained(predictor_or_model_dir)


def _torch_model(predictor: Predictor) -> Any:
    """Grad-CAM needs gradients, so the PyTorch weights even when predictions run on ONNX."""
    if predictor.model is not None:
        return predictor.model
    from hfxray.modeling import load_model

    model, _ = load_model(predictor.model_dir)
    return model.eval()


def _select_films(
    data_dir: str | os.PathLike, classes: list[str], max_per_class: int | None
) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, skipped folders), capped at the first ``max_per_class`` files of each class
    so a quick audit of a large folder stays balanced the way the folder is."""
    paths, labels, skipped = scan_labelled_folder(data_dir, classes)
    if max_per_class is not None:
        keep = [i for i, y in enumerate(labels) if labels[: i + 1].count(y) <= max_per_class]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, labels, skipped


@dataclass
class _Heatmaps:
    """Grad-CAM of the films in batches of 8: one backward pass per film would dominate the audit,
    while holding every film's input until the end would hold the whole folder in memory."""

    model: Any
    mass: list[float] = field(default_factory=list)
    gallery: dict[int, list[tuple[Image.Image, np.ndarray, int]]] = field(default_factory=dict)
    chunk: list[tuple[np.ndarray, int, Image.Image]] = field(default_factory=list)

    def add(self, pixel_values: np.ndarray, label: int, thumb: Image.Image) -> None:
        """Queue one film (its model input and a thumbnail for the gallery)."""
        self.chunk.append((pixel_values, label, thumb))
        if len(self.chunk) >= 8:
            self.flush()

    def flush(self) -> None:
        """Explain the queued films; keep each one's heat share and the first 3 of each class to show."""
        if not self.chunk:
            return
        import torch

        batch = torch.from_numpy(np.stack([c[0] for c in self.chunk]))
        cams = explain(self.model, batch).cams
        for (_, label, thumb), cam in zip(self.chunk, cams, strict=True):
            self.mass.append(central_mass(cam))
            if len(self.gallery.setdefault(label, [])) < 3:
                self.gallery[label].append((thumb, cam, label))
        self.chunk.clear()


@dataclass
class _FilmPass:
    """What one pass over the films collected, so that every check reads the same predictions."""

    probs: list[np.ndarray] = field(default_factory=list)  # per film: (variants, classes)
    applies: list[list[bool]] = field(default_factory=list)  # per film: which transforms changed it
    labels: list[int] = field(default_factory=list)  # of the films that could be read
    records: list[Any] = field(default_factory=list)  # FileRecords for the leakage check
    bad_files: list[dict[str, str]] = field(default_factory=list)
    example: Image.Image | None = None  # the first readable film, for the masks figure


def _film_variants(image: Image.Image, transforms: list[Transform]) -> tuple[list[Image.Image], list[bool]]:
    """Original, border-only, lungs-only, then each transform (or the original where it would not
    change this film), so that all variants of a film go through the model in one batch."""
    variants = [image, border_only(image), lungs_only(image)]
    applies = [t.applies(image) for t in transforms]
    variants += [t.apply(image) if ok else image for t, ok in zip(transforms, applies, strict=True)]
    return variants, applies


def _predict_films(
    predictor: Predictor,
    paths: list[str],
    labels: list[int],
    transforms: list[Transform],
    heatmaps: _Heatmaps | None,
    progress: Callable[[int], None] | None,
) -> _FilmPass:
    """Decode each film once and predict all its variants; unreadable files are recorded, not fatal,
    so one broken file does not stop an audit of thousands."""
    from hfxray.data import FileRecord, image_phash
    from hfxray.images import file_sha256

    films = _FilmPass()
    n_variants = 3 + len(transforms)  # original, border-only, lungs-only, transforms
    for path, label in zip(paths, labels, strict=True):
        try:
            image = load_image(path, draft_size=AUDIT_DRAFT_SIZE)
        except (ImageReadError, OSError) as e:
            films.bad_files.append(
                {"path": path, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__}
            )
            continue
        if films.example is None:
            films.example = image.copy()
        films.records.append(FileRecord(path, file_sha256(path), image_phash(image), image_phash(image, 16)))
        variants, applies = _film_variants(image, transforms)
        pixel_values = predictor.preprocess(variants)
        films.probs.append(softmax(predictor.predict_pixel_values(pixel_values, batch_size=n_variants)))
        films.applies.append(applies)
        films.labels.append(label)
        if heatmaps is not None:
            size = predictor.image_size
            heatmaps.add(pixel_values[0], label, image.resize((size, size), Image.Resampling.BILINEAR))
        if progress is not None:
            progress(1)
    if heatmaps is not None:
        heatmaps.flush()
    return films


def _masking_checks(
    preds: np.ndarray, y: np.ndarray, chance: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Full-image, border-only and lungs-only accuracy with verdicts: the masks are judged against
    the full image, since a model that fails on whole films says nothing by failing on masked ones."""
    full = _accuracy_block(preds[:, 0], y)
    border = _accuracy_block(preds[:, 1], y)
    lungs = _accuracy_block(preds[:, 2], y)
    border_level, border_text = _masking_verdict("border-only", border, full, chance)
    lungs_level, lungs_text = _masking_verdict("lungs-only", lungs, full, chance)
    border.update(level=border_level, verdict=border_text, box=list(CENTRAL_BOX))
    lungs.update(level=lungs_level, verdict=lungs_text, band=BORDER_BAND, corner=CORNER_FRACTION)
    return full, border, lungs


def _invariance_check(
    transforms: list[Transform], preds: np.ndarray, y: np.ndarray, applies: np.ndarray
) -> dict[str, Any]:
    """Flip rate and accuracy per transform, counted only on films the transform changed, so a
    folder of small films does not dilute the downscale tests with unchanged copies."""
    inv: dict[str, dict[str, Any]] = {}
    for j, t in enumerate(transforms):
        mask = applies[:, j]
        tp = preds[mask, 3 + j]
        flips = _proportion(int((tp != preds[mask, 0]).sum()), int(mask.sum()))
        acc = _proportion(int((tp == y[mask]).sum()), int(mask.sum()))
        inv[t.name] = {
            "description": t.description,
            "n": int(mask.sum()),
            "n_not_applicable": int((~mask).sum()),
            "n_flipped": flips["k"],
            "flip_rate": flips["rate"],
            "flip_ci95": flips["ci95"],
            "accuracy": acc["rate"],
            "accuracy_ci95": acc["ci95"],
            "accuracy_original_same_images": _proportion(
                int((preds[mask, 0] == y[mask]).sum()), int(mask.sum())
            )["rate"],
        }
    level, text, worst, worst_rate = _invariance_verdict(inv)
    return {
        "transforms": inv,
        "max_flip_transform": worst,
        "max_flip_rate": worst_rate,
        "level": level,
        "verdict": text,
    }


def _heatmap_check(
    cam_mass: list[float], y: np.ndarray, classes: list[str], present: list[int]
) -> dict[str, Any]:
    """Share of Grad-CAM heat inside the lung box, beside what a uniform map would put there, so the
    number has a baseline; "not measured" when heatmaps were off."""
    heat: dict[str, Any] = {"measured": bool(cam_mass), "lung_box": list(CENTRAL_BOX)}
    heat_level = "low"
    if cam_mass:
        masses = np.asarray(cam_mass)
        box_share = (CENTRAL_BOX[2] - CENTRAL_BOX[0]) * (CENTRAL_BOX[3] - CENTRAL_BOX[1])
        heat["per_class"] = {
            classes[c]: {"mean_central_mass": float(masses[y == c].mean()), "n": int((y == c).sum())}
            for c in present
        }
        heat["mean_central_mass"] = float(masses.mean())
        heat["uniform_share"] = float(box_share)
        text = (
            f"Grad-CAM: {heat['mean_central_mass']:.0%} of the heat lies inside the lung box "
            f"(a uniform map would put {box_share:.0%} there)"
        )
        if heat["mean_central_mass"] < HEAT_LOW:
            heat_level = "moderate"
            text += ": most evidence comes from outside the lungs"
        heat["verdict"] = text
    else:
        heat["verdict"] = "Grad-CAM heatmap mass: not measured"
    heat["level"] = heat_level
    return heat


def _class_balance(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, list[int], float]:
    """(films per class, classes present, chance): chance is the majority share, not 1/k, since a
    model that always answers the commonest class already scores that much."""
    counts = np.bincount(y, minlength=n_classes)
    present = [i for i in range(n_classes) if counts[i]]
    return counts, present, float(counts.max() / len(y))


def _risk_verdict(checks: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """(shortcut risk, reasons): the worst check decides, and the reasons list the checks that raised
    it, worst first; with nothing raised, the three main checks say why the risk is low."""
    border, lungs, invariance = checks["border_only"], checks["lungs_only"], checks["invariance"]
    levels = [
        (border["level"], border["verdict"]),
        (lungs["level"], lungs["verdict"]),
        (invariance["level"], invariance["verdict"]),
        (checks["heatmap"]["level"], checks["heatmap"]["verdict"]),
    ]
    risk = max((lvl for lvl, _ in levels), key=_LEVELS.__getitem__)
    reasons = [text for lvl, text in sorted(levels, key=lambda x: -_LEVELS[x[0]]) if lvl != "low"]
    if not reasons:
        reasons = [border["verdict"], lungs["verdict"], invariance["verdict"]]
    return risk, reasons


def _audit_warnings(
    checks: dict[str, dict[str, Any]],
    skipped: list[str],
    bad_files: list[dict[str, str]],
    chance: float,
    n: int,
) -> list[str]:
    """What limits how far the verdict can be trusted (leaked copies, skipped files, a model that
    does not work here, a small folder); these qualify the risk rather than raise it."""
    leak, full = checks["leakage"], checks["full_image"]
    warnings_ = []
    if leak.get("n_exact") or leak.get("n_near"):
        warnings_.append(leak["verdict"])
    if skipped:
        warnings_.append(f"folders not among the model's classes were skipped: {', '.join(skipped)}")
    if bad_files:
        warnings_.append(f"{len(bad_files)} unreadable files skipped")
    if full["ci95"][0] <= chance:
        warnings_.append(
            f"full-image accuracy {full['accuracy']:.2f} is not above chance {chance:.2f} on this folder: "
            "the masking checks cannot judge a model that does not work here"
        )
    if n < 30:
        warnings_.append(f"only {n} images: intervals are wide")
    return warnings_


def _assemble_result(
    predictor: Predictor,
    data_dir: str | os.PathLike,
    classes: list[str],
    balance: tuple[np.ndarray, list[int], float],
    skipped: list[str],
    bad_files: list[dict[str, str]],
    checks: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The audit dict in audit.json's key order, with the verdict last; made JSON-safe (NaN -> null,
    numpy scalars -> Python) so the file, the HTML and the caller all see the same values."""
    counts, present, chance = balance
    n = int(counts.sum())
    risk, reasons = _risk_verdict(checks)
    result: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "hfxray_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(predictor.model_dir),
        "backend": predictor.backend,
        "data_dir": str(Path(data_dir).resolve()),
        "n": n,
        "classes": classes,
        "n_per_class": {classes[c]: int(counts[c]) for c in present},
        "chance": {"majority": chance, "uniform": 1.0 / len(present)},
        "skipped_folders": skipped,
        "bad_files": bad_files,
        **checks,
        "verdict": {
            "shortcut_risk": risk,
            "reasons": reasons,
            "warnings": _audit_warnings(checks, skipped, bad_files, chance, n),
        },
    }
    return _json_safe(result)


def run_audit(
    predictor_or_model_dir: Predictor | str | os.PathLike | None,
    data_dir: str | os.PathLike,
    *,
    output_dir: str | os.PathLike,
    training_metadata: dict[str, Any] | None = None,
    downscale_to: Sequence[int] = DEFAULT_DOWNSCALE,
    jpeg_quality: Sequence[int] = DEFAULT_JPEG_QUALITY,
    gamma: Sequence[float] = DEFAULT_GAMMA,
    contrast: Sequence[float] = DEFAULT_CONTRAST,
    max_per_class: int | None = None,
    heatmaps: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every check on the labelled folder ``data_dir``; write audit.json, audit.html and PNGs.

    ``training_metadata`` is the model's ``training_data`` record (default: from its hfxray.json).
    Returns the audit dict (what audit.json holds); ``result["verdict"]`` has ``shortcut_risk``
    ("high" / "moderate" / "low"), ``reasons`` and ``warnings``.
    """
    predictor = _as_predictor(predictor_or_model_dir)
    classes = list(predictor.classes)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, labels, skipped = _select_films(data_dir, classes, max_per_class)
    transforms = invariance_transforms(downscale_to, jpeg_quality, gamma, contrast)
    cams = _Heatmaps(_torch_model(predictor)) if heatmaps else None
    films = _predict_films(predictor, paths, labels, transforms, cams, progress)
    if not films.labels:
        raise ValueError(f"none of the {len(paths)} images in {data_dir} could be read")

    preds, y = np.stack(films.probs).argmax(-1), np.asarray(films.labels)  # (n, variants), (n,)
    balance = _class_balance(y, len(classes))
    _, present, chance = balance
    full, border, lungs = _masking_checks(preds, y, chance)
    applies = np.asarray(films.applies, dtype=bool).reshape(len(y), len(transforms))
    training = training_metadata if training_metadata is not None else predictor.metadata.get("training_data")
    checks = {
        "full_image": full,
        "border_only": border,
        "lungs_only": lungs,
        "heatmap": _heatmap_check(cams.mass if cams is not None else [], y, classes, present),
        "invariance": _invariance_check(transforms, preds, y, applies),
        "leakage": _leakage(training, films.records),
    }
    result = _assemble_result(predictor, data_dir, classes, balance, skipped, films.bad_files, checks)
    _write_outputs(result, out_dir, films.example, cams.gallery if cams is not None else {}, classes)
    return result


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def audit_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The compact form stored under ``audit`` in hfxray.json (what the model card shows)."""
    inv = result.get("invariance", {})
    leak = result.get("leakage", {})
    return {
        "shortcut_risk": result["verdict"]["shortcut_risk"],
        "reasons": result["verdict"]["reasons"],
        "warnings": result["verdict"].get("warnings", []),
        "data_dir": result.get("data_dir"),
        "n": result.get("n"),
        "date": result.get("date"),
        "full_image": {k: result["full_image"].get(k) for k in ("accuracy", "ci95")},
        "border_only": {k: result["border_only"].get(k) for k in ("accuracy", "ci95", "chance")},
        "lungs_only": {k: result["lungs_only"].get(k) for k in ("accuracy", "ci95", "chance")},
        "heatmap_mean_central_mass": result.get("heatmap", {}).get("mean_central_mass"),
        "max_flip_rate": inv.get("max_flip_rate"),
        "max_flip_transform": inv.get("max_flip_transform"),
        "flip_rates": {k: v.get("flip_rate") for k, v in inv.get("transforms", {}).items()},
        "leakage": (leak.get("n_exact", 0) + leak.get("n_near", 0)) if leak.get("measured") else None,
    }


def write_audit_to_model(model_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Store the summary under ``audit`` in hfxray.json (atomic replace) and refresh the model card."""
    from hfxray.hub import update_metadata, write_model_card

    path = update_metadata(model_dir, audit=audit_summary(result))
    write_model_card(model_dir)
    return path


# ------------------------------------------------------------------------------------------------
# report files
# ------------------------------------------------------------------------------------------------
def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _write_outputs(
    result: dict[str, Any],
    out_dir: Path,
    example: Image.Image | None,
    gallery: dict[int, list[tuple[Image.Image, np.ndarray, int]]],
    classes: list[str],
) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    pngs: list[tuple[str, str]] = []
    if example is not None:
        thumb = example.copy()
        thumb.thumbnail((256, 256))
        fig = Figure(figsize=(9, 3.3))
        for ax, (title, im) in zip(
            fig.subplots(1, 3),
            (("original", thumb), ("border-only", border_only(thumb)), ("lungs-only", lungs_only(thumb))),
            strict=True,
        ):
            ax.imshow(im)
            ax.set_title(title)
            ax.axis("off")
        _save_figure(fig, out_dir / "masks.png")
        pngs.append(("masks.png", "What the model sees in the border-only and lungs-only checks"))

    inv = result["invariance"]["transforms"]
    names = [k for k, v in inv.items() if v["n"]]
    if names:
        fig = Figure(figsize=(8, 3.5))
        ax = fig.subplots()
        rates = [inv[k]["flip_rate"] for k in names]
        err = np.array(
            [
                [r - inv[k]["flip_ci95"][0], inv[k]["flip_ci95"][1] - r]
                for k, r in zip(names, rates, strict=True)
            ]
        ).T
        ax.bar(names, rates, yerr=err, capsize=3, color="#4c72b0")
        ax.axhline(
            FLIP_HIGH, color="#c44e52", linestyle="--", linewidth=1, label=f"high risk ({FLIP_HIGH:.0%})"
        )
        ax.set_ylabel("prediction flip rate (95% CI)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
        ax.legend()
        _save_figure(fig, out_dir / "invariance.png")
        pngs.append(("invariance.png", "How often the predicted class changes under each transform"))

    if gallery:
        from hfxray.gradcam import overlay

        rows = sorted(gallery)
        cols = max(len(v) for v in gallery.values())
        fig = Figure(figsize=(2.6 * cols, 2.8 * len(rows)))
        axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
        for r, label in enumerate(rows):
            for c in range(cols):
                ax = axes[r, c]
                ax.axis("off")
                if c < len(gallery[label]):
                    thumb, cam, _ = gallery[label][c]
                    ax.imshow(overlay(thumb, cam))
                    w, h = thumb.size
                    x0, y0, x1, y1 = _pixel_box(CENTRAL_BOX, w, h)
                    ax.add_patch(
                        Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--")
                    )
                    ax.set_title(f"{classes[label]}: {central_mass(cam):.0%} inside", fontsize=9)
        _save_figure(fig, out_dir / "heatmaps.png")
        pngs.append(("heatmaps.png", "Grad-CAM of the predicted class; dashed box = lung region"))

    (out_dir / "audit.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out_dir / "audit.html").write_text(_html(result, pngs), encoding="utf-8")


def _fmt_ci(value: Any, ci: Any) -> str:
    if value is None:
        return "not measured"
    if ci:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def _html(result: dict[str, Any], pngs: list[tuple[str, str]]) -> str:
    e = html.escape
    v = result["verdict"]
    colour = {"high": "#c44e52", "moderate": "#dd8452", "low": "#55a868"}[v["shortcut_risk"]]
    rows = []
    for key, label in (
        ("full_image", "Full image"),
        ("border_only", "Border-only"),
        ("lungs_only", "Lungs-only"),
    ):
        b = result[key]
        rows.append(
            f"<tr><td>{label}</td><td>{_fmt_ci(b['accuracy'], b['ci95'])}</td><td>{b['n']}</td><td>{e(b.get('verdict', ''))}</td></tr>"
        )
    inv_rows = []
    for t in result["invariance"]["transforms"].values():
        inv_rows.append(
            f"<tr><td>{e(t['description'])}</td><td>{t['n']}</td><td>{_fmt_ci(t['flip_rate'], t['flip_ci95'])}</td>"
            f"<td>{_fmt_ci(t['accuracy'], t['accuracy_ci95'])}</td></tr>"
        )
    heat = result["heatmap"]
    heat_rows = [
        f"<tr><td>{e(c)}</td><td>{h['n']}</td><td>{h['mean_central_mass']:.3f}</td></tr>"
        for c, h in heat.get("per_class", {}).items()
    ]
    leak = result["leakage"]
    leak_rows = [
        f"<tr><td>{e(x['path'])}</td><td>{x['kind']}</td><td>{e(', '.join(x['training']))}</td></tr>"
        for x in leak.get("images", [])
    ]
    counts = ", ".join(f"{e(c)}: {k}" for c, k in result["n_per_class"].items())
    figs = "".join(
        f'<figure><img src="{e(p)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
        for p, cap in pngs
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hfxray shortcut audit</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.risk{{color:#fff;background:{colour};padding:2px 8px;border-radius:4px}}img{{max-width:100%}}
.disclaimer{{background:#fff3cd;padding:8px;border:1px solid #e0c060}}</style></head><body>
<h1>Shortcut audit</h1>
<p class="disclaimer">{e(result["disclaimer"])}</p>
<p>Model <code>{e(result["model"])}</code> on <code>{e(result["data_dir"])}</code>: n = {result["n"]} ({counts});
chance level (majority class) {result["chance"]["majority"]:.3f}. Intervals are 95% Wilson intervals.</p>
<h2>Verdict: shortcut risk <span class="risk">{e(v["shortcut_risk"])}</span></h2>
<ul>{"".join(f"<li>{e(r)}</li>" for r in v["reasons"])}</ul>
{("<p>Warnings:</p><ul>" + "".join(f"<li>{e(w)}</li>" for w in v["warnings"]) + "</ul>") if v["warnings"] else ""}
<h2>Masking</h2>
<table><tr><th>input</th><th>accuracy</th><th>n</th><th>verdict</th></tr>{"".join(rows)}</table>
<h2>Invariance</h2><p>{e(result["invariance"]["verdict"])}</p>
<table><tr><th>transform</th><th>n</th><th>flip rate</th><th>accuracy on transformed copies</th></tr>{"".join(inv_rows)}</table>
<h2>Grad-CAM mass inside the lung box</h2><p>{e(heat["verdict"])}</p>
<table><tr><th>class</th><th>n</th><th>mean share inside</th></tr>{"".join(heat_rows)}</table>
<h2>Leakage</h2><p>{e(leak["verdict"])}</p>
{("<table><tr><th>audit image</th><th>kind</th><th>training image</th></tr>" + "".join(leak_rows) + "</table>") if leak_rows else ""}
{figs}
</body></html>
"""


def rebuild_validation_folder(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Symlink a model's held-out validation files (hfxray.json ``split.validation_files``) into
    ``out_dir/<class>/``, so the audit runs on images the model was not trained on."""
    meta = json.loads((Path(model_dir) / "hfxray.json").read_text())
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the validation links")
    link_validation_files(meta.get("split", {}).get("validation_files"), data_dir, out)
    return out


def link_validation_files(files: Sequence[str] | None, data_dir: str | os.PathLike, out_dir: Path) -> int:
    """Symlink ``files`` (paths relative to ``data_dir``) into ``out_dir``; no copies: the audit hashes
    the link targets. Returns how many were linked."""
    if not files:
        raise ValueError("hfxray.json has no split.validation_files: retrain with a current hfxray")
    for rel in files:
        src = (Path(data_dir) / rel).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"validation file {rel} is not under {data_dir} any more")
        parts = Path(rel).parts
        # Several data folders (paths like covid19-xray/train/Covid/x.jpg): keep the class folder,
        # fold the rest of the path into the name so the links form one DATA_DIR/<class>/ layout.
        dst = out_dir / rel if len(parts) <= 2 else out_dir / parts[-2] / "__".join((*parts[:-2], parts[-1]))
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    return len(files)
