#!/usr/bin/env python
"""Does averaging a recipe's seeds help on sources it never saw? (issue 9)

    HF_HUB_OFFLINE=1 python benchmarks/seed_average.py [--choice "bundled recipe"] [--folds bimcv rsna-nih ...]
                                                       [--model_root benchmarks/out/loso runs/exp/loso]

The leave-one-source-out folds (`benchmarks/loso.py`) were trained at two seeds each, and the seeds
disagree on unseen films by as much as a recipe change does (docs/loso.md). Two cheap ways to use
both: average their probabilities (an ensemble: two forward passes per film), or average their
weights once (a "model soup", Wortsman et al. 2022: one network, as fast as either seed; meaningful
because both start from the same ImageNet weights and recipe). For every fold whose seed models exist
this classifies the fold's held-out films with each seed, the probability average and the weight
average, and reports what `loso.py` reports (counts with Wilson intervals, Covid AUROC with its
bootstrap interval), into ``benchmarks/seed_average_results.json``. Nothing is trained.
Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import loso  # noqa: E402

from hfxray import data  # noqa: E402
from hfxray.bundle import DEFAULT_DATA_DIRS  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "seed_average_results.json"
PROBABILITY_AVERAGE = "probability average"
WEIGHT_AVERAGE = "weight average (soup)"


def average_weights(model_dirs: Sequence[Path], out_dir: Path) -> Path:
    """A copy of the first model directory whose float weights are the mean of all of theirs.

    Written here, not in the library: no averaged model is shipped (docs/loso.md), so this is a
    benchmark's tool. Integer buffers (BatchNorm's step counters) are the first model's; the ONNX
    export is left out (it would still describe the first model)."""
    from safetensors.torch import load_file, save_file

    states = [load_file(Path(d) / "model.safetensors") for d in model_dirs]
    if any(set(s) != set(states[0]) for s in states):
        raise ValueError("the models to average have different weights (not one recipe's seeds)")
    mean = {
        k: (sum(s[k].float() for s in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[0].items()
    }
    shutil.copytree(model_dirs[0], out_dir, ignore=shutil.ignore_patterns("*.onnx", "*.safetensors"))
    save_file(mean, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def fold_rows(fold: str, seed_dirs: dict[int, Path], ds: Any, classes: list[str]) -> list[dict[str, Any]]:
    """One row per seed, the probability average and the weight average, on the fold's held-out films."""
    sources = np.asarray(ds["source"])
    held = ds.select(np.flatnonzero(np.isin(sources, fold.split("+"))).tolist())
    labels, images = np.asarray(held["label"]), list(held["image"])
    probs = {seed: loso.fold_predictor(d).predict_images(images, batch_size=32) for seed, d in seed_dirs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        soup = average_weights(list(seed_dirs.values()), Path(tmp) / "soup")
        probs_soup = loso.fold_predictor(soup).predict_images(images, batch_size=32)
    variants = [(f"seed {seed}", p) for seed, p in probs.items()]
    variants += [(PROBABILITY_AVERAGE, np.mean(list(probs.values()), axis=0)), (WEIGHT_AVERAGE, probs_soup)]
    rows = []
    for name, p in variants:
        row = loso.holdout_report(labels, p.argmax(axis=1), classes, p)
        row.update(fold=fold, variant=name, seeds=sorted(seed_dirs))
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    return "-" if key not in row else f"{row[key]:.2f} [{row[key + '_ci95'][0]:.2f}, {row[key + '_ci95'][1]:.2f}]"


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| held out | variant | n | accuracy | called Covid (Covid films) | called not Covid (others) | "
        "called Viral (viral films) | Covid AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['fold']} | {r['variant']} | {r['n']} | {_cell(r, 'accuracy')} | {_cell(r, 'covid_sensitivity')} | "
            f"{_cell(r, 'covid_specificity')} | {_cell(r, 'viral_sensitivity')} | {_cell(r, 'covid_auroc')} |"
        )
    return "\n".join(lines) + "\n"


def find_folds(roots: Sequence[Path], choice: str, folds: Sequence[str] | None, seeds: Sequence[int]) -> dict[str, dict[int, Path]]:
    """fold -> {seed: model directory} for every fold with a trained model at each seed."""
    found: dict[str, dict[int, Path]] = {}
    for root in roots:
        base = Path(root) / choice
        names = folds or sorted({p.name.rsplit("-seed", 1)[0] for p in base.glob("*-seed*")})
        for fold in names:
            dirs = {s: base / f"{fold}-seed{s}" for s in seeds}
            if all((d / "model.safetensors").is_file() for d in dirs.values()):
                found.setdefault(fold, dirs)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--choice", default="bundled recipe", help="loso.py's row label (a folder under each root)")
    parser.add_argument("--model_root", nargs="+", type=Path, default=[loso.DEFAULT_OUT, REPO_ROOT / "runs" / "exp" / "loso"])
    parser.add_argument("--folds", nargs="+", default=None, help="fold names (default: every fold found)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--data_dir", nargs="+", default=[str(d) for d in DEFAULT_DATA_DIRS])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("averaging needs at least two --seeds")
    folds = find_folds(args.model_root, args.choice, args.folds, args.seeds)
    if not folds:
        parser.error(f"no fold has models at seeds {args.seeds} under {', '.join(map(str, args.model_root))}")
    ds, _ = data.load_image_folder(args.data_dir, image_size=224)
    classes = ds.features["label"].names
    rows = [row for fold, dirs in folds.items() for row in fold_rows(fold, dirs, ds, classes)]
    tmp = args.output.with_suffix(".tmp")  # atomic: a stopped run leaves the previous results whole
    tmp.write_text(json.dumps({"choice": args.choice, "rows": rows}, indent=1, default=float) + "\n")
    os.replace(tmp, args.output)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
