"""MixStyle (``--mixstyle``): in training, each film's per-channel feature statistics become a mix of its
own and another film's; in eval mode nothing changes; the saved model is an ordinary model directory.

The hook is exercised on the real EfficientNet-Lite0 backbone and on real radiographs (``lite0`` and
``films`` in conftest.py); the real training run is in test_training_style_options.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfxray import mixstyle


def _first_stage_output(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the first hooked stage hands to the next one."""
    seen: list[torch.Tensor] = []
    handle = mixstyle.style_stages(model, 1)[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(pixel_values=pixels)
    handle.remove()
    return seen[-1]


def test_training_mixes_each_films_statistics_with_the_batchs(lite0, films) -> None:
    model, _ = lite0
    model.eval()
    plain = _first_stage_output(model, films)
    hook = mixstyle.MixStyleHook(p=1.0)
    stage = mixstyle.style_stages(model, 1)[0]
    stage.train()
    torch.manual_seed(0)
    mixed = hook(stage, (), plain.clone())
    stage.eval()
    assert mixed is not None and mixed.shape == plain.shape
    mu, mixed_mu = plain.mean(dim=(2, 3)), mixed.mean(dim=(2, 3))
    # Each film's new channel means lie between the batch's smallest and largest (a convex mix) ...
    assert bool((mixed_mu >= mu.min(0).values - 1e-4).all() and (mixed_mu <= mu.max(0).values + 1e-4).all())
    assert float((mixed_mu - mu).abs().max()) > 1e-3  # ... and moved for some film
    # ... while the film's own pattern (its normalised features) is kept.
    def normed(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    assert torch.allclose(normed(mixed), normed(plain), atol=1e-3)


def test_eval_mode_and_removed_hooks_change_nothing(lite0, films) -> None:
    model, _ = lite0
    model.eval()
    with torch.no_grad():
        before = model(pixel_values=films).logits
        handles = mixstyle.attach(model, p=1.0)
        assert len(handles) == mixstyle.DEFAULT_STAGES
        hooked_eval = model(pixel_values=films).logits
        stage = mixstyle.style_stages(model, 1)[0]
        stage.train()  # the first stage alone in train mode: its BatchNorm is frozen by eval() elsewhere
        for m in stage.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        torch.manual_seed(1)
        hooked_train = model(pixel_values=films).logits
        for handle in handles:
            handle.remove()
        removed_train = model(pixel_values=films).logits
        model.eval()
    assert torch.equal(before, hooked_eval)
    assert not torch.allclose(before, hooked_train, atol=1e-4)
    assert torch.allclose(before, removed_train, atol=1e-6)


def test_probability_is_the_share_of_batches_mixed() -> None:
    torch.manual_seed(2)
    layer = torch.nn.Identity().train()
    x = torch.randn(4, 3, 8, 8) * torch.arange(1, 5).view(4, 1, 1, 1)
    hook = mixstyle.MixStyleHook(p=0.3)
    share = np.mean([hook(layer, (), x) is not None for _ in range(400)])
    assert 0.22 < share < 0.38
    assert hook(layer.eval(), (), x) is None


def test_models_without_stages_and_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot find 3 early stages in Linear"):
        mixstyle.style_stages(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0"):
        mixstyle.MixStyleHook(p=0.0)
