"""Weight averaging over the all-layer phase (SWA / SWAD-style), as a Trainer callback.

Why: on films from hospitals it never saw, one fine-tuned network's answer depends on where its last
steps happened to land: two seeds of the bundled recipe called 99 and 77 of the same 111 unseen
Covid films Covid (docs/loso.md). Averaging the weights of many steps along the same run lands in a
flatter region of the loss, which is what the domain-generalisation literature (SWA, Izmailov et al.
2018; SWAD, Cha et al. 2021) finds to transfer better to unseen domains, at no cost at inference
(one network, same size). The Trainer has no averaging option; torch's `AveragedModel` does the
arithmetic (``use_buffers=True`` averages the BatchNorm statistics too, so no extra pass over the
data is needed), and this callback only says when.

The average is saved beside each checkpoint (``averaged_weights.safetensors``), so a run resumed
with ``--resume_from_checkpoint`` continues the same average rather than starting a new one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

AVERAGED_WEIGHTS = "averaged_weights.safetensors"
AVERAGED_STATE = "averaged_state.json"


class WeightAveragingCallback(TrainerCallback):
    """Average the model's weights every step from ``start`` (a fraction of the phase's steps) on,
    and put the average into the model when training ends."""

    def __init__(self, start: float, resume_from: str | Path | None = None) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"weight averaging start must be in [0, 1), got {start}")
        self.start = start
        self.resume_from = Path(resume_from) if resume_from else None
        self.averaged: AveragedModel | None = None
        self.first_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: torch.nn.Module = None, **kwargs: Any) -> None:
        self.averaged = AveragedModel(model, use_buffers=True)
        self.first_step = int(self.start * state.max_steps) + 1
        if self.resume_from and (self.resume_from / AVERAGED_WEIGHTS).is_file():
            self.averaged.module.load_state_dict(load_file(self.resume_from / AVERAGED_WEIGHTS))
            n = json.loads((self.resume_from / AVERAGED_STATE).read_text())["n_averaged"]
            self.averaged.n_averaged.fill_(int(n))
            logger.info("weight averaging continues from %s (%d steps averaged)", self.resume_from, n)

    def on_step_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module = None, **kwargs: Any) -> None:
        if self.averaged is not None and state.global_step >= (self.first_step or 0):
            self.averaged.update_parameters(model)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.averaged is None or not checkpoint.is_dir() or not state.is_world_process_zero:
            return
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.averaged.module.state_dict().items()}
        save_file(tensors, checkpoint / AVERAGED_WEIGHTS)
        (checkpoint / AVERAGED_STATE).write_text(json.dumps({"n_averaged": int(self.averaged.n_averaged)}))

    def on_train_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module = None, **kwargs: Any) -> None:
        if self.averaged is None or int(self.averaged.n_averaged) == 0:
            logger.warning("weight averaging: no step was averaged; keeping the last weights")
            return
        model.load_state_dict(self.averaged.module.state_dict())
        logger.info("weight averaging: the model is the average of %d steps", int(self.averaged.n_averaged))

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged) if self.averaged is not None else 0
