"""RandConv: filter the training films through a random convolution (domain generalisation).

Why: on films from a hospital it never saw, the model's answer follows each archive's texture (grain,
sharpening, the software that processed and saved the film) as much as the lungs (docs/loso.md).
RandConv (Xu et al., ICLR 2021) passes the input, with probability ``p`` per batch, through a
convolution with random weights (kernel size drawn from 1, 3, 5, 7) and mixes the result with the film
by a random share: local texture and contrast become random while the shapes stay where they are, so a
class cannot be recognised by an archive's texture alone. Training only (a no-op in eval mode), no
weights added: the saved model is an ordinary ``save_pretrained`` directory and inference is unchanged.

Two choices differ from the paper, both because the inputs are grey radiographs: one kernel is applied
to the film's grey level and written to all three channels (the paper draws colour kernels; a colour
cast is not a way chest films differ, and a filtered film comes out grey), and each channel is brought
back to the film's own mean and standard deviation, so the random filter changes texture and not the
overall brightness the backbone's BatchNorm expects.

Written here because none of the libraries hfxray builds on (timm, torchvision, transformers,
albumentations) ships it; it is a forward pre-hook on the model, removed before the model is saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_SIZES = (1, 3, 5, 7)  # the paper's multi-scale choice (not tuned here)


class RandConvHook:
    """Forward pre-hook on the classifier: with probability ``p`` per batch, replace ``pixel_values`` by
    a random mix of the films and a random convolution of them."""

    def __init__(self, p: float, kernel_sizes: tuple[int, ...] = KERNEL_SIZES, eps: float = 1e-5) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"RandConv probability must be in (0, 1], got {p}")
        self.p, self.kernel_sizes, self.eps = p, kernel_sizes, eps

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """One random filter for the batch; each film's mixing share drawn from U(0, 1)."""
        k = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
        mu, sd = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
        grey = ((x - mu) / (sd + self.eps)).mean(dim=1, keepdim=True)  # the film's grey level, standardised
        # Kaiming-normal scale over the kernel's inputs, as in the paper.
        weight = torch.randn(1, 1, k, k, device=x.device, dtype=x.dtype) / k
        share = torch.rand(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype)
        mixed = share * grey + (1 - share) * F.conv2d(grey, weight, padding=k // 2)
        m_mu, m_sd = mixed.mean(dim=(2, 3), keepdim=True), mixed.std(dim=(2, 3), keepdim=True)
        out = (mixed - m_mu) / (m_sd + self.eps) * sd + mu  # broadcast: every channel at its own level
        return out.contiguous(memory_format=torch.channels_last)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        pixels = kwargs.get("pixel_values")
        if not module.training or pixels is None or pixels.dim() != 4 or torch.rand(()) > self.p:
            return None  # None keeps the call as it was
        with torch.no_grad():  # the filter is an augmentation, nothing is learned through it
            kwargs = dict(kwargs, pixel_values=self.filter(pixels))
        return args, kwargs


def attach(model: nn.Module, p: float) -> list:
    """Hook RandConv onto the model's input; returns the handles (call ``.remove()`` on each)."""
    return [model.register_forward_pre_hook(RandConvHook(p), with_kwargs=True)]
