"""Fitting the input gate (torch features, scikit-learn); the runtime check lives in :mod:`hfxray.gate`.

Gate v2 (issue 10) answers two questions, each fitted here from the model's own penultimate
features - the ``features`` output of the ONNX export, or the classifier's input in PyTorch - so
the gate sees exactly what :class:`hfxray.inference.Predictor` computes at prediction time:

* *Is this a frontal chest radiograph?* A ``StandardScaler`` + ``LogisticRegression`` (balanced
  class weights) on features plus :data:`hfxray.gate.IMAGE_STAT_NAMES`, trained on chest films of
  every source given against other medical images and :func:`generated_negatives`. The threshold
  is chosen on **held-out groups**: every film and negative is scored by a classifier fitted
  without its source / kind (``LeaveOneGroupOut``), and the threshold maximises the worst group's
  share of correct decisions (ties: the middle of the best interval). Never on training scores,
  which are always better than what a new source gets.
* *Is this film unlike the training films?* Per training source a feature mean, one pooled
  within-source diagonal variance; warning threshold at the 99th percentile of cross-fitted
  distances to the nearest source (each film against a source mean fitted without it).

Groups: a chest folder with a ``metadata.csv`` (``file_name``, ``source``) is split by source,
otherwise the folder is one source; a negative folder is split by its first-level sub-folders
(the not-cxr kinds); generated negatives are one group per kind.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from hfxray import gate as runtime
from hfxray.gate import (
    DEFAULT_QUANTILE,
    GATE_METHOD,
    GATE_METHOD_V2,
    IMAGE_STAT_NAMES,
    SHRINKAGE,
    _rms_z,
    colour_stats,
    thumbnail,
)

logger = logging.getLogger(__name__)

GENERATED_KINDS: tuple[str, ...] = (
    "noise-uniform-grey",
    "noise-uniform-colour",
    "noise-gaussian-grey",
    "noise-gaussian-colour",
    "noise-blurred",
    "text-page",
    "photo-grey",
    "photo-colour",
    "blank",
    "gradient",
    "checkerboard",
)
# L2 strength of the chest-film classifier. 0.02 rather than 0.05: on model v3's features, held-out CT
# slices were refused 93-94 % at C = 0.03-0.05 and 96.6 % at C = 0.01-0.02, every chest source still
# >= 96 % accepted (leave-one-group-out, threshold held out too; docs/gate.md).
DEFAULT_C = 0.02
# Weight of the model's features against the image statistics after standardisation (a per-block
# L2 penalty: 1 treats every column alike). Chosen on held-out groups, see docs/gate.md.
DEFAULT_FEATURE_WEIGHT = 0.3
MIN_GROUP_N_FOR_THRESHOLD = 20
FAMILIAR_QUANTILE = 0.99
MIN_SOURCE_N = 10


# ------------------------------------------------------------------------------------------ torch


def extract_features(model: Any, pixel_values: Any) -> np.ndarray:
    """(N, D) penultimate features: the input of the final Linear layer, captured with a hook.

    For a timm backbone this equals ``forward_head(forward_features(x), pre_logits=True)``; using
    the classifier's input works for transformers CNNs too and adds nothing to the forward pass.
    """
    import torch

    from hfxray.modeling import classifier_module

    if isinstance(pixel_values, np.ndarray):
        pixel_values = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    captured: list[Any] = []
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


def _torch_features(model: Any, processor: Any, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [im.convert("RGB") for im in images[start : start + batch_size]]
        pixel_values = processor(images=chunk, return_tensors="pt")["pixel_values"]
        out.append(extract_features(model, pixel_values))
    return np.concatenate(out)


def fit_gate_v1(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image | str | os.PathLike],
    *,
    validation_images: Sequence[Image.Image | str | os.PathLike] | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Gate v1 statistics (JSON-ready): one distance to the training mean, refusing above the
    ``quantile`` of held-out validation distances (every fourth image when none are given)."""
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    image_size = runtime._processor_size(processor)
    images = _as_images(images, image_size)
    if validation_images is None:
        validation = [im for i, im in enumerate(images) if i % 4 == 3]
        fit = [im for i, im in enumerate(images) if i % 4 != 3]
    else:
        fit, validation = images, _as_images(validation_images, image_size)
    if len(fit) < 8 or len(validation) < 4:
        raise ValueError(f"need at least 8 fitting and 4 validation images, got {len(fit)} and {len(validation)}")
    model.eval()
    fit_feats = _torch_features(model, processor, fit, batch_size).astype(np.float64)
    val_feats = _torch_features(model, processor, validation, batch_size).astype(np.float64)
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
        "mean": _round(mean),
        "var": _round(var),
        "shrinkage": SHRINKAGE,
        "threshold": threshold,
        "quantile": quantile,
        "n_fit": len(fit),
        "n_validation": len(validation),
        "validation_pass_rate": float(np.mean(val_dist <= threshold)),
        "validation_distance_median": float(np.median(val_dist)),
        "max_coloured_share": float(max(coloured)),
    }


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64).ravel()]


# ------------------------------------------------------------------------------------------ negatives


def _encode(image: Image.Image, rng: np.random.Generator) -> bytes:
    """PNG or JPEG bytes: generated negatives reach the gate through a file, as uploads do."""
    buf = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buf, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buf, format="JPEG", quality=int(rng.integers(60, 96))
        )
    return buf.getvalue()


def _size(rng: np.random.Generator) -> tuple[int, int]:
    w = int(rng.integers(256, 1100))
    return w, int(w * rng.uniform(0.7, 1.4))


@functools.cache
def _photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(grey, colour) photos that ship with scikit-image and matplotlib (no download)."""
    from skimage import data

    grey_names = ["camera", "brick", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text"]
    colour_names = ["astronaut", "cat", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                    "retina", "rocket", "colorwheel"]
    grey = [np.asarray(getattr(data, n)()) for n in grey_names]
    grey += [(np.asarray(data.horse()) * 255).astype(np.uint8), (data.shepp_logan_phantom() * 255).astype(np.uint8)]
    colour = [np.asarray(getattr(data, n)())[..., :3] for n in colour_names]
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
            if (sample / name).is_file():
                colour.append(np.asarray(Image.open(sample / name).convert("RGB")))
    except ImportError:
        pass
    return grey, colour


def _crop(array: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random crop (at least half of each side), rotation by k*90 degrees and resize."""
    h, w = array.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = Image.fromarray(np.ascontiguousarray(np.rot90(array[y : y + ch, x : x + cw], int(rng.integers(0, 4)))))
    scale = rng.uniform(0.8, 2.0)
    return image.resize((max(64, int(image.width * scale)), max(64, int(image.height * scale))), Image.BILINEAR)


def _text_page(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(600, 1300)), 0
    h = int(w * rng.uniform(1.2, 1.5))
    dark = rng.random() < 0.2
    page = Image.new("L", (w, h), int(rng.integers(0, 40)) if dark else int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(12, 40))
    font = ImageFont.load_default(size=size)
    ink = int(rng.integers(200, 256)) if dark else int(rng.integers(0, 60))
    words = ["patient", "report", "chest", "the", "of", "and", "lorem", "ipsum", "dolor", "2024", "radiology",
             "findings", "normal", "impression", "signed", "page", "history", "no", "acute", "disease"]
    y = int(rng.integers(20, 80))
    while y < h - size * 2:
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 14))))
        draw.text((int(rng.integers(20, 80)), y), line, fill=ink, font=font)
        y += int(size * rng.uniform(1.2, 2.0))
    return page.convert("RGB") if rng.random() < 0.3 else page


def generated_image(kind: str, rng: np.random.Generator) -> Image.Image:
    """One synthetic non-radiograph of ``kind`` (one of :data:`GENERATED_KINDS`)."""
    w, h = _size(rng)
    if kind == "noise-uniform-grey":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if kind == "noise-uniform-colour":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind in ("noise-gaussian-grey", "noise-gaussian-colour"):
        shape = (h, w) if kind.endswith("grey") else (h, w, 3)
        values = rng.normal(rng.uniform(60, 190), rng.uniform(15, 80), shape)
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if kind == "noise-blurred":
        values = rng.normal(128, 60, (h, w))
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 6.0)))
    if kind == "text-page":
        return _text_page(rng)
    if kind in ("photo-grey", "photo-colour"):
        grey, colour = _photos()
        if kind == "photo-grey":
            pool = grey + [np.asarray(Image.fromarray(c).convert("L")) for c in colour]
        else:
            pool = colour
        return _crop(pool[int(rng.integers(0, len(pool)))], rng)
    if kind == "blank":
        level = int(rng.integers(0, 256))
        values = level + rng.normal(0, rng.uniform(0, 2.5), (h, w))
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            ramp = xx * np.cos(angle) + yy * np.sin(angle)
        else:
            ramp = -np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
        lo, hi = sorted(rng.uniform(0, 255, 2))
        grey = lo + ramp * (hi - lo + 30)
        if rng.random() < 0.5:
            return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
        tint = rng.uniform(0.3, 1.0, 3)
        return Image.fromarray(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8))
    if kind == "checkerboard":
        square = int(rng.integers(4, 120))
        yy, xx = np.mgrid[0:h, 0:w]
        board = ((yy // square + xx // square) % 2).astype(bool)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            a, b = a[:1].repeat(3), b[:1].repeat(3)
        return Image.fromarray(np.where(board[..., None], a, b).astype(np.uint8))
    raise ValueError(f"unknown generated kind {kind!r}; expected one of {', '.join(GENERATED_KINDS)}")


def generated_negatives(
    n_per_kind: int = 40, *, seed: int = 0, kinds: Sequence[str] = GENERATED_KINDS
) -> Iterator[tuple[str, bytes]]:
    """(kind, PNG/JPEG bytes) of synthetic non-radiographs, reproducible from ``seed``."""
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, k])
        for _ in range(n_per_kind):
            yield kind, _encode(generated_image(kind, rng), rng)


# ------------------------------------------------------------------------------------------ data


@dataclass
class GateItem:
    """One training example of the gate: where it comes from and its group."""

    source: str | bytes  # a path or file bytes (generated)
    name: str  # shown in reports
    label: int  # 1 frontal chest film, 0 not
    group: str  # "chest:<source>", "neg:<kind>" or "gen:<kind>"
    reference: bool = False  # a training film of the model: used for the familiarity statistics


def chest_items(folder: str | os.PathLike, *, reference: bool = True) -> list[GateItem]:
    """Every image under ``folder`` as a chest film, grouped by ``metadata.csv`` source (else the folder)."""
    from hfxray.images import is_supported_path

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"chest folder not found: {root}")
    # The training loader's reader and naming: gate groups are the sources training and evaluation report.
    from hfxray.data.loading import default_source_name, read_metadata_table

    sources = read_metadata_table(root) or {}
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_supported_path(p)):
        rel = path.relative_to(root).as_posix()
        source = sources.get(str(path.resolve()), {}).get("source") or default_source_name(root)
        items.append(GateItem(str(path), rel, 1, f"chest:{source}", reference))
    if not items:
        raise ValueError(f"no images in chest folder {root}")
    return items


def negative_items(folder: str | os.PathLike) -> list[GateItem]:
    """Every image under ``folder`` as a negative, grouped by first-level sub-folder (the kind)."""
    from hfxray.images import is_supported_path

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"negative folder not found: {root}")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_supported_path(p)):
        rel = path.relative_to(root)
        kind = rel.parts[0] if len(rel.parts) > 1 else root.name
        items.append(GateItem(str(path), rel.as_posix(), 0, f"neg:{kind}"))
    if not items:
        raise ValueError(f"no images in negative folder {root}")
    return items


def generated_items(n_per_kind: int = 40, *, seed: int = 0) -> list[GateItem]:
    return [
        GateItem(data, f"{kind}-{i % n_per_kind:03d}", 0, f"gen:{kind}")
        for i, (kind, data) in enumerate(generated_negatives(n_per_kind, seed=seed))
    ]


def _cap_groups(items: list[GateItem], max_per_group: int | None, seed: int) -> list[GateItem]:
    if not max_per_group:
        return items
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_group.setdefault(item.group, []).append(i)
    keep = set()
    for idx in by_group.values():
        keep.update(idx if len(idx) <= max_per_group else rng.choice(idx, max_per_group, replace=False).tolist())
    return [item for i, item in enumerate(items) if i in keep]


@dataclass
class GateData:
    """Model features and image statistics of the gate's examples (one row each)."""

    features: np.ndarray  # (n, D) float32
    stats: np.ndarray  # (n, len(IMAGE_STAT_NAMES))
    simple_blocked: np.ndarray  # (n,) bool: refused by size/aspect/uniform checks
    label: np.ndarray  # (n,) int
    group: np.ndarray  # (n,) str
    reference: np.ndarray  # (n,) bool
    name: np.ndarray  # (n,) str
    unreadable: list[str]

    def save(self, path: str | os.PathLike) -> None:
        """Cache as .npz (benchmarks reuse one feature pass for many fits)."""
        np.savez_compressed(
            path, features=self.features, stats=self.stats, simple_blocked=self.simple_blocked, label=self.label,
            group=self.group, reference=self.reference, name=self.name, unreadable=np.array(self.unreadable, dtype=str),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> GateData:
        z = np.load(path, allow_pickle=False)
        return cls(z["features"], z["stats"], z["simple_blocked"], z["label"], z["group"], z["reference"], z["name"],
                   list(z["unreadable"]))

    def subset(self, mask: np.ndarray) -> GateData:
        return GateData(self.features[mask], self.stats[mask], self.simple_blocked[mask], self.label[mask],
                        self.group[mask], self.reference[mask], self.name[mask], self.unreadable)


def _load_predictor(predictor_or_model_dir: Any) -> Any:
    from hfxray.inference import Predictor

    if isinstance(predictor_or_model_dir, Predictor):
        return predictor_or_model_dir
    return Predictor.from_pretrained(predictor_or_model_dir)


def gather_gate_data(
    predictor_or_model_dir: Any,
    items: Sequence[GateItem],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> GateData:
    """Decode every item as prediction does (``load_image(draft_size=S, grey=True)``), then the
    model's features and the gate's image statistics from the predictor's own preprocessing."""
    from hfxray.images import ImageReadError, load_image

    predictor = _load_predictor(predictor_or_model_dir)
    feats, stats, blocked, keep, unreadable = [], [], [], [], []
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            features, checks = predictor.gate_inputs(batch)
            feats.append(features)
            for image, check in zip(batch, checks, strict=True):
                stats.append(check.stats)
                # colour refusals are recomputed from the statistics with the fitted colour limit
                grey_std = float(check.stats[IMAGE_STAT_NAMES.index("grey_std")] * 255.0)
                blocked.append(bool(runtime._simple_checks(image, predictor.image_size, grey_std)[0]))
            batch.clear()

    for i, item in enumerate(items):
        try:
            image = load_image(item.source, draft_size=predictor.image_size, grey=True)
        except (ImageReadError, OSError) as e:
            unreadable.append(f"{item.name}: {e}")
            continue
        batch.append(image)
        keep.append(i)
        if len(batch) == batch_size:
            flush()
        if progress is not None:
            progress(1)
    flush()
    if not keep:
        raise ValueError("none of the gate's images could be read")
    if unreadable:
        logger.warning("gate fitting skipped %d unreadable files", len(unreadable))
    kept = [items[i] for i in keep]
    features = np.concatenate(feats).astype(np.float32)
    if features.shape[0] != len(kept):
        raise ValueError("the model gave no penultimate features; export ONNX with features or use PyTorch")
    return GateData(
        features=features,
        stats=np.asarray(stats, dtype=np.float64),
        simple_blocked=np.asarray(blocked, dtype=bool),
        label=np.array([it.label for it in kept], dtype=np.int64),
        group=np.array([it.group for it in kept], dtype=str),
        reference=np.array([it.reference for it in kept], dtype=bool),
        name=np.array([it.name for it in kept], dtype=str),
        unreadable=unreadable,
    )


# ------------------------------------------------------------------------------------------ orientation

# A frontal film on its side or upside down is still a chest film to the chest classifier often enough
# (model v3's gate answered about a fifth of upside-down films) and the model's answer on it is noise.
# So a separate question, fitted from the chest films alone by turning them: no other data needed.
# Why the layout only (the 16 x 16 z-scored thumbnail), not the model's features: turning a film turns
# its layout and nothing else, so the runtime can compare a film with its own turned copies for free;
# on held-out sources that separates upright from turned films 97.8-100 % per group (docs/gate.md),
# and fitting needs no model pass per turned copy.
ORIENTATION_KINDS: tuple[str, ...] = ("rotated-90", "rotated-270", "upside-down", "flipped-top-bottom")
ORIENTATION_C = 0.1


def turned(image: Image.Image, kind: str) -> Image.Image:
    """``image`` turned the way of ``kind`` (:data:`ORIENTATION_KINDS`), or mirrored left-right
    (``"mirrored"``: still upright - a film saved mirrored, or situs inversus)."""
    ops = {
        "mirrored": Image.Transpose.FLIP_LEFT_RIGHT,
        "rotated-90": Image.Transpose.ROTATE_90,
        "rotated-270": Image.Transpose.ROTATE_270,
        "upside-down": Image.Transpose.ROTATE_180,
        "flipped-top-bottom": Image.Transpose.FLIP_TOP_BOTTOM,
    }
    if kind not in ops:
        raise ValueError(f"unknown orientation {kind!r}; expected mirrored or one of {', '.join(ORIENTATION_KINDS)}")
    return image.transpose(ops[kind])


def _padded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A black or white band along one random side (5-35 % of the film): exports and scans add them,
    and a dark band at the foot of an upright film must not read as upside down."""
    w, h = image.size
    side = int(rng.integers(0, 4))
    band = int((w if side % 2 else h) * rng.uniform(0.05, 0.35))
    size = (w + band, h) if side % 2 else (w, h + band)
    canvas = Image.new("L", size, 0 if rng.random() < 0.8 else 255)
    canvas.paste(image.convert("L"), (band if side == 3 else 0, band if side == 0 else 0))
    return canvas


@dataclass
class OrientationData:
    """Layouts of chest films upright (1) and turned (0); ``group`` is what the worst-group threshold
    balances (see :func:`orientation_data`), ``source`` the film's own source (held out together)."""

    layouts: np.ndarray
    upright: np.ndarray
    group: np.ndarray
    source: np.ndarray
    film: np.ndarray  # which film a row was made from (its turned copies share it)


def orientation_data(chest: Sequence[GateItem], image_size: int, *, seed: int = 0) -> OrientationData:
    """Every chest film upright and mirrored (1, group ``upright:<source>``), padded (1, ``upright-padded``),
    and turned each way of :data:`ORIENTATION_KINDS` (0, group = kind; half of them padded too). Layouts
    come from the runtime's own :meth:`hfxray.gate.InputGate.image_checks`, so fitting and checking
    measure the same thing."""
    from hfxray.images import ImageReadError, load_image

    checker = runtime.InputGate(image_size=image_size)
    first = len(runtime.SCALAR_STAT_NAMES)
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[str] = []
    sources: list[str] = []
    films: list[int] = []
    for item in chest:
        if item.label != 1:
            continue
        try:
            film = load_image(item.source, draft_size=image_size, grey=True)
        except (ImageReadError, OSError):
            continue  # reported where the film is used as a chest film
        source = item.group.split(":", 1)[-1]
        variants = [(film, 1, f"upright:{source}"), (turned(film, "mirrored"), 1, f"upright:{source}")]
        variants.append((_padded(film, rng), 1, "upright-padded"))
        for kind in ORIENTATION_KINDS:
            wrong = turned(film, kind)
            variants.append((_padded(wrong, rng) if rng.random() < 0.5 else wrong, 0, kind))
        number = films[-1] + 1 if films else 0  # this film's number among the readable ones
        for image, label, group in variants:
            rows.append(checker.image_checks(image).stats[first:])
            labels.append(label)
            groups.append(group)
            sources.append(source)
            films.append(number)
    if not rows:
        raise ValueError("no readable chest films for the orientation check")
    return OrientationData(
        np.asarray(rows), np.asarray(labels), np.asarray(groups), np.asarray(sources), np.asarray(films)
    )


def orientation_held_out_scores(data: OrientationData, *, C: float = ORIENTATION_C) -> np.ndarray:
    """Runtime scores (:class:`hfxray.gate.OrientationCheck`) of every row from a model fitted without its
    film's source (GroupKFold over sources, at most 5 folds; over films when there is one source)."""
    from sklearn.model_selection import GroupKFold

    # Held out by source; with one source only (a single training folder), by film, a fifth at a time,
    # as the chest-film classifier does.
    groups = data.source if len(np.unique(data.source)) > 1 else data.film % 5
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("the orientation check needs at least 2 readable chest films")
    held = np.empty(len(data.upright), dtype=np.float64)
    cv = GroupKFold(n_splits=min(5, n_groups))
    for train, test in cv.split(data.layouts, data.upright, groups=groups):
        fold = make_classifier(C).fit(data.layouts[train], data.upright[train])
        held[test] = runtime.OrientationCheck(_stored_numbers(fold)).score_layouts(data.layouts[test])
    return held


def fit_orientation(data: OrientationData, *, C: float = ORIENTATION_C) -> dict[str, Any]:
    """The JSON-ready ``orientation`` entry of gate v2: a logistic regression upright-vs-turned on the
    layout, scored at runtime by :class:`hfxray.gate.OrientationCheck` (the film as it is against its
    turned copies); its threshold chosen by the library's worst-group rule on scores from models fitted
    without the film's source (GroupKFold over sources: a film and its turned copies are held out
    together), and those held-out shares per group."""
    held = orientation_held_out_scores(data, C=C)
    none_blocked = np.zeros(len(data.upright), dtype=bool)
    threshold = choose_threshold(held, none_blocked, data.upright, data.group)
    correct = group_correct(held, none_blocked, data.upright, threshold)
    return {
        "inputs": "layout",
        **_stored_numbers(make_classifier(C).fit(data.layouts, data.upright)),
        "threshold": threshold,
        "C": C,
        "kinds": list(ORIENTATION_KINDS),
        "held_out": group_shares(correct, data.upright, data.group),
    }


# ------------------------------------------------------------------------------------------ chest classifier


def _inputs(data: GateData, stat_names: Sequence[str]) -> np.ndarray:
    idx = [IMAGE_STAT_NAMES.index(n) for n in stat_names]
    return np.hstack([data.features.astype(np.float64), data.stats[:, idx]]) if idx else data.features.astype(np.float64)


def _column_weights(feature_dim: int, n_stats: int, feature_weight: float) -> np.ndarray:
    return np.concatenate([np.full(feature_dim, feature_weight), np.ones(n_stats)])


def _scale_columns(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return x * weights


def _stored_numbers(clf: Any, column_weights: np.ndarray | None = None) -> dict[str, Any]:
    """A fitted :func:`make_classifier` pipeline as the JSON numbers the runtime's logistic regressions
    read (``hfxray.gate._StoredLogisticRegression``); column weights folded into the coefficients."""
    scaler, logreg = clf[0], clf[-1]
    coef = logreg.coef_[0] if column_weights is None else logreg.coef_[0] * column_weights
    return {
        "scaler_mean": _round(scaler.mean_),
        "scaler_scale": _round(scaler.scale_),
        "coef": _round(coef),
        "intercept": float(logreg.intercept_[0]),
    }


def make_classifier(C: float = DEFAULT_C, column_weights: np.ndarray | None = None) -> Any:
    """The chest-film classifier: standardised inputs (times ``column_weights``: a per-block penalty),
    L2 logistic regression with balanced classes. The weights fold into the stored coefficients."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    steps: list[Any] = [StandardScaler()]
    if column_weights is not None:
        steps.append(FunctionTransformer(_scale_columns, kw_args={"weights": column_weights}))
    steps.append(LogisticRegression(C=C, class_weight="balanced", max_iter=3000))
    return make_pipeline(*steps)


def colour_limit(data: GateData) -> float:
    """The runtime's strongly-coloured limit from the chest films' largest coloured share."""
    coloured = data.stats[data.label == 1, IMAGE_STAT_NAMES.index("coloured_share")]
    return min(1.0, float(coloured.max(initial=0.5)) * 1.2 + 0.02)


def image_blocked(data: GateData, max_coloured_share: float) -> np.ndarray:
    """Refused by the image checks alone (size, aspect, uniform, colour), as :class:`InputGate` decides."""
    second = data.stats[:, IMAGE_STAT_NAMES.index("second_hue_share")]
    coloured = data.stats[:, IMAGE_STAT_NAMES.index("coloured_share")]
    return data.simple_blocked | (second > runtime.MAX_SECOND_HUE_SHARE) | (
        (second <= runtime.MAX_SECOND_HUE_SHARE) & (coloured > max_coloured_share)
    )


def held_out_scores(
    data: GateData,
    *,
    C: float = DEFAULT_C,
    feature_weight: float = DEFAULT_FEATURE_WEIGHT,
    stat_names: Sequence[str] = IMAGE_STAT_NAMES,
    n_splits: int | None = None,
) -> np.ndarray:
    """P(chest) of every example from a classifier fitted without its group (LeaveOneGroupOut, or
    GroupKFold with ``n_splits`` folds to save time)."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, cross_val_predict

    cv = LeaveOneGroupOut() if n_splits is None else GroupKFold(n_splits=n_splits)
    weights = _column_weights(data.features.shape[1], len(stat_names), feature_weight)
    groups = data.group.astype(object)  # object: the pseudo-group names are longer than the str dtype holds
    chest = data.label == 1
    if len(np.unique(groups[chest])) == 1:
        # One chest source only (a single training folder): holding it out would leave no chest film
        # to fit on, so its films are held out a fifth at a time instead.
        groups[chest] = [f"{g}#{i % 5}" for i, g in enumerate(groups[chest])]
    return cross_val_predict(
        make_classifier(C, weights), _inputs(data, stat_names), data.label, groups=groups, cv=cv,
        method="predict_proba",
    )[:, 1]


def fit_classifier(
    data: GateData,
    *,
    C: float = DEFAULT_C,
    feature_weight: float = DEFAULT_FEATURE_WEIGHT,
    stat_names: Sequence[str] = IMAGE_STAT_NAMES,
) -> tuple[Any, dict[str, Any]]:
    """(fitted pipeline, its JSON-ready numbers for :class:`hfxray.gate.ChestClassifier` without threshold)."""
    weights = _column_weights(data.features.shape[1], len(stat_names), feature_weight)
    clf = make_classifier(C, weights).fit(_inputs(data, stat_names), data.label)
    return clf, {
        "feature_dim": int(data.features.shape[1]),
        "image_stats": list(stat_names),
        **_stored_numbers(clf, weights),
        "C": C,
        "feature_weight": feature_weight,
    }


def group_correct(scores: np.ndarray, blocked: np.ndarray, label: np.ndarray, threshold: float) -> np.ndarray:
    """Per example: the gate's decision is right (chest films accepted, negatives refused)."""
    accepted = (scores >= threshold) & ~blocked
    return np.where(label == 1, accepted, ~accepted)


def choose_threshold(
    scores: np.ndarray, blocked: np.ndarray, label: np.ndarray, group: np.ndarray,
    *, min_group_n: int = MIN_GROUP_N_FOR_THRESHOLD,
) -> float:
    """The threshold that maximises the worst group's share of correct decisions (groups with at
    least ``min_group_n`` examples); ties: the middle of the best interval, in logit space."""
    candidates = np.unique(np.concatenate([[0.5], scores, np.nextafter(scores, 1.0)]))
    candidates = candidates[(candidates > 1e-6) & (candidates < 1 - 1e-6)]
    groups = [g for g in np.unique(group) if (group == g).sum() >= min_group_n] or list(np.unique(group))
    worst = np.ones(len(candidates))
    for g in groups:
        m = group == g
        # accepted at threshold t: not blocked and score >= t (counted by binary search, all t at once)
        open_scores = np.sort(scores[m & ~blocked])
        accepted = (len(open_scores) - np.searchsorted(open_scores, candidates, side="left")) / m.sum()
        correct = accepted if label[m][0] == 1 else 1.0 - accepted
        worst = np.minimum(worst, correct)
    best = candidates[np.isclose(worst, worst.max())]
    logit = np.log(best / (1 - best))
    return float(1.0 / (1.0 + np.exp(-(logit.min() + logit.max()) / 2.0)))


def group_shares(correct: np.ndarray, label: np.ndarray, group: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per group: n and the share decided rightly (label 1 accepted, 0 refused), Wilson 95 %."""
    from hfxray.metrics import wilson_interval

    out = {}
    for g in np.unique(group):
        m = group == g
        k, n = int(correct[m].sum()), int(m.sum())
        out[str(g)] = {
            "n": n, "measure": "accepted" if label[m][0] == 1 else "refused", "share": k / n,
            "ci95": list(wilson_interval(k, n)),
        }
    return out


def group_summary(
    scores: np.ndarray, blocked: np.ndarray, data: GateData, threshold: float
) -> dict[str, dict[str, Any]]:
    """Per group: n and the share the gate gets right (accepted chest films / refused negatives)."""
    out = group_shares(group_correct(scores, blocked, data.label, threshold), data.label, data.group)
    for g, row in out.items():
        row["refused_by_image_checks"] = int(blocked[data.group == g].sum())
    return out


# ------------------------------------------------------------------------------------------ familiarity


def _pooled_var(features: np.ndarray, sources: np.ndarray, names: Sequence[str]) -> np.ndarray:
    resid = np.concatenate([features[sources == s] - features[sources == s].mean(axis=0) for s in names])
    var = resid.var(axis=0)
    return (1.0 - SHRINKAGE) * var + SHRINKAGE * var.mean() + 1e-6


def _source_names(sources: np.ndarray) -> list[str]:
    names, counts = np.unique(sources, return_counts=True)
    big = [str(s) for s, c in zip(names, counts, strict=True) if c >= MIN_SOURCE_N]
    return big or [str(s) for s in names]


def fit_familiarity(
    features: np.ndarray, sources: np.ndarray, *, quantile: float = FAMILIAR_QUANTILE, seed: int = 0
) -> dict[str, Any]:
    """Per-source means, pooled variance, and the warning threshold from cross-fitted distances
    (5 folds within each source: a film is measured against its source's mean fitted without it)."""
    features = features.astype(np.float64)
    names = _source_names(sources)
    means = np.stack([features[sources == s].mean(axis=0) for s in names])
    var = _pooled_var(features, sources, names)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for k, s in enumerate(names):
        idx = np.flatnonzero(sources == s)
        folds = rng.permutation(len(idx)) % 5
        for fold in range(5):
            test, train = idx[folds == fold], idx[folds != fold]
            if not len(test) or not len(train):
                continue
            own = means.copy()
            own[k] = features[train].mean(axis=0)
            d = np.sqrt((((features[test][:, None, :] - own[None]) ** 2) / var).mean(axis=2)).min(axis=1)
            held.append(d)
    held_d = np.concatenate(held)
    return {
        "method": "nearest-source-rms-z",
        "sources": names,
        "n_per_source": {s: int((sources == s).sum()) for s in names},
        "means": [_round(m) for m in means],
        "var": _round(var),
        "shrinkage": SHRINKAGE,
        "threshold": float(np.quantile(held_d, quantile)),
        "quantile": quantile,
        "cross_fitted_distance_median": float(np.median(held_d)),
    }


# ------------------------------------------------------------------------------------------ the fit


def fit_gate_from_data(
    data: GateData,
    *,
    C: float = DEFAULT_C,
    feature_weight: float = DEFAULT_FEATURE_WEIGHT,
    stat_names: Sequence[str] = IMAGE_STAT_NAMES,
    n_splits: int | None = None,
) -> dict[str, Any]:
    """The JSON-ready ``gate`` entry (v2) from gathered data: classifier on all of it, threshold
    from held-out group scores, familiarity from the reference (model training) films."""
    if len(np.unique(data.label)) < 2:
        raise ValueError("the gate needs chest films and negatives")
    groups = np.unique(data.group)
    if len(groups) < 3:
        raise ValueError(f"the gate needs at least 3 groups (sources/kinds) to hold out, got {len(groups)}")
    limit = colour_limit(data)
    blocked = image_blocked(data, limit)
    held = held_out_scores(data, C=C, feature_weight=feature_weight, stat_names=stat_names, n_splits=n_splits)
    threshold = choose_threshold(held, blocked, data.label, data.group)
    _, chest = fit_classifier(data, C=C, feature_weight=feature_weight, stat_names=stat_names)
    ref = data.reference & (data.label == 1)
    if not ref.any():
        ref = data.label == 1
    sources = np.array([g.split(":", 1)[1] for g in data.group[ref]])
    summary = group_summary(held, blocked, data, threshold)
    return {
        "method": GATE_METHOD_V2,
        "feature": "penultimate",
        "chest": {
            **chest,
            "threshold": threshold,
            "threshold_rule": "max over thresholds of the worst held-out group's correct share "
            f"(groups with n >= {MIN_GROUP_N_FOR_THRESHOLD}; {'LeaveOneGroupOut' if n_splits is None else f'GroupKFold({n_splits})'})",
        },
        "familiarity": fit_familiarity(data.features[ref], sources),
        "max_coloured_share": float(data.stats[data.label == 1, IMAGE_STAT_NAMES.index("coloured_share")].max()),
        "n_chest": int((data.label == 1).sum()),
        "n_negative": int((data.label == 0).sum()),
        # scores of classifiers that never saw the group; the threshold was chosen on these same
        # scores, so see benchmarks/gate_holdout.py for numbers with the threshold held out too
        "held_out": summary,
    }


def fit_gate_v2(
    predictor_or_model_dir: Any,
    chest_dirs: Sequence[str | os.PathLike],
    negative_dirs: Sequence[str | os.PathLike] = (),
    *,
    reference_dirs: Sequence[str | os.PathLike] | None = None,
    generated_per_kind: int = 40,
    max_per_group: int | None = None,
    seed: int = 0,
    C: float = DEFAULT_C,
    feature_weight: float = DEFAULT_FEATURE_WEIGHT,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fit the two-question gate for a model (a :class:`Predictor` or a model directory).

    ``chest_dirs``: frontal chest films (folders; ``metadata.csv`` sources become groups).
    ``negative_dirs``: non-chest images, one sub-folder per kind. ``reference_dirs``: the folders the
    model was trained on, for the "unfamiliar film" warning (default: all ``chest_dirs``).
    ``generated_per_kind`` synthetic negatives per :data:`GENERATED_KINDS` entry are added.
    """
    refs = {str(Path(d).resolve()) for d in (reference_dirs if reference_dirs is not None else chest_dirs)}
    chest_roots = [str(Path(d).resolve()) for d in chest_dirs]
    items: list[GateItem] = []
    for d in dict.fromkeys(chest_roots + sorted(refs - set(chest_roots))):
        items += chest_items(d, reference=d in refs)
    for d in negative_dirs:
        items += negative_items(d)
    items = _cap_groups(items, max_per_group, seed)
    if generated_per_kind:
        items += generated_items(generated_per_kind, seed=seed)
    predictor = _load_predictor(predictor_or_model_dir)
    data = gather_gate_data(predictor, items, progress=progress)
    stats = fit_gate_from_data(data, C=C, feature_weight=feature_weight)
    stats["orientation"] = fit_orientation(orientation_data(items, predictor.image_size, seed=seed))
    return stats


def fit_and_write_gate(
    model_dir: str | os.PathLike,
    chest_dirs: Sequence[str | os.PathLike],
    negative_dirs: Sequence[str | os.PathLike] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`fit_gate_v2` on ``model_dir``, stored under ``gate`` in its hfxray.json (atomic), and
    the model card refreshed."""
    from hfxray import hub

    stats = fit_gate_v2(model_dir, chest_dirs, negative_dirs, **kwargs)
    runtime.write_gate(model_dir, stats)
    hub.write_model_card(model_dir)
    return stats
