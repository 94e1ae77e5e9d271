"""Prediction over an archive: streamed to disk, resumable, split over processes and machines.

A hospital archive holds 10^5-10^7 films, so ``scripts/predict.py`` never holds the results:

* **Streaming.** Each process appends its rows to its own part file next to the output
  (``predictions.csv.part``, or ``predictions.csv.part-00001-of-00004`` for process 1 of 4),
  flushed as they are done (:class:`hfxray.prediction_csv.PartWriter`). Memory stays flat: the
  list of input paths (and, when resuming, the set of finished ones) is all that grows.
* **Finishing.** When every process is done, the main process merges the part files (and, when
  resuming, the earlier output) into the output with one atomic rename and removes the parts. An
  output file therefore always means a finished run.
* **Ctrl-C / a crash** leaves the part files: valid CSVs of every finished row (a row cut by a kill
  is skipped when read). ``--resume`` reads the paths of the output and of every part file, skips
  them, appends to the parts and merges as above: every file ends up exactly once.
* **Processes.** Under ``accelerate launch --num_processes N`` (one machine or several, with a
  shared file system) accelerate's ``PartialState.split_between_processes`` gives each process a
  contiguous share of the files; it is imported only when ``WORLD_SIZE`` > 1, so a plain run never
  imports accelerate or torch. ``--num_shards K --shard_index I`` (a SLURM array, independent jobs)
  takes share I of K first and writes ``predictions-0000I-of-0000K.csv``; :func:`merge_shards`
  joins the K finished shard files.
* **Datasets.** :func:`dataset_sources` streams a ``datasets`` dataset (a Hub id or a local folder)
  split by node with ``datasets.distributed.split_dataset_by_node``; only that path imports datasets.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hfxray.prediction_csv import PartWriter, merge_csvs, read_done_paths

# Ranks that finish early wait for the slowest at the final barrier; on an archive that can take
# far longer than torch.distributed's default 30 minutes.
BARRIER_TIMEOUT = timedelta(days=7)
KEEP_FIRST_ROWS = 10  # rows kept in memory for the script's printout of small runs

Source = tuple[str, "str | bytes"]  # (name written to the path column, file path or encoded bytes)


# ---------------------------------------------------------------------------- where things go
def shard_output(output: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """``predictions.csv`` -> ``predictions-00003-of-00010.csv`` (the output of one shard)."""
    output = Path(output)
    if num_shards == 1:
        return output
    return output.with_name(f"{output.stem}-{shard_index:05d}-of-{num_shards:05d}{output.suffix}")


def part_path(output: str | os.PathLike, rank: int = 0, world: int = 1) -> Path:
    """The part file one process streams its rows to."""
    output = Path(output)
    suffix = ".part" if world == 1 else f".part-{rank:05d}-of-{world:05d}"
    return output.with_name(output.name + suffix)


def existing_parts(output: str | os.PathLike) -> list[Path]:
    """Part files of ``output`` left by this or earlier runs (any process count), sorted."""
    output = Path(output)
    if not output.parent.is_dir():
        return []
    prefix = output.name + ".part"
    return sorted(p for p in output.parent.iterdir() if p.name == prefix or p.name.startswith(prefix + "-"))


def shard_bounds(n: int, index: int, count: int) -> slice:
    """Contiguous share ``index`` of ``count`` of ``n`` items, sizes differing by at most one (the
    rule of accelerate's ``split_between_processes``)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


# ---------------------------------------------------------------------------- processes
@dataclass
class ProcessContext:
    """This process's place in a run: ``rank`` of ``world`` processes, ``local_world`` of them on this
    machine (they share its cores); ``state`` is accelerate's PartialState when launched by it."""

    rank: int = 0
    world: int = 1
    local_world: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def num_threads(self, cores: int) -> int | None:
        """Threads for ONNX Runtime and decoding per process: this machine's cores shared out."""
        return None if self.local_world == 1 else max(1, cores // self.local_world)

    def wait(self) -> None:
        """Barrier across processes (no-op alone)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def split(self, items: list[Any]) -> list[Any]:
        """This process's contiguous share of ``items``."""
        if self.state is None:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)


def process_context() -> ProcessContext:
    """Alone unless launched with several processes (``accelerate launch``/torchrun set WORLD_SIZE);
    only then is accelerate (and with it torch) imported."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return ProcessContext()
    from accelerate import PartialState

    state = PartialState(cpu=True, timeout=BARRIER_TIMEOUT)
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or state.num_processes)
    return ProcessContext(rank=state.process_index, world=state.num_processes, local_world=local, state=state)


# ---------------------------------------------------------------------------- inputs
def path_sources(paths: Iterable[str]) -> Iterator[Source]:
    """(path, path) pairs for :meth:`Predictor.iter_predict_sources`."""
    return ((p, p) for p in paths)


def dataset_sources(
    dataset: str,
    split: str = "test",
    *,
    image_column: str = "image",
    shard: tuple[int, int] = (0, 1),
    context: ProcessContext | None = None,
) -> Iterator[Source]:
    """Stream (name, bytes or path) from a ``datasets`` dataset (Hub id or local folder), this
    process's share only: split by ``shard`` (index, count) and then by process. The name is the
    image's file path where the dataset keeps one, else ``<dataset>/<split>/<index>`` (index within
    this share, stable between runs of the same sharding, so ``--resume`` works either way)."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    try:
        ds = load_dataset(dataset, split=split, streaming=True)
    except Exception as e:  # unknown id offline, missing split, bad folder: one line for the user
        raise ValueError(
            f"cannot stream dataset {dataset!r} split {split!r}: {str(e).splitlines()[0]}"
        ) from e
    if image_column not in (ds.features or {}):
        raise ValueError(
            f"dataset {dataset!r} has no {image_column!r} column (columns: {list(ds.features or {})})"
        )
    ds = ds.cast_column(image_column, ImageFeature(decode=False))  # hfxray.images decodes, as everywhere
    index, count = shard
    if count > 1:
        ds = split_dataset_by_node(ds, rank=index, world_size=count)
    if context is not None and context.world > 1:
        ds = split_dataset_by_node(ds, rank=context.rank, world_size=context.world)
    prefix = f"{dataset}/{split}/{index}-{context.rank if context else 0}"
    for i, example in enumerate(ds):
        image = example[image_column] or {}
        name = image.get("path") or f"{prefix}/{i}"
        source = image.get("bytes") or image.get("path")
        yield name, source if source is not None else b""


# ---------------------------------------------------------------------------- one run
@dataclass
class RunSummary:
    """What one process did (rows of this run only; ``merged_rows`` on the main process: the output)."""

    output: Path
    part: Path
    n_rows: int = 0
    n_ok: int = 0
    n_abstained: int = 0
    n_refused: int = 0
    n_skipped_done: int = 0
    per_class: Counter = field(default_factory=Counter)
    first_rows: list[Any] = field(default_factory=list)
    merged_rows: int | None = None
    interrupted: bool = False

    @property
    def n_errors(self) -> int:
        return self.n_rows - self.n_ok

    def add(self, row: Any) -> None:
        self.n_rows += 1
        if row.ok:
            self.n_ok += 1
            self.per_class[row.predicted] += row.predicted is not None
            self.n_abstained += row.predicted is None
            self.n_refused += bool(getattr(row, "refused", None))
        if len(self.first_rows) < KEEP_FIRST_ROWS:
            self.first_rows.append(row)


def check_output(output: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, what would clobber or silently mix results (one-line errors)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory")
    if output.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"{output} already exists; choose another --output, pass --resume or --overwrite"
        )
    parts = existing_parts(output)
    if parts and not (resume or overwrite):
        raise FileExistsError(
            f"an interrupted run left {len(parts)} part file(s) next to {output} ({parts[0].name}); "
            "pass --resume to continue it or --overwrite to start again"
        )


def predict_to_csv(
    predictor: Any,
    inputs: Sequence[str] | Callable[[ProcessContext], Iterable[Source]],
    output: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
    context: ProcessContext | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Predict this process's share of ``inputs`` into its part file, then (main process) merge all
    parts into ``output`` (or the shard's output, :func:`shard_output`) atomically.

    ``inputs`` is the full list of file paths (every process gets the same list and takes its
    share) or a function giving this process's (name, source) stream for a context (datasets).
    A KeyboardInterrupt leaves the part file complete up to the last finished row and propagates
    (``summary.interrupted`` is not reachable then: callers print the part path themselves).
    """
    context = context or ProcessContext()
    index, count = shard
    target = shard_output(output, index, count)
    # every process checks (read-only), so that all stop alike instead of waiting at the barrier
    check_output(target, resume=resume, overwrite=overwrite)
    if context.is_main and overwrite:
        for stale in existing_parts(target):
            stale.unlink()
    context.wait()  # the checks (and removals) happen before anyone writes

    part = part_path(target, context.rank, context.world)
    summary = RunSummary(output=target, part=part)
    done = read_done_paths([target, *existing_parts(target)], predictor.classes) if resume else set()
    if callable(inputs):
        stream: Iterable[Source] = inputs(context)
    else:
        mine = context.split(list(inputs[shard_bounds(len(inputs), index, count)]))
        stream = path_sources(mine)

    def todo() -> Iterator[Source]:
        for name, source in stream:
            if name in done:
                summary.n_skipped_done += 1
                if progress is not None:  # the bar counts the share, finished earlier or now
                    progress(1)
                continue
            yield name, source

    with PartWriter(part, predictor.classes, resume=resume) as writer:
        rows = predictor.iter_predict_sources(todo(), batch_size=batch_size, progress=progress)
        try:
            for row in rows:
                writer.write([row])
                summary.add(row)
        finally:
            with contextlib.suppress(Exception):
                rows.close()  # stops the decoding threads

    context.wait()  # every part is complete before the merge
    if context.is_main:
        sources = [target] if (resume and target.is_file()) else []
        sources += existing_parts(target)
        summary.merged_rows = merge_csvs(sources, predictor.classes, target, overwrite=True)
        for p in existing_parts(target):
            p.unlink()
    context.wait()
    return summary


def share_size(n: int, shard: tuple[int, int], context: ProcessContext) -> int:
    """How many of ``n`` listed files this process predicts (its shard, then its process share)."""
    in_shard = len(range(n)[shard_bounds(n, *shard)])
    return len(range(in_shard)[shard_bounds(in_shard, context.rank, context.world)])


def merge_shards(
    output: str | os.PathLike, num_shards: int, classes: Sequence[str], *, overwrite: bool = False
) -> int:
    """Join the finished outputs of ``num_shards`` shard jobs into ``output``; every shard must be
    there (a missing one is an error naming it). Returns the number of rows."""
    shards = [shard_output(output, i, num_shards) for i in range(num_shards)]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {num_shards} shard outputs are missing or unfinished, e.g. {missing[0]}"
        )
    return merge_csvs(shards, classes, output, overwrite=overwrite)
