"""Training augmentation (albumentations presets) and the evaluation transform (the model's processor)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
@dataclass
class AugmentationConfig:
    """Training augmentation for frontal chest radiographs; every extra is off by default (p=0).

    No flips: anatomy is lateralised (heart on the left, situs) and text markers (L/R, hospital
    labels) would be mirrored, so a horizontal flip makes images that do not occur in practice
    and teaches the model nothing about lungs. ``horizontal_flip_p`` exists only for experiments.
    """

    rotate_limit: float = 10.0
    shift_limit: float = 0.06
    scale_range: tuple[float, float] = (0.9, 1.1)
    affine_p: float = 0.7
    brightness_limit: float = 0.1
    contrast_limit: float = 0.1
    brightness_contrast_p: float = 0.5
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    gamma_p: float = 0.3
    clahe_clip_limit: float = 2.0
    clahe_p: float = 0.3
    horizontal_flip_p: float = 0.0
    # Off by default; against shortcut learning (border text markers, source-specific quality).
    border_mask_p: float = 0.0  # blank a random strip along 1-2 borders (markers sit there)
    border_mask_max_fraction: float = 0.1
    random_erasing_p: float = 0.0  # A.CoarseDropout
    downscale_p: float = 0.0  # A.Downscale
    jpeg_p: float = 0.0  # A.ImageCompression
    jpeg_quality_range: tuple[int, int] = (50, 95)
    blur_p: float = 0.0  # A.GaussianBlur
    noise_p: float = 0.0  # A.GaussNoise (same noise on all channels)
    equalize_p: float = 0.0  # A.Equalize
    # Against the film's own processing pipeline as a cue: a random resampling round trip (down with one
    # interpolation, back up with another) and sharpening, the way another archive's resize-and-save
    # leaves a film. See `build_train_augmentation`.
    resample_p: float = 0.0
    resample_scale_range: tuple[float, float] = (0.4, 0.9)
    sharpen_p: float = 0.0  # A.Sharpen (Lanczos-like edge enhancement)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


AUGMENTATION_PRESETS: tuple[str, ...] = ("default", "none", "shortcut", "shortcut-strong", "pipeline-random")
"""Names accepted by `augmentation_config` (``--augmentation`` of scripts/train.py)."""


def augmentation_config(name: str = "default") -> AugmentationConfig:
    """A fresh `AugmentationConfig` for a preset name.

    ``default``: the radiograph-plausible geometric/intensity set. ``none``: resize + normalise
    only. ``shortcut``: default plus border masking, random erasing, downscale, JPEG, blur and
    noise, against learning the source (text markers, scanner quality) instead of the lungs.
    ``shortcut-strong``: the shortcut set at higher probabilities, plus zoom-in (scale up to 1.25,
    which crops borders toward the lungs), gamma/contrast ranges that cover the audit's invariance
    shifts (gamma 0.7-1.4, contrast x0.8-1.2), histogram equalisation and harsher JPEG; see
    docs/shortcuts.md for how it compares. ``pipeline-random``: shortcut-strong plus a random
    resampling round trip (70 %), sharpening and more JPEG, so that how a film was resized and saved
    before it arrived (which differs by archive, and moved held-out films between classes: docs/loso.md)
    is noise to the model rather than a cue.
    """
    if name == "default":
        return AugmentationConfig()
    if name == "none":
        return AugmentationConfig(affine_p=0.0, brightness_contrast_p=0.0, gamma_p=0.0, clahe_p=0.0)
    if name == "shortcut":
        return AugmentationConfig(
            border_mask_p=0.3, random_erasing_p=0.2, downscale_p=0.2, jpeg_p=0.3, blur_p=0.1, noise_p=0.2
        )
    if name == "pipeline-random":
        return replace(augmentation_config("shortcut-strong"), resample_p=0.7, sharpen_p=0.2, jpeg_p=0.7)
    if name == "shortcut-strong":
        return AugmentationConfig(
            scale_range=(0.95, 1.25),
            affine_p=0.8,
            brightness_limit=0.2,
            contrast_limit=0.2,
            brightness_contrast_p=0.7,
            gamma_limit=(65.0, 145.0),
            gamma_p=0.5,
            equalize_p=0.3,
            border_mask_p=0.5,
            border_mask_max_fraction=0.15,
            random_erasing_p=0.3,
            downscale_p=0.5,
            jpeg_p=0.5,
            jpeg_quality_range=(25, 95),
            blur_p=0.2,
            noise_p=0.3,
        )
    raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}")


def _border_mask_transform(max_fraction: float, p: float) -> Any:
    """An albumentations transform that blanks a strip along one or two random image borders."""
    import albumentations as A

    class BorderMask(A.ImageOnlyTransform):
        """Random border strips set to 0: hides corner text markers that identify a source."""

        class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
            max_fraction: float

        def __init__(self, max_fraction: float = 0.1, p: float = 0.5) -> None:
            super().__init__(p=p)
            self.max_fraction = max_fraction

        def get_params(self) -> dict[str, Any]:
            sides = self.py_random.sample(["top", "bottom", "left", "right"], self.py_random.choice([1, 2]))
            return {"strips": [(s, self.py_random.uniform(0.02, self.max_fraction)) for s in sides]}

        def apply(self, img: np.ndarray, strips: list[tuple[str, float]] = (), **params: Any) -> np.ndarray:
            img = img.copy()
            h, w = img.shape[:2]
            for side, frac in strips:
                k = max(1, int(round(frac * (h if side in ("top", "bottom") else w))))
                if side == "top":
                    img[:k] = 0
                elif side == "bottom":
                    img[-k:] = 0
                elif side == "left":
                    img[:, :k] = 0
                else:
                    img[:, -k:] = 0
            return img

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("max_fraction",)

    return BorderMask(max_fraction=max_fraction, p=p)


# (down, up) interpolation pairs of common resize-and-save pipelines (area/bilinear/bicubic/Lanczos);
# A.Downscale alone uses one fixed pair (nearest by default), which no archive uses.
_RESAMPLE_PAIRS = (("INTER_AREA", "INTER_LINEAR"), ("INTER_AREA", "INTER_CUBIC"), ("INTER_LINEAR", "INTER_LANCZOS4"),
                   ("INTER_CUBIC", "INTER_CUBIC"), ("INTER_LANCZOS4", "INTER_LINEAR"), ("INTER_AREA", "INTER_LANCZOS4"))


def _resample_transform(scale_range: tuple[float, float], p: float) -> Any:
    """One random resampling round trip: down by a factor in `scale_range`, back up, random filters."""
    import albumentations as A
    import cv2

    return A.OneOf(
        [
            A.Downscale(
                scale_range=scale_range,
                interpolation_pair={"downscale": getattr(cv2, down), "upscale": getattr(cv2, up)},
                p=1.0,
            )
            for down, up in _RESAMPLE_PAIRS
        ],
        p=p,
    )


def build_train_augmentation(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: AugmentationConfig | None = None,
    seed: int | None = None,
) -> Any:
    """The albumentations `Compose` behind `train_transform` (seeded: albumentations 2 `seed=`)."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    c = config or AugmentationConfig()
    steps: list[Any] = [
        A.Affine(
            rotate=(-c.rotate_limit, c.rotate_limit),
            translate_percent=(-c.shift_limit, c.shift_limit),
            scale=c.scale_range,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=c.affine_p,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=c.brightness_limit, contrast_limit=c.contrast_limit, p=c.brightness_contrast_p
        ),
        A.RandomGamma(gamma_limit=c.gamma_limit, p=c.gamma_p),
        A.CLAHE(clip_limit=c.clahe_clip_limit, p=c.clahe_p),
    ]
    optional: list[tuple[float, Callable[[], Any]]] = [
        (c.horizontal_flip_p, lambda: A.HorizontalFlip(p=c.horizontal_flip_p)),
        (c.equalize_p, lambda: A.Equalize(by_channels=False, p=c.equalize_p)),
        (c.border_mask_p, lambda: _border_mask_transform(c.border_mask_max_fraction, c.border_mask_p)),
        (
            c.random_erasing_p,
            lambda: A.CoarseDropout(
                num_holes_range=(1, 3),
                hole_height_range=(0.05, 0.15),
                hole_width_range=(0.05, 0.15),
                fill=0,
                p=c.random_erasing_p,
            ),
        ),
        (c.downscale_p, lambda: A.Downscale(scale_range=(0.5, 0.9), p=c.downscale_p)),
        (c.resample_p, lambda: _resample_transform(c.resample_scale_range, c.resample_p)),
        (c.sharpen_p, lambda: A.Sharpen(alpha=(0.1, 0.4), p=c.sharpen_p)),
        (c.jpeg_p, lambda: A.ImageCompression(quality_range=c.jpeg_quality_range, p=c.jpeg_p)),
        (c.blur_p, lambda: A.GaussianBlur(blur_limit=(3, 5), p=c.blur_p)),
        (c.noise_p, lambda: A.GaussNoise(std_range=(0.01, 0.05), per_channel=False, p=c.noise_p)),
    ]
    steps += [make() for prob, make in optional if prob > 0]
    steps += [
        # A no-op for cached S x S images; sizes anything else (e.g. raw files) consistently.
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]
    return A.Compose(steps, seed=seed)


def _as_rgb_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: AugmentationConfig | None = None,
    seed: int | None = None,
) -> Callable[[dict[str, list]], dict[str, list]]:
    """Callable for `Dataset.with_transform`: ``{"pixel_values": [float32 CHW], "labels": [int]}``.

    Small geometric + intensity changes that a radiograph plausibly has (positioning, exposure,
    processing): Affine (+-10 deg, ~6% shift, 0.9-1.1 scale), brightness/contrast, gamma, CLAHE;
    no flips (see `AugmentationConfig`). Normalisation uses the backbone's mean/std, as the
    processor does at evaluation.
    """
    import torch

    aug = build_train_augmentation(image_size, mean, std, config, seed)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        pixel_values = [aug(image=_as_rgb_array(im))["image"].to(torch.float32) for im in batch["image"]]
        return {"pixel_values": pixel_values, "labels": [int(x) for x in batch["label"]]}

    return transform


def eval_transform(processor: Any) -> Callable[[dict[str, list]], dict[str, list]]:
    """Callable for `Dataset.with_transform` using the model's image processor (no augmentation).

    The same `ViTImageProcessor` (PIL backend: `hfxray.modeling.make_processor` / ``backend="pil"``)
    is used by validation, evaluation and prediction, so they all see identical pixel values. The
    torchvision backend (transformers 5's default class) resizes with a different antialiasing
    kernel and differs from the cached image by a grey level on some pixels.
    """

    def transform(batch: dict[str, list]) -> dict[str, list]:
        images = [Image.fromarray(_as_rgb_array(im)) for im in batch["image"]]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].float()
        out: dict[str, list] = {"pixel_values": list(pixel_values)}
        if "label" in batch:
            out["labels"] = [int(x) for x in batch["label"]]
        return out

    return transform
