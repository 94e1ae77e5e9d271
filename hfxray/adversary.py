"""Source adversary: make the film's features say nothing about its source *within its class*.

Why: in the shared data each source holds one class (docs/confounding.md), so whatever marks a
source (its archive's processing, resize history, scanner, the patients' age) is a cue to the class,
and a model that learned it calls a new hospital's films by how they look, not by the lungs
(docs/loso.md). A small head tries to tell the source from the backbone's pooled features, and the
backbone is trained to leave it guessing: the *confusion loss* of Tzeng et al. (ICCV 2015), used by
Alvi et al. ("Turning a blind eye", ECCV workshops 2018) to remove age and other confounders. The
head learns on detached features (cross-entropy to the true source); the backbone gets the
cross-entropy between the head's answer and a uniform guess, through the head's weights held fixed.

It is *class-conditional* (one source head per class, as in confounder-free training, Zhao et al.,
Nature Communications 2020): sources are only told apart inside one class (adult from children's
normals, 224 px archive copies from larger films), so the class itself, which differs between sources
too, is not what the backbone is asked to hide.

Not a gradient-reversal layer (Ganin et al., 2016): measured on a small network whose inputs carry
the source on one axis (tests/test_adversary.py), the reversed gradient vanishes once the head is
confident and the head keeps reading the source; the confusion loss does not saturate. Neither
*erases* the source: a fresh linear probe of the trained toy features still finds it (0.99), as
Elazar and Goldberg (EMNLP 2018) found for adversarial removal in text. What it does is keep the
model's own head from being able to rely on it, which is what the leave-one-source-out table tests.

It acts in the all-layer phase only (with the backbone frozen there is nothing to change) and is not
part of the saved model: the head lives beside the model, its loss is added by the Trainer, and the
hook that reads the pooled features is removed before calibration and saving.

Written here because none of the libraries hfxray builds on ships it: one linear layer and two
cross-entropies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hfxray import modeling

RAMP_GAMMA = 10.0  # Ganin et al.'s schedule: weight x (2 / (1 + exp(-10 p)) - 1), p = progress 0..1


def ramp(progress: float) -> float:
    """From 0 (start of the phase) towards 1: the backbone is pushed only once the head has learned."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-RAMP_GAMMA * p)) - 1.0


def source_table(labels: Sequence[int], sources: Sequence[int], n_classes: int, n_sources: int) -> np.ndarray:
    """``table[c, s]`` is True where class ``c`` has films of source ``s`` in the training split."""
    table = np.zeros((n_classes, n_sources), dtype=bool)
    table[np.asarray(labels, dtype=int), np.asarray(sources, dtype=int)] = True
    return table


class AdversaryLoss(NamedTuple):
    total: torch.Tensor  # what the Trainer adds to the model's loss
    head: float  # the head's own cross-entropy: near ln(sources of a class) = it is left guessing


class SourceAdversary(nn.Module):
    """One linear source classifier per class over the pooled features, and the confusion loss.

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

    def _log_probs(self, feats: torch.Tensor, labels: torch.Tensor, frozen: bool) -> torch.Tensor:
        """Log-probabilities of each film's source among its own class's sources."""
        weight, bias = self.head.weight, self.head.bias
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        logits = F.linear(feats, weight, bias).view(-1, self.n_classes, self.n_sources)
        logits = logits[torch.arange(len(labels), device=logits.device), labels]
        return logits.masked_fill(~self.allowed[labels], -torch.inf).log_softmax(dim=1)

    def loss(self, labels: torch.Tensor, sources: torch.Tensor, progress: float) -> AdversaryLoss:
        """The head's cross-entropy (on detached features) plus, for the backbone, the weighted
        cross-entropy between the head's answer and a uniform guess over the class's sources."""
        if self.features is None:
            raise RuntimeError(
                "source adversary: no features captured (is the hook attached, the model training?)"
            )
        feats, self.features = self.features.flatten(1), None
        head_loss = F.nll_loss(self._log_probs(feats.detach(), labels, frozen=False), sources)
        log_p = self._log_probs(feats, labels, frozen=True)
        allowed = self.allowed[labels]
        uniform_ce = -(log_p.masked_fill(~allowed, 0.0).sum(dim=1) / allowed.sum(dim=1)).mean()
        total = head_loss + self.weight * ramp(progress) * uniform_ce
        return AdversaryLoss(total, float(head_loss.detach()))


def attach(model: nn.Module, table: np.ndarray, weight: float) -> tuple[SourceAdversary, list]:
    """A source adversary sized to the model's classifier, and the hook handle that feeds it."""
    classifier = modeling.classifier_module(model)
    adversary = SourceAdversary(classifier.in_features, table, weight)
    return adversary, [classifier.register_forward_pre_hook(adversary.capture)]


BatchTransform = Callable[[dict[str, list]], dict[str, list]]  # a `Dataset.with_transform` callable


def with_source_index(transform: BatchTransform, index: dict[str, int]) -> BatchTransform:
    """Wrap a `Dataset.with_transform` callable so each film also carries its source's index."""

    def wrapped(batch: dict[str, list]) -> dict[str, list]:
        out = transform(batch)
        out["sources"] = [index[s] for s in batch["source"]]
        return out

    return wrapped


def for_training(
    model: nn.Module, train_split: Any, transform: BatchTransform, weight: float
) -> tuple[SourceAdversary, Any, list]:
    """Everything the all-layer phase needs: the adversary, the training split whose films carry their
    source index, and the hook handles to remove afterwards.

    Under several processes each keeps its own adversary head (its gradient is not all-reduced): each
    is still a source classifier on that process's films, which is all the confusion loss needs.
    """
    sources = train_split["source"]
    index = {name: i for i, name in enumerate(sorted(set(sources)))}
    n_classes = len(train_split.features["label"].names)
    table = source_table(train_split["label"], [index[s] for s in sources], n_classes, len(index))
    adv, hooks = attach(model, table, weight)
    return adv, train_split.with_transform(with_source_index(transform, index)), hooks
