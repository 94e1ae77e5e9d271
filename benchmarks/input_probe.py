#!/usr/bin/env python
"""Would a per-film input transform help films from an unseen archive? A linear-probe check (issue 9).

    HF_HUB_OFFLINE=1 python benchmarks/input_probe.py [--output benchmarks/input_probe_results.json]

After the archive input format (every film Lanczos-resized and saved once as a JPEG 92), what is left
between the `bimcv` Covid films and the rest may be each archive's windowing (brightness and
contrast: histogram equalisation and a 1 % autocontrast remove most of it) or what lies at a film's
edges (markers, text, collimation; the audit's border-only accuracy is above chance: a central crop
removes it). Before
trying one in `benchmarks/loso.py` (4-6 minutes a fine-tuned fold, two seeds), this measures it the
cheap way `loso.py --mode probe` compares sampling choices: films in the bundled model's archive format,
frozen ImageNet EfficientNet-Lite0 features, a scikit-learn logistic regression with the bundled
recipe's class x source weights, for the folds where the targets are missed (`bimcv`, `rsna-nih`) and
the new-hospitals fold. Frozen features rank candidates; they do not replace the fine-tuned table.
Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from loso import format_row, holdout_report  # noqa: E402

from hfxray import data  # noqa: E402
from hfxray.bundle import ALL_HELD_OUT, DEFAULT_DATA_DIRS  # noqa: E402
from hfxray.preprocessing import square_resize  # noqa: E402

NEW_HOSPITALS = ("cxnet-spain", "covid19-xray", "shenzhen", "chexpert")  # loso.py --together's fold
FOLDS = {"bimcv": ("bimcv",), "rsna-nih": ("rsna-nih",), ALL_HELD_OUT: NEW_HOSPITALS}
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "archive format": lambda im: im,
    "archive format + equalize": lambda im: ImageOps.equalize(im.convert("L")).convert("RGB"),
    "archive format + autocontrast 1%": lambda im: ImageOps.autocontrast(im.convert("L"), cutoff=1).convert("RGB"),
    "archive format + central 80% crop": lambda im: central_crop(im, 0.8),
    "archive format + central 80% crop at 176 px": lambda im: central_crop(im, 0.8, 176),
}


def central_crop(image: Image.Image, keep: float, size: int | None = None) -> Image.Image:
    """The middle ``keep`` of the film on each axis, to ``size`` (default: its own) through the archive
    format again (as a crop in the model's input path would have to be: Lanczos, one JPEG 92 save).

    Back to its own size, a 224 px archive film is enlarged (blurred) and a large film is not: a
    resolution cue. At a size no larger than the crop every film is reduced alike."""
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return square_resize(image.crop((dx, dy, w - dx, h - dy)), size or w, Image.Resampling.LANCZOS, 92).convert("RGB")


def features(ds: Any, variant: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Penultimate ImageNet EfficientNet-Lite0 features of every film after ``variant``."""
    from hfxray.inference import Predictor
    from hfxray.modeling import offline_backbone_dir

    predictor = Predictor.from_pretrained(offline_backbone_dir("efficientnet-lite0"), backend="torch")
    images = ds["image"]
    return np.concatenate([
        predictor.features_pixel_values(predictor.preprocess([variant(images[i]) for i in range(s, min(s + 64, len(ds)))]))
        for s in range(0, len(ds), 64)
    ])


def probe_fold(ds: Any, feats: np.ndarray, held_out: tuple[str, ...], classes: list[str]) -> dict[str, Any]:
    """Fit on every source but ``held_out`` (class x source weights, as the bundled recipe), report on it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sources, labels = np.asarray(ds["source"]), np.asarray(ds["label"])
    test = np.isin(sources, held_out)
    train = np.flatnonzero(~test)
    weights = data.balance_weights(ds.select(train.tolist()), strategy="class_source", source_power=0.5) * len(train)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    clf.fit(feats[train], labels[train], logisticregression__sample_weight=weights)
    probs = clf.predict_proba(feats[test])
    return holdout_report(labels[test], probs.argmax(axis=1), classes, probs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", nargs="+", default=[str(d) for d in DEFAULT_DATA_DIRS])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "input_probe_results.json")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)

    ds, _ = data.load_image_folder(args.data_dir, image_size=224, resample=Image.Resampling.LANCZOS, jpeg_quality=92)
    classes = ds.features["label"].names
    # rows of variants not rerun now are kept from the results file
    kept = json.loads(args.output.read_text())["rows"] if args.output.exists() else []
    rows = [row for row in kept if row["choice"] not in args.variants]
    for choice in args.variants:
        feats = features(ds, VARIANTS[choice])
        for fold, held_out in FOLDS.items():
            row = probe_fold(ds, feats, held_out, classes)
            row.update(mode="probe", choice=choice, source=fold, seed=0)
            rows.append(row)
            print(format_row(row), flush=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_dirs": args.data_dir, "rows": rows,
    }
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
