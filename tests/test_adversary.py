"""Source adversary (``--source_adversary``): the class-conditional mask, and that training against it
leaves the model's source head guessing while the class is kept (and, as documented, that this is not
erasure: a fresh probe still finds the source).

The effect is measured on a small network whose inputs carry the class and the source on separate
axes (so the answer is known); the hook and the loss run on the real EfficientNet-Lite0 and real
radiographs (``lite0``, ``films`` in conftest.py); the real training run is in
test_training_style_options.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from torch import nn

from hfxray import adversary


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
    loss.total.backward()
    assert float(loss.total.detach()) == pytest.approx(0.0, abs=1e-6)
    assert loss.head == pytest.approx(0.0, abs=1e-6)
    assert float(feats.grad.abs().max()) == 0.0 and float(adv.head.weight.grad.abs().max()) == 0.0
    adv.features = torch.randn(4, 5)  # class 1 has two sources: a real question
    assert adv.loss(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 2, 1, 2]), 1.0).head > 0.1


def test_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        adversary.SourceAdversary(5, np.ones((2, 2), dtype=bool), weight=0.0)


class _Toy(nn.Module):
    """A linear 'backbone' and a classifier, shaped like the models `hfxray.modeling` trains."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.classifier = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def _toy_data(n: int = 400) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Axis 0 carries the class, axis 1 the source (both sources in both classes), the rest noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    sources = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) * 0.3
    x[:, 0] += labels * 2.0
    x[:, 1] += sources * 2.0
    return x, labels, sources


def _train_toy(progress: float) -> tuple[float, float, float]:
    """Train the toy network with its source head; ``progress`` 0 = the head only (no confusion term).
    Returns (the head's final cross-entropy, class accuracy, a fresh probe's source accuracy)."""
    torch.manual_seed(0)
    x, labels, sources = _toy_data()
    model = _Toy()
    adv, hooks = adversary.attach(model, adversary.source_table(labels, sources, 2, 2), weight=1.0)
    opt = torch.optim.Adam([*model.parameters(), *adv.parameters()], lr=0.02)
    model.train()
    head_losses = []
    for _ in range(600):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        adv_loss = adv.loss(labels, sources, progress)
        (loss + adv_loss.total).backward()
        opt.step()
        head_losses.append(adv_loss.head)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        feats, accuracy = model.backbone(x), float((model(x).argmax(1) == labels).float().mean())
    inside = labels == 0  # within one class, as the head asks
    probe = LogisticRegression(max_iter=2000)
    fresh = float(cross_val_score(probe, feats[inside].numpy(), sources[inside].numpy(), cv=5).mean())
    return float(np.mean(head_losses[-100:])), accuracy, fresh


def test_training_against_the_head_leaves_it_guessing_and_keeps_the_class() -> None:
    read_loss, read_accuracy, _ = _train_toy(progress=0.0)
    confused_loss, confused_accuracy, fresh = _train_toy(progress=1.0)
    assert read_loss < 0.1  # without the confusion term the head reads the source off the features
    assert confused_loss > 0.6  # with it, near a guess between two sources (ln 2 = 0.69)
    assert read_accuracy > 0.95 and confused_accuracy > 0.95  # the class is kept
    assert fresh > 0.9  # not erasure: a fresh probe still finds it (stated in hfxray/adversary.py)


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
        loss.total.backward()
        assert loss.head > 0
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
