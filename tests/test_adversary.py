"""Source adversary (``--source_adversary``): the gradient reversal, the class-conditional mask, and that
training against it removes what tells sources apart while keeping what tells classes apart.

The removal is measured on a small network whose inputs carry the class and the source on separate
axes (so the answer is known); the hook and the loss run on the real EfficientNet-Lite0 and real
radiographs (``lite0``, ``films`` in conftest.py); the real training run is in
test_training_style_options.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfxray import adversary


def test_reversal_is_identity_forward_and_reversed_scaled_gradient_backward() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = adversary.reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.5))


def test_ramp_starts_at_zero_and_rises_towards_one() -> None:
    values = [adversary.ramp(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and 0.99 < values[-1] <= 1.0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert adversary.ramp(2.0) == values[-1]  # clipped, never beyond the paper's weight


def test_a_class_with_one_source_costs_and_teaches_nothing() -> None:
    table = adversary.source_table([0, 0, 1, 1], [0, 0, 1, 2], n_classes=2, n_sources=3)
    assert table.tolist() == [[True, False, False], [False, True, True]]
    adv = adversary.SourceAdversary(5, table, weight=1.0)
    feats = torch.randn(4, 5, requires_grad=True)
    adv.features = feats
    loss = adv.loss(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]), 1.0)
    loss.backward()
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert float(feats.grad.abs().max()) == 0.0
    adv.features = torch.randn(4, 5)  # class 1 has two sources: a real question
    assert float(adv.loss(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 2, 1, 2]), 1.0)) > 0.1


def test_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        adversary.SourceAdversary(5, np.ones((2, 2), dtype=bool), weight=0.0)


def test_hook_feeds_real_pooled_features_in_training_only(lite0, films) -> None:
    model, _ = lite0
    n = len(films)
    labels, sources = torch.tensor([0, 1] * (n // 2)), torch.tensor([0, 0, 1, 1] * (n // 4))
    adv, hooks = adversary.attach(model, adversary.source_table(labels, sources, 3, 2), weight=1.0)
    try:
        model.train()
        model(pixel_values=films)
        assert adv.features is not None and adv.features.shape == (n, 1280)
        loss = adv.loss(labels, sources, progress=0.5)
        loss.backward()
        assert float(loss) > 0
        stem = model.timm_model.conv_stem.weight  # the first layer: the reversed gradient reaches it
        assert stem.grad is not None and float(stem.grad.abs().sum()) > 0
        model.eval()
        with torch.no_grad():
            model(pixel_values=films)
        with pytest.raises(RuntimeError, match="no features captured"):
            adv.loss(labels, sources, progress=0.5)
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
