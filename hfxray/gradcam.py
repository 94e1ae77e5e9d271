"""Grad-CAM heatmaps: where in the film the model's evidence for a class sits.

Built on the maintained `pytorch-grad-cam` package (PyPI `grad-cam`), whose only extra
dependency here is `ttach` (OpenCV, SciPy and scikit-learn already come with albumentations and
scikit-learn). This module adds what that package leaves to the caller for Hugging Face models:
picking the last convolutional feature map of a `TimmWrapper` or a transformers CNN, unwrapping
`ImageClassifierOutput` to logits, collecting the probabilities and penultimate features of the
*same* forward pass (so the Space needs one forward/backward per image, not three), the colour
overlay and the "how much of the heat sits on the lungs" measure used by the shortcut audit.

Thread safety: Grad-CAM registers hooks on the model's modules for the duration of a call, so two
concurrent calls on one model would see each other's activations. Callers that share a model
between threads (the Space) serialise `explain`/`grad_cam` with a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from hfxray.modeling import classifier_module

# (x0, y0, x1, y1) as fractions of width/height: a generous box around both lung fields of a
# frontal film, leaving out the borders where text markers, rulers and the collimation edge sit.
DEFAULT_LUNG_BOX: tuple[float, float, float, float] = (0.15, 0.10, 0.85, 0.90)


@dataclass
class CamOutput:
    """One forward/backward pass: heatmaps plus what the same pass computed on the way."""

    cams: np.ndarray  # (N, H, W) float32 in [0, 1], H x W = the model input size
    logits: np.ndarray  # (N, C)
    probs: np.ndarray  # (N, C) softmax of the logits
    features: np.ndarray  # (N, D) penultimate (pre-classifier) features
    target_classes: list[int]


class _LogitsOnly(torch.nn.Module):
    """pytorch-grad-cam expects `model(x) -> logits`; HF models return an output object."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.logits if hasattr(out, "logits") else out


def find_target_layer(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.nn.Module:
    """The module producing the last spatial (N, C, h, w) feature map before global pooling.

    Found by one probing forward pass rather than by architecture name, so it works for timm
    backbones (e.g. EfficientNet's `bn2` after `conv_head`) and transformers CNNs (ResNet's last
    stage) alike. Forward hooks fire when a module *finishes*, so the last 4-D output with h, w > 1
    is the deepest feature map; pooling layers (h = w = 1) are excluded.
    """
    root = model.timm_model if hasattr(model, "timm_model") else model
    seen: list[torch.nn.Module] = []

    def hook(module, _inputs, output):
        if (
            isinstance(output, torch.Tensor)
            and output.ndim == 4
            and output.shape[-1] > 1
            and output.shape[-2] > 1
        ):
            seen.append(module)

    handles = [m.register_forward_hook(hook) for m in root.modules() if m is not root]
    try:
        with torch.no_grad():
            model(pixel_values=_as_batch(pixel_values)[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} has no spatial feature map; Grad-CAM needs a CNN")
    return seen[-1]


def _as_batch(pixel_values: torch.Tensor) -> torch.Tensor:
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (3, H, W) or (N, 3, H, W), got {tuple(pixel_values.shape)}")
    return pixel_values


def explain(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    target_class: int | Sequence[int] | None = None,
    layer: torch.nn.Module | None = None,
) -> CamOutput:
    """Grad-CAM for each image plus the probabilities and features of the same pass.

    `target_class` None explains the predicted class of each image.
    """
    pixel_values = _as_batch(pixel_values).detach().to(next(model.parameters()).dtype)
    n = pixel_values.shape[0]
    if layer is None:
        layer = find_target_layer(model, pixel_values)
    num_labels = int(getattr(model.config, "num_labels", 0)) or None
    if target_class is None:
        targets = None
    else:
        classes = [int(target_class)] * n if isinstance(target_class, int) else [int(c) for c in target_class]
        if len(classes) != n or (num_labels and any(not 0 <= c < num_labels for c in classes)):
            raise ValueError(f"target_class {target_class!r} does not fit {n} images x {num_labels} classes")
        targets = [ClassifierOutputTarget(c) for c in classes]

    captured: list[torch.Tensor] = []
    feat_handle = classifier_module(model).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0].detach().flatten(1))
    )
    # Grad-CAM needs d(logit)/d(feature map) only, so the autograd graph starts at the target
    # layer's output: no gradients flow into the backbone (a fraction of a full backward pass),
    # and it works the same whether or not the caller froze the weights.
    cut_handle = layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    try:
        with torch.enable_grad(), GradCAM(model=_LogitsOnly(model), target_layers=[layer]) as cam:
            cams = cam(input_tensor=pixel_values, targets=targets)
            logits = cam.outputs.detach()
    finally:
        cut_handle.remove()
        feat_handle.remove()
        model.zero_grad(set_to_none=True)  # don't keep weight gradients alive between requests
    if cams is None:  # pytorch-grad-cam swallows IndexError in __exit__
        raise RuntimeError("Grad-CAM failed for this model")
    probs = torch.softmax(logits.float(), dim=-1).numpy()
    chosen = [int(c) for c in probs.argmax(-1)] if target_class is None else classes
    return CamOutput(
        cams=np.clip(np.asarray(cams, dtype=np.float32), 0.0, 1.0),
        logits=logits.float().numpy(),
        probs=probs,
        features=captured[-1].float().numpy() if captured else np.empty((n, 0), np.float32),
        target_classes=chosen,
    )


def grad_cam(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    target_class: int | None = None,
    layer: torch.nn.Module | None = None,
) -> np.ndarray:
    """Grad-CAM heatmap in [0, 1] at the model's input size: HxW for one image, NxHxW for a batch.

    Hooks the last convolutional feature map (see `find_target_layer`) unless `layer` is given;
    `target_class` None explains the predicted class.
    """
    batched = pixel_values.ndim == 4 and pixel_values.shape[0] > 1
    cams = explain(model, pixel_values, target_class=target_class, layer=layer).cams
    return cams if batched else cams[0]


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> Image.Image:
    """The image with the heatmap blended on top, at the image's own size (RGB).

    Uses a matplotlib colormap object directly (no pyplot: no global figure state, thread safe).
    """
    import matplotlib  # local: only the Space and reports draw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    heat = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F").resize(base.size, Image.BILINEAR)
    heat_arr = np.clip(np.asarray(heat), 0.0, 1.0)
    rgb = (matplotlib.colormaps[colormap](heat_arr)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(rgb, mode="RGB"), alpha)


def central_mass(cam: np.ndarray, lung_box: tuple[float, float, float, float] = DEFAULT_LUNG_BOX) -> float:
    """Share of the heatmap's total mass inside the central lung box (fractions x0, y0, x1, y1).

    A model that reads the lungs puts most of its heat inside; one that reads corner text markers
    or the film border (a source shortcut) does not. An all-zero map returns 0.0.
    """
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0.0, None)
    if cam.ndim != 2:
        raise ValueError(f"cam must be 2-D, got shape {cam.shape}")
    x0, y0, x1, y1 = lung_box
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"lung_box must be fractions with x0 < x1 and y0 < y1, got {lung_box}")
    total = float(cam.sum())
    if total <= 0.0:
        return 0.0
    h, w = cam.shape
    inside = cam[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)].sum()
    return float(inside / total)
