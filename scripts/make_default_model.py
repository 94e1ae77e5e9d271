#!/usr/bin/env python
"""Reproduce the bundled default model (`make model`).

    python scripts/make_default_model.py [--data_dir ../shared/data/covid19-xray/train ../shared/data/cxr-multisource]
                                         [--output_dir hfxray/default_model]

Any further flags go to scripts/train.py unchanged. Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
import subprocess
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray.bundle import DEFAULT_DATA_DIRS
from hfxray.cli import fail
from hfxray.modeling import DEFAULT_MODEL_DIR


@dataclass
class BundleArguments:
    """Where the training images are and where the bundled model goes."""

    data_dir: list[str] = field(
        default_factory=lambda: [str(d) for d in DEFAULT_DATA_DIRS],
        metadata={"help": "Folders with one sub-folder per class (default: the seed data + cxr-multisource)."},
    )
    output_dir: str = field(default=str(DEFAULT_MODEL_DIR), metadata={"help": "Model directory to (re)write."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args, extra = HfArgumentParser(BundleArguments).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    from hfxray.bundle import build_default_model

    try:
        out = build_default_model(args.data_dir, args.output_dir, extra)
    except (ValueError, OSError, subprocess.CalledProcessError) as err:
        return fail(err)
    print(f"bundled model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
