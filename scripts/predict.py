#!/usr/bin/env python
"""Predict chest X-ray classes for files and folders and write a CSV of probabilities.

    python scripts/predict.py PATH... [--model ID_OR_DIR] [--output predictions.csv] [--overwrite | --resume]
                              [--backend auto|onnx|torch] [--batch_size 8]
    python scripts/predict.py --dataset PATH_OR_ID --split test ...       # a datasets dataset, streamed
    accelerate launch --num_processes N scripts/predict.py PATH... ...    # N processes, one merged CSV
    python scripts/predict.py PATH... --num_shards K --shard_index I      # one job of K (SLURM arrays)
    python scripts/predict.py --merge --num_shards K --output predictions.csv

Folders are searched recursively for supported images (other files are skipped and counted).
Unreadable files get a row with an `error` and the run goes on. Rows are streamed to
`<output>.part` as they are done; the output appears (atomically) only when the run is complete.
After Ctrl-C or a crash, `--resume` predicts only the files not yet in the CSV. Exit status: 0
when at least one file was predicted (or nothing was left to do), 1 when none was, 2 for bad
arguments (including an existing --output without --overwrite or --resume: an earlier CSV is
never replaced silently), 130 on Ctrl-C. Research software, not a diagnostic device.

With a model directory that has model.onnx, this script imports neither torch, transformers nor
datasets (start-up is a fraction of a second): keep it so.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field
from typing import Any

from hfxray import DISCLAIMER
from hfxray.cli import dataclass_parser, fail, parse_into_dataclasses

DEFAULT_BATCH_SIZE = 8  # = hfxray.inference.DEFAULT_BATCH_SIZE (not imported before --help is answered)


@dataclass
class PredictArguments:
    """Which model, where the CSV goes, how to run."""

    model: str | None = field(
        default=None, metadata={"help": "Model directory or Hub id (default: the bundled model)."}
    )
    output: str = field(default="predictions.csv", metadata={"help": "CSV file to write."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace --output (and parts of an interrupted run) if they exist."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue an interrupted run: skip files already in --output or its part files."},
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "auto (ONNX when model.onnx exists) | onnx | torch",
            "choices": ["auto", "onnx", "torch"],
        },
    )
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Images per forward pass."})
    num_shards: int = field(
        default=1, metadata={"help": "Split the files into this many shards (independent jobs)."}
    )
    shard_index: int = field(
        default=0,
        metadata={"help": "Which shard this job predicts (0-based); its CSV is OUTPUT-0000I-of-0000K.csv."},
    )
    merge: bool = field(
        default=False, metadata={"help": "Join the finished CSVs of --num_shards shard jobs into --output."}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Predict a datasets dataset (Hub id or local folder, streamed) instead of PATHs."},
    )
    split: str = field(default="test", metadata={"help": "Split of --dataset."})
    image_column: str = field(default="image", metadata={"help": "Image column of --dataset."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    # argparse from the dataclass instead of transformers.HfArgumentParser: the same options without
    # importing transformers (a second of start-up; absent from the inference-only install).
    parser = dataclass_parser(PredictArguments, description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="Image files and/or folders.")
    args, extra = parse_into_dataclasses(parser, [PredictArguments], argv)
    if args.batch_size < 1:
        return fail(f"--batch_size must be >= 1, got {args.batch_size}", code=2)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        return fail(f"--shard_index must be in [0, {args.num_shards}), got {args.shard_index}", code=2)
    if args.merge:
        return merge(args)
    if bool(extra.paths) == bool(args.dataset):
        return fail("give image files/folders or --dataset (one of the two)", code=2)

    from hfxray import batch
    from hfxray.inference import Predictor, physical_cores

    context = batch.process_context()  # imports accelerate only under a multi-process launch
    output = Path(args.output)
    try:
        batch.check_output(
            batch.shard_output(output, args.shard_index, args.num_shards),
            resume=args.resume,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as err:
        return fail(err, code=2)

    inputs, total, skipped = _inputs(args, extra.paths, context)
    if inputs is None:
        return fail(f"no supported image files found in {', '.join(extra.paths)} ({skipped} other files skipped)")
    try:
        predictor = Predictor.from_pretrained(
            args.model, backend=args.backend, num_threads=context.num_threads(physical_cores())
        )
    except (ValueError, OSError) as err:
        return fail(err, code=2)

    from tqdm import tqdm  # the std module: tqdm.auto would look for IPython

    try:
        with tqdm(
            total=total,
            unit="img",
            desc=f"predict {context.rank}/{context.world}" if context.world > 1 else "predict",
            file=sys.stderr,
        ) as bar:
            summary = batch.predict_to_csv(
                predictor,
                inputs,
                output,
                resume=args.resume,
                overwrite=args.overwrite,
                shard=(args.shard_index, args.num_shards),
                context=context,
                batch_size=args.batch_size,
                progress=bar.update,
            )
    except KeyboardInterrupt:
        part = batch.part_path(
            batch.shard_output(output, args.shard_index, args.num_shards), context.rank, context.world
        )
        print(
            f"interrupted: the rows finished so far are in {part}; rerun with --resume to continue",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileExistsError, IsADirectoryError) as err:
        return fail(err, code=2)
    except OSError as err:
        return fail(err)

    _print_summary(summary, predictor, context, skipped, resume=args.resume)
    if summary.n_rows and not summary.n_ok:
        return fail(
            f"none of the {summary.n_rows} files could be read as an image (see the error column in {summary.output})"
        )
    return 0



def _inputs(args: PredictArguments, paths: list[str], context: Any) -> tuple[Any, int | None, int]:
    """What to predict: a per-process reader of --dataset rows (length unknown up front: streaming),
    or the image files under ``paths`` (None when there are none), their count for this process
    and how many other files were skipped."""
    from hfxray import batch
    from hfxray.inference import collect_image_paths

    shard = (args.shard_index, args.num_shards)
    if args.dataset:

        def inputs(ctx: Any) -> Any:
            return batch.dataset_sources(
                args.dataset, args.split, image_column=args.image_column, shard=shard, context=ctx
            )

        return inputs, None, 0
    files, skipped = collect_image_paths(paths)
    if not files:
        return None, None, skipped
    return files, batch.share_size(len(files), shard, context), skipped


def _print_summary(summary: Any, predictor: Any, context: Any, skipped: int, resume: bool) -> None:
    """One line per file when there are few, then the totals, the CSV and the disclaimer."""
    classes = predictor.classes
    if summary.n_rows <= len(summary.first_rows):
        for r in summary.first_rows:
            detail = ", ".join(f"{c} {r.probs[c]:.3f}" for c in classes) if r.ok else f"error: {r.error}"
            note = "".join(f"  {k}: {v}" for k, v in (("refused", r.refused), ("warning", r.warning)) if v)
            print(f"{r.path}: {r.predicted or '-'} ({detail}){note}")
    per_class = ", ".join(f"{c} {summary.per_class.get(c, 0)}" for c in classes)
    who = f"process {context.rank}/{context.world}: " if context.world > 1 else ""
    print(
        f"{who}predicted {summary.n_ok}/{summary.n_rows} files ({per_class}, input gate abstained on "
        f"{summary.n_abstained}); {summary.n_errors} unreadable, {skipped} non-image files skipped"
        + (f", {summary.n_skipped_done} already done" if resume else "")
        + f"; backend {predictor.backend}"
    )
    if summary.merged_rows is not None:
        print(f"probabilities for every file ({summary.merged_rows} rows): {summary.output}")
        print(DISCLAIMER)

def merge(args: PredictArguments) -> int:
    """--merge: join the shard jobs' CSVs (the classes come from the model, as the columns do)."""
    from hfxray import batch
    from hfxray.inference import read_model_classes, resolve_model_dir

    try:
        classes = read_model_classes(resolve_model_dir(args.model))
        n = batch.merge_shards(args.output, args.num_shards, classes, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        return fail(err, code=2)
    print(f"merged {args.num_shards} shards, {n} rows: {args.output}")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
