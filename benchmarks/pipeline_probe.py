#!/usr/bin/env python
"""How much of "how a film was resized and saved" survives each input preprocessing? (issue 9)

    HF_HUB_OFFLINE=1 python benchmarks/pipeline_probe.py [--preprocessing bilinear-224 bilinear-128 ...]
                                                         [--output benchmarks/pipeline_probe_results.json]

A cheap way to choose a preprocessing to try in ``benchmarks/loso.py`` instead of trying each there
(20 minutes a fold on 2 cores): every film is read once (`load_image`, as the model reads it), then
also as two other exports of the same film - the corpus's 224 px archive copy
(`hfxray.audit.archive_copy`: grey, Lanczos, JPEG 92) and a box-resized 256 px JPEG 80 - and each
version goes through the candidate preprocessing into frozen ImageNet EfficientNet-Lite0 features.
A scikit-learn logistic regression, 5-fold cross-validated with the three versions of a film kept in
one fold, then measures:

- ``detect_archive`` / ``detect_other``: how often it tells a film from its other export (0.5 =
  chance: nothing of the export history is left in the features);
- ``children_signal``: how well it tells children's Normal from Viral Pneumonia (`kermany` + the
  seed's children's films), so that a preprocessing which throws the lungs away with the cue shows.

Frozen features are not a fine-tuned model: this ranks candidates, it does not replace the
leave-one-source-out table (docs/loso.md has both). Films: the seed's Normal and Viral Pneumonia
folders and the `kermany`, `cxnet-spain`, `chexpert` and `shenzhen` films of `cxr-multisource` (the
sources stored above 224 px; `bimcv` and `rsna-nih` already *are* 224 px copies).
Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hfxray.audit import archive_copy, jpeg_recompress  # noqa: E402
from hfxray.bundle import DEFAULT_DATA_DIRS  # noqa: E402
from hfxray.images import load_image  # noqa: E402
from hfxray.preprocessing import FastProcessor  # noqa: E402

SOURCES_ABOVE_224 = ("kermany", "cxnet-spain", "chexpert", "shenzhen")
CHILDREN = ("kermany", "covid19-xray")
PREPROCESSING = ("bilinear-224", "lanczos-224", "bilinear-160", "bilinear-128", "lowpass-112")


def other_export(image: Image.Image) -> Image.Image:
    """A second plausible hospital export, unlike `archive_copy`: box filter, 256 px, JPEG 80."""
    return jpeg_recompress(image.convert("L").resize((256, 256), Image.Resampling.BOX), 80)


def preprocessing(name: str) -> Callable[[Image.Image], Image.Image]:
    """``bilinear-S`` / ``lanczos-S``: squash to S x S (``--image_size S``; the processor's filter);
    ``lowpass-K``: down to K then back up to 224 (a low-pass at the usual input size)."""
    kind, size = name.rsplit("-", 1)
    s = int(size)
    if kind in ("bilinear", "lanczos"):
        f = Image.Resampling.BILINEAR if kind == "bilinear" else Image.Resampling.LANCZOS
        return lambda im: im.convert("L").resize((s, s), f)
    if kind == "lowpass":
        bilinear = Image.Resampling.BILINEAR
        return lambda im: im.convert("L").resize((s, s), bilinear).resize((224, 224), bilinear)
    raise ValueError(f"unknown preprocessing {name!r} (bilinear-S, lanczos-S or lowpass-K)")


def read_films(data_dirs: list[Path]) -> tuple[list[str], list[str], list[str]]:
    """(paths, class, source) of the films the probe uses."""
    seed, multisource = data_dirs
    paths, classes, sources = [], [], []
    with (multisource / "metadata.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] in SOURCES_ABOVE_224:
                paths.append(str(multisource / row["file_name"]))
                classes.append(row["file_name"].split("/")[0])
                sources.append(row["source"])
    for cls in ("Normal", "Viral Pneumonia"):
        for path in sorted((seed / cls).iterdir()):
            paths.append(str(path))
            classes.append(cls)
            sources.append("covid19-xray")
    return paths, classes, sources


def features(
    images: list[Image.Image], prep: Callable[[Image.Image], Image.Image], extractor: Any
) -> np.ndarray:
    """Penultimate ImageNet EfficientNet-Lite0 features after ``prep`` and the backbone's own
    rescale/normalise table (no further resize: ``prep`` fixed the size, so the table is applied by a
    `FastProcessor` of that size)."""
    backbone = extractor.fast_processor
    fast: FastProcessor | None = None
    out = []
    for start in range(0, len(images), 64):
        batch = []
        for image in images[start : start + 64]:
            resized = prep(image).convert("RGB")
            fast = fast or FastProcessor(resized.width, backbone.resample, backbone.table)
            batch.append(fast.to_array(resized))
        out.append(extractor.features_pixel_values(np.stack(batch)))
    return np.concatenate(out)


def cv_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    return float(cross_val_score(clf, x, y, groups=groups, cv=GroupKFold(5)).mean())


def probe(
    name: str,
    versions: dict[str, list[Image.Image]],
    classes: np.ndarray,
    children: np.ndarray,
    extractor: Any,
) -> dict[str, Any]:
    prep = preprocessing(name)
    feats = {k: features(v, prep, extractor) for k, v in versions.items()}
    film = np.arange(len(classes))
    row: dict[str, Any] = {"preprocessing": name}
    for key, export in (("detect_archive", "archive_copy"), ("detect_other", "other_export")):
        x = np.concatenate([feats["as_stored"], feats[export]])
        y = np.r_[np.zeros(len(film)), np.ones(len(film))]
        row[key] = round(cv_accuracy(x, y, np.r_[film, film]), 3)
    row["children_signal"] = round(
        cv_accuracy(feats["as_stored"][children], classes[children], film[children]), 3
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--data_dir",
        nargs=2,
        type=Path,
        default=list(DEFAULT_DATA_DIRS),
        help="the seed folder and cxr-multisource",
    )
    parser.add_argument("--preprocessing", nargs="+", default=list(PREPROCESSING))
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks" / "pipeline_probe_results.json"
    )
    args = parser.parse_args(argv)
    try:
        for name in args.preprocessing:
            preprocessing(name)  # a typo fails here, before minutes of decoding
        if not (args.data_dir[1] / "metadata.csv").is_file() or not args.data_dir[0].is_dir():
            raise ValueError(f"expected the seed folder and cxr-multisource (with metadata.csv): {args.data_dir}")
    except ValueError as err:
        parser.error(str(err))

    from hfxray.inference import Predictor
    from hfxray.modeling import offline_backbone_dir

    paths, classes, sources = read_films(args.data_dir)
    started = time.perf_counter()
    stored = [load_image(p, draft_size=224) for p in paths]
    versions = {
        "as_stored": stored,
        "archive_copy": [archive_copy(im) for im in stored],
        "other_export": [other_export(im) for im in stored],
    }
    extractor = Predictor.from_pretrained(offline_backbone_dir("efficientnet-lite0"), backend="torch")
    children = np.flatnonzero(np.isin(sources, CHILDREN))
    rows = []
    for name in args.preprocessing:
        rows.append(probe(name, versions, np.asarray(classes), children, extractor))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "what": "logistic regression on frozen ImageNet EfficientNet-Lite0 features, 5-fold by film",
        "n_films": len(paths),
        "n_children": int(children.size),
        "sources": sorted(set(sources)),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": platform.platform(),
        "date": datetime.date.today().isoformat(),
    }
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
