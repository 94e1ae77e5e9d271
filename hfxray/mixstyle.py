"""MixStyle: mix the feature statistics of films in a batch during training (domain generalisation).

Why: on films from a source it never saw, the model's answer follows how that source's films *look*
(brightness, contrast, grain, the software that saved them) as much as the lungs (docs/loso.md). In a
CNN's early layers, each channel's mean and standard deviation over the image carry that "style";
MixStyle (Zhou et al., ICLR 2021) replaces them, with probability ``p``, by a random convex mix of the
film's own and another film's statistics in the same batch, so no class can be recognised by a
source's style alone. It acts only in training (a no-op in eval mode) and adds no weights: the saved
model is an ordinary ``save_pretrained`` directory and inference is unchanged.

Written here because none of the libraries hfxray builds on (timm, torchvision, transformers) ships it;
it is a forward hook of a few lines on the backbone's first stages, removed before the model is saved.
"""

from __future__ import annotations

import torch
from torch import nn

from hfxray.modeling import backbone_stages

DEFAULT_ALPHA = 0.1  # Beta(0.1, 0.1): mostly near 0 or 1, the paper's choice (not tuned here)
DEFAULT_STAGES = 3  # after the first three stages, as the paper does for ResNet (res1-res3)


class MixStyleHook:
    """Forward hook: with probability ``p`` per batch, mix each film's per-channel feature mean and
    standard deviation with those of a random other film of the batch."""

    def __init__(self, p: float, alpha: float = DEFAULT_ALPHA, eps: float = 1e-6) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"MixStyle probability must be in (0, 1], got {p}")
        self.p, self.eps = p, eps
        self.beta = torch.distributions.Beta(alpha, alpha)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or output.dim() != 4 or output.size(0) < 2 or torch.rand(()) > self.p:
            return None  # None keeps the module's own output
        b = output.size(0)
        mu = output.mean(dim=(2, 3), keepdim=True)
        sig = (output.var(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()  # the statistics are mixed, not learned through
        normed = (output - mu) / sig
        lam = self.beta.sample((b, 1, 1, 1)).to(output.device, output.dtype)
        perm = torch.randperm(b, device=output.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return normed * sig_mix + mu_mix


def style_stages(model: nn.Module, n_stages: int = DEFAULT_STAGES) -> list[nn.Module]:
    """The backbone's first ``n_stages`` stages (`hfxray.modeling.backbone_stages`)."""
    stages = backbone_stages(model)[1]
    if len(stages) <= n_stages:
        raise ValueError(f"MixStyle: cannot find {n_stages} early stages in {type(model).__name__}")
    return stages[:n_stages]


def attach(model: nn.Module, p: float, alpha: float = DEFAULT_ALPHA, n_stages: int = DEFAULT_STAGES) -> list:
    """Hook MixStyle onto the model's early stages; returns the handles (call ``.remove()`` on each)."""
    hook = MixStyleHook(p, alpha)
    return [stage.register_forward_hook(hook) for stage in style_stages(model, n_stages)]
