"""Export a saved model directory to ONNX (``model.onnx`` beside the weights) and verify it.

The graph takes ``pixel_values`` (batch, 3, S, S) float32 - exactly what the saved image processor
produces - and returns ``logits`` (batch, C) and the penultimate ``features`` (batch, D) for the
input gate, so ONNX Runtime and PyTorch share one preprocessing.
The file is only put in place after ONNX Runtime has reproduced PyTorch's probabilities on the
verification images, and it records the sha256 of the weights it came from so that
:class:`hfxray.inference.Predictor` can refuse a stale export.

Exporter choice: torch 2.14 defaults to the ``torch.export``-based (dynamo) exporter, which needs the
extra ``onnxscript`` package; the TorchScript exporter (``dynamo=False``) handles these CNNs fully
with the dependencies we already ship, so it is used.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from hfxray import __version__
from hfxray.images import file_sha256
from hfxray.inference import (
    ONNX_FILENAME,
    ONNX_WEIGHTS_SHA_KEY,
    WEIGHTS_FILENAME,
    processor_image_size,
    read_model_metadata,
    softmax,
)
from hfxray.modeling import classifier_module, load_model

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
# metadata_props keys written into model.onnx
ONNX_MAX_DIFF_KEY = "hfxray_verify_max_abs_prob_diff"
ONNX_N_VERIFY_KEY = "hfxray_verify_n_images"


class OnnxVerificationError(RuntimeError):
    """ONNX Runtime's probabilities differ from PyTorch's by more than the tolerance."""


def _synthetic_images(image_size: int, n: int = 2) -> list[Image.Image]:
    """Deterministic non-constant images, used when no real radiographs are given for verification."""
    rng = np.random.default_rng(0)
    side = 2 * image_size
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    out = []
    for _ in range(n):
        gray = 0.5 * ramp[None, :] + 0.5 * ramp[:, None] + rng.normal(0, 20, (side, side))
        arr = np.clip(gray, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, mode="L").convert("RGB"))
    return out


def _ort_session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def max_prob_difference(session, model, pixel_values: np.ndarray, batch_size: int = 8) -> float:
    """Max |p_onnx - p_torch| over all images and classes (probabilities, not logits: what users see)."""
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for start in range(0, len(pixel_values), batch_size):
        batch = np.ascontiguousarray(pixel_values[start : start + batch_size], dtype=np.float32)
        ort_logits = session.run(["logits"], {input_name: batch})[0]
        with torch.inference_mode():
            torch_logits = model(pixel_values=torch.from_numpy(batch)).logits.float().numpy()
        worst = max(worst, float(np.abs(softmax(ort_logits) - softmax(torch_logits)).max()))
    return worst


class _LogitsAndFeatures(torch.nn.Module):
    """Plain tensors out: ``logits`` and the penultimate ``features`` (the classifier's input, which the
    input gate measures), both from the one forward pass."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.head = classifier_module(inner)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].flatten(1)))
        try:
            logits = self.inner(pixel_values=pixel_values).logits
        finally:
            handle.remove()
        return logits, captured[-1]


def _with_static_padding(model: torch.nn.Module, image_size: int) -> torch.nn.Module:
    """A copy of ``model`` whose TensorFlow-style 'SAME' convolutions pad by constants.

    timm's ``tf_*`` backbones compute the padding of each strided convolution from the input shape
    at run time (``Conv2dSame``); traced, that becomes Shape/Ceil/Pad nodes that ONNX Runtime can
    neither fold into the convolution nor keep in its blocked (NCHWc) layout, and the Pads plus the
    layout conversions around them cost about a third of the run time. The graph's input size is
    fixed (S x S), so each padding is a constant: timm's own ``Conv2dSameExport`` computes it on
    the first call, after which the exported Pad has constant pads and is fused into the Conv.
    """
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    model = copy.deepcopy(model)
    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is Conv2dSame:
            static = Conv2dSameExport(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
            )
            static.load_state_dict(module.state_dict())
            model.set_submodule(name, static)
            swapped += 1
    if swapped:
        with torch.inference_mode():  # fixes every padding for the S x S input
            model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    return model.eval()


def export_onnx(
    model_dir: str | os.PathLike,
    *,
    opset: int = 17,
    verify_images: Sequence[Image.Image] | None = None,
    atol: float = DEFAULT_ATOL,
) -> Path:
    """Write ``model_dir/model.onnx`` (dynamic batch axis) and return its path.

    Verified before it replaces anything: ONNX Runtime vs PyTorch probabilities on ``verify_images``
    (synthetic images when None) must agree within ``atol``, else :class:`OnnxVerificationError` is
    raised and any existing ``model.onnx`` is left untouched. The measured difference is logged and
    stored in the file's metadata (see :func:`onnx_metadata`).
    """
    model_dir = Path(model_dir)
    model, processor = load_model(model_dir)
    model.eval()
    image_size = read_model_metadata(model_dir).get("image_size") or processor_image_size(processor)
    images = list(verify_images) if verify_images else _synthetic_images(image_size)
    pixel_values = np.asarray(
        processor(images=[im.convert("RGB") for im in images], return_tensors="np")["pixel_values"],
        dtype=np.float32,
    )
    # Trace with batch 2 so nothing batch-size-specific is baked in as a constant.
    dummy = torch.from_numpy(np.ascontiguousarray(pixel_values[:1].repeat(2, axis=0)))

    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".onnx-export-") as tmp:
        traced_path = Path(tmp) / ONNX_FILENAME
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # the TorchScript exporter notice; see module doc
            torch.onnx.export(
                _LogitsAndFeatures(_with_static_padding(model, image_size)).eval(),
                (dummy,),
                str(traced_path),
                dynamo=False,
                input_names=["pixel_values"],
                output_names=["logits", "features"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        proto = onnx.load(str(traced_path))
        onnx.checker.check_model(proto)

        diff = max_prob_difference(_ort_session(proto.SerializeToString()), model, pixel_values)
        logger.info("ONNX vs PyTorch max |dprob| = %.3g on %d images", diff, len(images))
        if not diff <= atol:  # also catches NaN
            raise OnnxVerificationError(
                f"ONNX Runtime and PyTorch probabilities differ by {diff:.3g} (> {atol:g}); "
                f"{model_dir / ONNX_FILENAME} not written"
            )

        metadata = {
            ONNX_WEIGHTS_SHA_KEY: file_sha256(model_dir / WEIGHTS_FILENAME),
            ONNX_MAX_DIFF_KEY: f"{diff:.6g}",
            ONNX_N_VERIFY_KEY: str(len(images)),
            "hfxray_version": __version__,
        }
        onnx.helper.set_model_props(proto, metadata)
        staged = Path(tmp) / "staged.onnx"
        onnx.save(proto, str(staged))
        final = model_dir / ONNX_FILENAME
        os.replace(staged, final)  # atomic on one filesystem: readers see the old file or the new one
    return final


def onnx_metadata(onnx_path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights sha256, verification result, version)."""
    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
