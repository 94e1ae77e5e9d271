#!/usr/bin/env python
"""Fine-tune an image classifier on a folder of chest X-rays (one sub-folder per class).

    accelerate launch scripts/train.py --data_dir DATA_DIR [DATA_DIR ...] --output_dir MODEL_DIR [TrainingArguments flags]
    ... --keep_checkpoints true            # checkpoints kept in MODEL_DIR/checkpoints/
    ... --resume_from_checkpoint last      # continue an interrupted run from its newest checkpoint

Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from hfxray.cli import fail
from hfxray.training import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    default_training_arguments,
    run_training,
)


@dataclass
class OutputArguments:
    """How the model directory (`--output_dir`, save_pretrained format) is written.

    The Trainer's checkpoints live in a temporary folder unless --keep_checkpoints (then in
    OUTPUT_DIR/checkpoints/, and --resume_from_checkpoint last continues an interrupted run).
    """

    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing model directory."})


def parse(argv: list[str] | None = None):
    """Parse hfxray's dataclasses plus any TrainingArguments flag, with hfxray's defaults."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneArguments, OutputArguments, TrainingArguments))
    # hfxray's defaults differ from TrainingArguments' (per-epoch eval, best model kept, no reporting).
    defaults = default_training_arguments("unused")
    parser.set_defaults(**{k: getattr(defaults, k) for k in (
        "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "learning_rate",
        "weight_decay", "eval_strategy", "save_strategy", "logging_strategy", "load_best_model_at_end",
        "metric_for_best_model", "greater_is_better", "save_total_limit", "save_only_model", "report_to",
        "remove_unused_columns", "seed", "dataloader_num_workers",
    )})
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:  # the dataclasses check their own values (e.g. --data_dir missing): one line, not a traceback
        model_args, data_args, ft_args, out_args, training_args = parse(argv)
    except ValueError as err:
        return fail(err)
    training_args_output = training_args.output_dir
    try:
        meta = run_training(
            model_args, data_args, ft_args, training_args, overwrite_output_dir=out_args.overwrite_output_dir
        )
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        return fail(err)
    if meta is not None:
        v = meta["validation"]
        lo, hi = v["accuracy_ci95"]
        print(
            f"saved {training_args_output}: validation accuracy {v['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
            f"n={v['n']}), macro F1 {v['macro_f1']:.3f}, {meta['train_seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
