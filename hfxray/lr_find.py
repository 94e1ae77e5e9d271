"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates"; the fastai `lr_find` recipe).

Hand-written because the maintained implementations either belong to another training framework
(fastai, Lightning) or wrap the model in their own loop (torch-lr-finder) in ways that do not fit
an HF `PreTrainedModel` returning a `ModelOutput`; the method itself is 40 lines.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LRFindResult:
    """Losses seen while the learning rate grew exponentially, and the rate chosen from them."""

    lrs: list[float]
    losses: list[float]
    suggested_lr: float
    method: str


def lr_range_test(
    model: torch.nn.Module,
    batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
    *,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_steps: int = 40,
    weight_decay: float = 0.01,
    diverge_factor: float = 4.0,
) -> LRFindResult:
    """Train for `num_steps` with an exponentially growing rate and pick one from the loss curve.

    The model's weights are restored afterwards, so the test leaves no trace. The suggestion is the
    steepest-descent point of the smoothed curve, capped at a tenth of the rate with the lowest loss
    (the two fastai heuristics; the cap stops a noisy curve from suggesting a rate at the edge of
    divergence).
    """
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=start_lr, weight_decay=weight_decay)
    gamma = (end_lr / start_lr) ** (1.0 / max(num_steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed, best = 0.0, math.inf
    model.train()
    step = 0
    try:
        while step < num_steps:
            progressed = False
            for batch in batches():
                progressed = True
                lr = start_lr * gamma**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                smoothed = 0.7 * smoothed + 0.3 * value if step else value
                lrs.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if step >= num_steps or not math.isfinite(value) or smoothed > diverge_factor * best:
                    step = num_steps
                    break
            if not progressed:
                raise ValueError("the learning-rate range test got no training batches")
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return LRFindResult(lrs=lrs, losses=losses, **_suggest(lrs, losses))


def _suggest(lrs: list[float], losses: list[float]) -> dict[str, float | str]:
    if len(lrs) < 5:
        return {"suggested_lr": 1e-3, "method": "fallback 1e-3 (too few steps for a range test)"}
    log_lr = np.log10(np.asarray(lrs))
    loss = np.asarray(losses)
    # Ignore the diverged tail: only look up to the minimum of the curve.
    end = int(np.argmin(loss)) + 1
    min_lr = lrs[end - 1]
    if end < 4:
        return {"suggested_lr": min_lr / 10, "method": "minimum-loss rate / 10"}
    grads = np.gradient(loss[:end], log_lr[:end])
    steep_lr = float(lrs[int(np.argmin(grads))])
    suggested = min(steep_lr, min_lr / 10)
    return {
        "suggested_lr": float(suggested),
        "method": "steepest descent of the smoothed loss, capped at minimum-loss rate / 10",
    }
