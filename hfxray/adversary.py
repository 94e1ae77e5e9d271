"""Source adversary: make the film's features say nothing about its source *within its class*.

Why: in the shared data each source holds one class (docs/confounding.md), so whatever marks a
source (its archive's processing, resize history, scanner, the patients' age) is a cue to the class,
and a model that learned it calls a new hospital's films by how they look, not by the lungs
(docs/loso.md). Domain-adversarial training (Ganin et al., JMLR 2016) adds a small head that tries to
tell the source from the backbone's pooled features and reverses its gradient into the backbone, so
the backbone learns features the head cannot use. It is *class-conditional* (one source head per
class, as in confounder-free training, Zhao et al., Nature Communications 2020): the head only tells
sources apart inside one class (adult from children's normals, the 224 px archive copies from larger
films), so the class itself, which differs between sources too, is not what gets removed.

It acts in the all-layer phase only (with the backbone frozen there is nothing to remove) and is not
part of the saved model: the head lives beside the model, its loss is added by the Trainer, and the
hook that reads the pooled features is removed before calibration and saving.

Written here because none of the libraries hfxray builds on ships a gradient-reversal layer; it is an
autograd function of four lines and one linear layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hfxray import modeling

DANN_GAMMA = 10.0  # the paper's schedule: weight x (2 / (1 + exp(-10 p)) - 1), p = progress 0..1


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; the gradient flowing back through it is reversed and scaled."""
    return _ReverseGradient.apply(x, scale)


def ramp(progress: float) -> float:
    """The DANN schedule from 0 (start of the phase) towards 1: the adversary starts gently."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-DANN_GAMMA * p)) - 1.0


def source_table(labels: Sequence[int], sources: Sequence[int], n_classes: int, n_sources: int) -> np.ndarray:
    """``table[c, s]`` is True where class ``c`` has films of source ``s`` in the training split."""
    table = np.zeros((n_classes, n_sources), dtype=bool)
    table[np.asarray(labels, dtype=int), np.asarray(sources, dtype=int)] = True
    return table


class SourceAdversary(nn.Module):
    """One linear source classifier per class over the pooled features, behind a gradient reversal.

    ``table`` (classes x sources, from `source_table`) masks the sources a class does not have, so a
    class with one source costs nothing and teaches nothing.
    """

    def __init__(self, n_features: int, table: np.ndarray, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"source adversary weight must be > 0, got {weight}")
        self.n_classes, self.n_sources = table.shape
        self.weight = weight
        self.head = nn.Linear(n_features, self.n_classes * self.n_sources)
        self.register_buffer("allowed", torch.as_tensor(table, dtype=torch.bool))
        self.features: torch.Tensor | None = None  # the classifier's input of the last forward pass

    def capture(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the classifier: keep its input (the pooled features)."""
        self.features = args[0] if module.training else None

    def loss(self, labels: torch.Tensor, sources: torch.Tensor, progress: float) -> torch.Tensor:
        """Cross-entropy of the film's source among its class's sources, through the reversal."""
        if self.features is None:
            raise RuntimeError(
                "source adversary: no features captured (is the hook attached, the model training?)"
            )
        feats = reverse_gradient(self.features.flatten(1), self.weight * ramp(progress))
        logits = self.head(feats).view(-1, self.n_classes, self.n_sources)
        logits = logits[torch.arange(len(labels), device=logits.device), labels]
        logits = logits.masked_fill(~self.allowed[labels], torch.finfo(logits.dtype).min)
        self.features = None
        return F.cross_entropy(logits, sources)


def attach(model: nn.Module, table: np.ndarray, weight: float) -> tuple[SourceAdversary, list]:
    """A source adversary sized to the model's classifier, and the hook handle that feeds it."""
    classifier = modeling.classifier_module(model)
    adversary = SourceAdversary(classifier.in_features, table, weight)
    return adversary, [classifier.register_forward_pre_hook(adversary.capture)]


def with_source_index(transform, index: dict[str, int]):
    """Wrap a `Dataset.with_transform` callable so each film also carries its source's index."""

    def wrapped(batch: dict[str, list]) -> dict[str, list]:
        out = transform(batch)
        out["sources"] = [index[s] for s in batch["source"]]
        return out

    return wrapped


def for_training(
    model: nn.Module, train_split, transform, weight: float
) -> tuple[SourceAdversary, object, list]:
    """Everything the all-layer phase needs: the adversary, the training split whose films carry their
    source index, and the hook handles to remove afterwards.

    Under several processes each keeps its own adversary head (its gradient is not all-reduced): each
    is still a source classifier on that process's films, which is all the reversal needs.
    """
    names = sorted(set(train_split["source"]))
    index = {name: i for i, name in enumerate(names)}
    labels = train_split["label"]
    table = source_table(
        labels,
        [index[s] for s in train_split["source"]],
        len(train_split.features["label"].names),
        len(names),
    )
    adv, hooks = attach(model, table, weight)
    return adv, train_split.with_transform(with_source_index(transform, index)), hooks
