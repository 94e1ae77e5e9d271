"""RandConv (``--randconv``): in training, the films reach the model through a random convolution mixed
with the film; in eval mode nothing changes; the saved model is an ordinary model directory.

The hook is exercised on the real EfficientNet-Lite0 classifier and on real radiographs (``lite0`` and
``films`` in conftest.py); the real training run is in test_training_style_options.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfxray import randconv


def test_filter_changes_texture_keeps_grey_and_each_films_level(films) -> None:
    torch.manual_seed(0)
    hook = randconv.RandConvHook(p=1.0, kernel_sizes=(5,))
    out = hook.filter(films)
    assert out.shape == films.shape
    # Each channel keeps the film's own mean and spread (brightness is not what is randomised) ...
    assert torch.allclose(out.mean(dim=(2, 3)), films.mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3)), films.std(dim=(2, 3)), rtol=1e-3, atol=1e-4)
    # ... the pixels change ...
    assert float((out - films).abs().mean()) > 0.01

    # ... and a grey film stays grey: all channels are one image under the per-channel normalisation.
    def standardised(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)

    grey = standardised(out)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-3) and torch.allclose(grey[:, 0], grey[:, 2], atol=1e-3)


def test_hook_acts_in_training_only_and_removes_cleanly(lite0, films) -> None:
    model, _ = lite0
    model.eval()
    with torch.no_grad():
        before = model(pixel_values=films).logits
        handles = randconv.attach(model, p=1.0)
        hooked_eval = model(pixel_values=films).logits
        seen: list[torch.Tensor] = []
        probe = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"]), with_kwargs=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        torch.manual_seed(1)
        model(pixel_values=films)
        model.eval()
        model.load_state_dict(state)  # a training-mode pass moves BatchNorm's running statistics
        probe.remove()
        for handle in handles:
            handle.remove()
        after = model(pixel_values=films).logits
    assert torch.equal(before, hooked_eval)
    assert not torch.allclose(seen[-1], films)  # the model saw filtered films in training mode
    assert torch.allclose(before, after, atol=1e-6)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_probability_is_the_share_of_batches_filtered() -> None:
    torch.manual_seed(2)
    layer = torch.nn.Identity().train()
    x = torch.randn(4, 3, 8, 8)
    hook = randconv.RandConvHook(p=0.3)
    share = np.mean([hook(layer, (), {"pixel_values": x}) is not None for _ in range(400)])
    assert 0.22 < share < 0.38
    assert hook(layer.eval(), (), {"pixel_values": x}) is None
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0"):
        randconv.RandConvHook(p=0.0)
