"""The saved image processor's own computation, without its per-call overhead.

Why not just call the processor: for one 1024 px film, ``ViTImageProcessor`` (PIL backend) takes
about 4.7 ms on a 2-core CPU - as long as the ONNX model itself - because it converts PIL -> numpy
-> PIL -> numpy, upcasts to float64 and validates on every call. :class:`FastProcessor` does the
same two steps once each: the processor's PIL resize of the image, then a 256-entry lookup
table per channel that the processor's *own* ``rescale`` and ``normalize`` filled in. Both steps
are exact (the table holds the processor's result for every possible uint8 value; those
operations are element-wise), so the output is bit-identical to the processor's; the tests check
that on real radiographs. The S x S resized image is also what the input gate measures, so one
resize serves the model and the gate.

Processors that do anything else (centre crops, shortest-edge resizes, padding, non-PIL backends)
get ``None`` from :meth:`FastProcessor.from_processor`, and callers use the processor itself.

:meth:`FastProcessor.from_config` builds the same object from ``preprocessor_config.json`` alone,
without importing transformers (about 1 s of import time on a 2-core CPU, and the reason a
one-film ``predict.py`` used to take seconds): the lean ONNX path reads the JSON, fills the table
with the arithmetic of transformers' NumPy ``rescale``/``normalize`` (float64 multiply, float32
subtract and divide), and the tests check that table equals the processor's, bit for bit.

:func:`square_resize` is the one resize of a film to the model's S x S input, used by the cache
decode of training data, :class:`FastProcessor` and the transformers processor
(:class:`hfxray.modeling.ChestFilmImageProcessor`) alike. With ``jpeg_quality`` set it also saves the
resized film as a JPEG once (the *archive format*: what the corpus's two large 224 px archives did to
their films), so that every film reaches the model with the same resize-and-save history and that
history cannot tell the model which archive, and so which class, a film came from (docs/loso.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

# preprocessor_config.json types that FastProcessor.from_config reproduces (transformers saves both
# ViT backends as "ViTImageProcessor"); defaults are ViTImageProcessor's.
_LEAN_PROCESSOR_TYPES = ("ViTImageProcessor", "ViTImageProcessorPil")
_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR


def _per_channel(value: float | Sequence[float]) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values in preprocessor_config.json, got {len(values)}")
    return values


def _jpeg_quality(value: Any) -> int | None:
    if value in (None, 0, False):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"jpeg_quality in preprocessor_config.json must be an integer 1-100, got {value!r}")
    return int(value)


def _get(processor: Any, key: str) -> Any:
    return getattr(processor, key, None)


def _square_size(processor: Any) -> int | None:
    size = processor.get("size") if isinstance(processor, dict) else _get(processor, "size")
    size = size if isinstance(size, dict) else (vars(size) if size is not None else {})
    height, width = size.get("height"), size.get("width")
    if not height or height != width or size.get("shortest_edge") or size.get("longest_edge"):
        return None
    return int(height)


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as a JPEG at ``quality`` and decoded again (Pillow defaults otherwise)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        out.load()
        return out.copy()


def square_resize(image: Image.Image, size: int, resample: int, jpeg_quality: int | None = None) -> Image.Image:
    """``image`` (mode L or RGB) squashed to ``size`` x ``size``; with ``jpeg_quality``, then JPEG-saved once.

    An image already ``size`` x ``size`` is returned as it is: it has been through a resize already
    (an archive copy, or this function), and taking it as it is makes the step idempotent, so a
    cached S x S film and the file it came from reach the model as the same pixels. A grey film stays
    one channel through the JPEG round trip (also when it arrives as RGB with equal channels), as a
    grey archive stores it; a colour image keeps its colour (the input gate reads it).
    """
    if image.size == (size, size):
        return image
    out = image.resize((size, size), resample=resample)
    if not jpeg_quality:
        return out
    if out.mode == "RGB":
        pixels = np.asarray(out)
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
            out = Image.fromarray(np.ascontiguousarray(pixels[..., 0]), mode="L")
    return _jpeg_round_trip(out, jpeg_quality)


class FastProcessor:
    """Resize to S x S with the processor's resampling filter, then table lookup to float32 CHW."""

    def __init__(self, size: int, resample: int, table: np.ndarray, jpeg_quality: int | None = None) -> None:
        self.size = size
        self.resample = resample
        self.table = table  # (3, 256) float32: the processor's value for each channel and uint8 level
        self.jpeg_quality = jpeg_quality or None  # the archive format's JPEG step (square_resize)

    @classmethod
    def from_processor(cls, processor: Any) -> FastProcessor | None:
        """An exact fast equivalent of ``processor``, or None when it does more than resize/rescale/normalize."""
        if not (callable(_get(processor, "rescale")) and callable(_get(processor, "normalize"))):
            return None
        if _get(processor, "do_center_crop") or _get(processor, "do_pad") or not _get(processor, "do_resize"):
            return None
        if type(processor).__name__.endswith("Fast"):  # torchvision backend: other resize kernels
            return None
        size = _square_size(processor)
        resample = _get(processor, "resample")
        if size is None or not isinstance(resample, int):
            return None
        # Channel-first (3, 1, 256) ramp through the processor's own element-wise steps.
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
        values: np.ndarray = levels
        if _get(processor, "do_rescale"):
            values = processor.rescale(values, processor.rescale_factor)
        if _get(processor, "do_normalize"):
            values = processor.normalize(values, processor.image_mean, processor.image_std)
        table = np.ascontiguousarray(values[:, 0, :], dtype=np.float32)
        # Only hfxray's processor applies jpeg_quality; transformers' own class loads the key and ignores it.
        ours = type(processor).__name__ == "ChestFilmImageProcessor"
        return cls(size, int(resample), table, _jpeg_quality(_get(processor, "jpeg_quality")) if ours else None)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FastProcessor | None:
        """The same object from a ``preprocessor_config.json`` dict, without transformers; None unless
        it is a ViT-style processor that only resizes to S x S, rescales and normalises (others need
        the real processor)."""
        if config.get("image_processor_type") not in _LEAN_PROCESSOR_TYPES:
            return None
        if any(config.get(key) for key in ("do_center_crop", "do_pad", "do_reduce_labels")):
            return None
        if not config.get("do_resize", True):
            return None
        size = _square_size({"size": config.get("size") or {"height": 224, "width": 224}})
        resample = config.get("resample", _BILINEAR)
        if size is None or not isinstance(resample, int):
            return None
        # transformers' rescale: uint8 -> float64, multiply, then float32 (image_transforms.rescale)
        values = np.broadcast_to(np.arange(256, dtype=np.float64), (3, 256))
        if config.get("do_rescale", True):
            values = (values * float(config.get("rescale_factor", 1 / 255))).astype(np.float32)
        else:
            values = values.astype(np.float32)
        # transformers' normalize: float32 (x - mean) / std with mean/std as float32 arrays
        if config.get("do_normalize", True):
            mean = np.asarray(_per_channel(config.get("image_mean", 0.5)), dtype=np.float32)[:, None]
            std = np.asarray(_per_channel(config.get("image_std", 0.5)), dtype=np.float32)[:, None]
            values = (values - mean) / std
        table = np.ascontiguousarray(values, dtype=np.float32)
        return cls(size, int(resample), table, _jpeg_quality(config.get("jpeg_quality")))

    def resize(self, image: Image.Image) -> Image.Image:
        """The processor's resize (:func:`square_resize`), as RGB: one PIL call, no reducing gap.

        A grey ("L") image is resized before it becomes RGB: Pillow resizes each channel alike, so
        the result is the same and a third of the work.
        """
        image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        return square_resize(image, self.size, self.resample, self.jpeg_quality).convert("RGB")

    def to_array(self, resized: Image.Image) -> np.ndarray:
        """(3, S, S) float32 from an image already :meth:`resize`-d."""
        pixels = np.asarray(resized)
        if pixels.shape != (self.size, self.size, 3):
            raise ValueError(f"expected a {self.size}x{self.size} RGB image, got {pixels.shape}")
        out = np.empty((3, self.size, self.size), dtype=np.float32)
        for c in range(3):  # np.take into the output: a third of the time of indexing and stacking
            np.take(self.table[c], pixels[..., c], out=out[c])
        return out

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3, S, S) float32, bit-identical to ``processor(images=..., return_tensors="np")``."""
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.to_array(self.resize(image))
        return out
