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
"""

from __future__ import annotations

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


def _get(processor: Any, key: str) -> Any:
    return getattr(processor, key, None)


def _square_size(processor: Any) -> int | None:
    size = processor.get("size") if isinstance(processor, dict) else _get(processor, "size")
    size = size if isinstance(size, dict) else (vars(size) if size is not None else {})
    height, width = size.get("height"), size.get("width")
    if not height or height != width or size.get("shortest_edge") or size.get("longest_edge"):
        return None
    return int(height)


class FastProcessor:
    """Resize to S x S with the processor's resampling filter, then table lookup to float32 CHW."""

    def __init__(self, size: int, resample: int, table: np.ndarray) -> None:
        self.size = size
        self.resample = resample
        self.table = table  # (3, 256) float32: the processor's value for each channel and uint8 level

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
        return cls(size, int(resample), np.ascontiguousarray(values[:, 0, :], dtype=np.float32))

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
        return cls(size, int(resample), np.ascontiguousarray(values, dtype=np.float32))

    def resize(self, image: Image.Image) -> Image.Image:
        """The processor's resize: the whole RGB image to S x S in one PIL call (no reducing gap).

        A grey ("L") image is resized before it becomes RGB: Pillow resizes each channel alike, so
        the result is the same and a third of the work.
        """
        if image.mode == "L":
            return image.resize((self.size, self.size), resample=self.resample).convert("RGB")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return rgb.resize((self.size, self.size), resample=self.resample)

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
