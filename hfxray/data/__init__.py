"""Image folders -> `datasets` Dataset, and everything hfxray checks about the films before training.

One module per job, all names re-exported here so ``from hfxray import data; data.load_image_folder``
keeps working:

* `loading`     folder layout, one cached decode per file, metadata columns, fingerprint
* `duplicates`  exact/near duplicates (sha256 + perceptual hashes) and leakage between folders
* `splits`      group-aware train/validation splits, source hold-outs, class x source weights
* `transforms`  training augmentation presets and the evaluation transform
* `checks`      `check_folder` (scripts/check_data.py) and quarantine
* `confounding` class x source tables and the metadata-only baseline (imported on use: scikit-learn)
"""

from __future__ import annotations

from hfxray.data.checks import (
    QUARANTINE_DIRNAME,
    QUARANTINE_LOG,
    DataCheckReport,
    check_folder,
    quarantine,
    quarantine_dir,
)
from hfxray.data.duplicates import (
    CONFIRM_PHASH16_DISTANCE,
    DuplicateGroup,
    FileRecord,
    cross_duplicates,
    file_record,
    find_duplicates,
    group_records,
    image_phash,
    records_from_dataset,
)
from hfxray.data.loading import (
    METADATA_COLUMNS,
    NOT_AN_IMAGE_REASON,
    UNKNOWN,
    BadFile,
    data_root,
    dataset_fingerprint,
    default_source_name,
    load_image_folder,
    source_licences,
)
from hfxray.data.splits import (
    BALANCE_STRATEGIES,
    balance_weights,
    class_source_counts,
    population_group,
    split_dataset,
    split_groups,
    without_sources,
)
from hfxray.data.transforms import (
    AUGMENTATION_PRESETS,
    AugmentationConfig,
    augmentation_config,
    build_train_augmentation,
    eval_transform,
    train_transform,
)
from hfxray.images import file_sha256  # re-exported: callers import it from here

__all__ = [
    "AUGMENTATION_PRESETS",
    "CONFIRM_PHASH16_DISTANCE",
    "METADATA_COLUMNS",
    "NOT_AN_IMAGE_REASON",
    "QUARANTINE_DIRNAME",
    "QUARANTINE_LOG",
    "UNKNOWN",
    "AugmentationConfig",
    "BadFile",
    "DataCheckReport",
    "DuplicateGroup",
    "FileRecord",
    "augmentation_config",
    "BALANCE_STRATEGIES",
    "population_group",
    "balance_weights",
    "build_train_augmentation",
    "check_folder",
    "class_source_counts",
    "cross_duplicates",
    "data_root",
    "dataset_fingerprint",
    "default_source_name",
    "eval_transform",
    "file_record",
    "file_sha256",
    "find_duplicates",
    "group_records",
    "image_phash",
    "load_image_folder",
    "quarantine",
    "quarantine_dir",
    "records_from_dataset",
    "source_licences",
    "split_dataset",
    "split_groups",
    "train_transform",
    "without_sources",
]
