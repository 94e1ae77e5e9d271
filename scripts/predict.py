#!/usr/bin/env python
"""Predict chest X-ray classes for files and folders and write a CSV of probabilities.

    python scripts/predict.py PATH... [--model ID_OR_DIR] [--output predictions.csv] [--overwrite]
                              [--backend auto|onnx|torch] [--batch_size 32]

Folders are searched recursively for supported images (other files are skipped and counted).
Unreadable files get a row with an `error` and the run goes on. Exit status: 0 when at least one
file was predicted, 1 when none was, 2 for bad arguments (including an existing --output without
--overwrite: an earlier CSV is never replaced silently). Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from collections import Counter
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray import DISCLAIMER
from hfxray.cli import fail
from hfxray.inference import DEFAULT_BATCH_SIZE

# Up to this many files, each prediction (with its probabilities) is also printed.
PRINT_ROWS_UP_TO = 10


@dataclass
class PredictArguments:
    """Which model, where the CSV goes, how to run."""

    model: str | None = field(
        default=None, metadata={"help": "Model directory or Hub id (default: the bundled model)."}
    )
    output: str = field(default="predictions.csv", metadata={"help": "CSV file to write."})
    overwrite: bool = field(default=False, metadata={"help": "Replace --output if it already exists."})
    backend: str = field(
        default="auto",
        metadata={
            "help": "auto (ONNX when model.onnx exists) | onnx | torch",
            "choices": ["auto", "onnx", "torch"],
        },
    )
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Images per forward pass."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    parser = HfArgumentParser(PredictArguments)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Image files and/or folders.")
    args, extra = parser.parse_args_into_dataclasses(args=argv)
    if args.batch_size < 1:
        return fail(f"--batch_size must be >= 1, got {args.batch_size}", code=2)

    from pathlib import Path

    from tqdm.auto import tqdm

    from hfxray.inference import Predictor, collect_image_paths, write_predictions_csv

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        return fail(f"{output} already exists; choose another --output or pass --overwrite", code=2)
    if output.is_dir():
        return fail(f"--output {output} is a directory", code=2)
    paths, skipped = collect_image_paths(extra.paths)
    if not paths:
        return fail(
            f"no supported image files found in {', '.join(extra.paths)} ({skipped} other files skipped)"
        )
    try:
        predictor = Predictor.from_pretrained(args.model, backend=args.backend)
    except (ValueError, OSError) as err:
        return fail(err, code=2)

    with tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr) as bar:
        rows = predictor.predict_paths(paths, batch_size=args.batch_size, progress=bar.update)
    try:
        write_predictions_csv(rows, predictor.classes, output, overwrite=args.overwrite)
    except (FileExistsError, IsADirectoryError) as err:
        return fail(err, code=2)
    except OSError as err:
        return fail(err)

    ok = [r for r in rows if r.ok]
    if len(rows) <= PRINT_ROWS_UP_TO:
        for r in rows:
            detail = (
                ", ".join(f"{c} {r.probs[c]:.3f}" for c in predictor.classes) if r.ok else f"error: {r.error}"
            )
            print(
                f"{r.path}: {r.predicted or '-'} ({detail}){'  warning: ' + r.warning if r.warning else ''}"
            )
    counts = Counter(r.predicted for r in ok)
    per_class = ", ".join(f"{c} {counts.get(c, 0)}" for c in predictor.classes)
    n_abstained = sum(1 for r in ok if r.abstained)
    print(
        f"predicted {len(ok)}/{len(rows)} files ({per_class}, input gate abstained on {n_abstained}); "
        f"{len(rows) - len(ok)} unreadable, {skipped} non-image files skipped; backend {predictor.backend}"
    )
    print(f"probabilities for every file: {output}")
    print(DISCLAIMER)
    if not ok:
        return fail(
            f"none of the {len(rows)} files could be read as an image (see the error column in {output})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
