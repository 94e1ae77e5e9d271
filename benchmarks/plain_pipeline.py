#!/usr/bin/env python
"""How often plain transformers answers differently from hfxray on a model in the archive format.

    HF_HUB_OFFLINE=1 python benchmarks/plain_pipeline.py [--model hfxray/default_model] [--every 8] [--attach]

A model trained in the archive format (docs/loso.md) expects every film squashed with Lanczos and
saved once as a JPEG. Its ``preprocessor_config.json`` loads in plain transformers as a
``ViTImageProcessor`` that does the resize but not the JPEG save, so a Hub user who writes
``pipeline("image-classification", model=...)`` feeds the model slightly different pixels (and, in
transformers 5, resized by torchvision rather than PIL). This classifies the same films through
``pipeline`` with hfxray's processor (``Predictor.as_pipeline``), through plain ``pipeline`` and
through plain ``pipeline`` with the PIL backend (which isolates the JPEG step), and counts the films
whose predicted class differs (Wilson interval) and how far the probabilities move. ``--attach`` stores the count in the
model's ``hfxray.json`` and rewrites its card, whose "How to use" then quotes it.
Films: the seed data and every ``--every``-th film of the multi-source corpus (all sources).
Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hfxray import hub, metrics  # noqa: E402
from hfxray.bundle import DEFAULT_DATA_DIRS  # noqa: E402
from hfxray.images import is_supported_path, load_image  # noqa: E402
from hfxray.inference import Predictor  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "plain_pipeline_results.json"


def films(data_dirs: Sequence[Path], every: int) -> list[Path]:
    """The first folder's films in full, then every ``every``-th film of each further folder (sorted)."""
    out: list[Path] = []
    for i, root in enumerate(data_dirs):
        paths = sorted(p for p in Path(root).rglob("*") if p.is_file() and is_supported_path(p))
        out += paths if i == 0 else paths[::every]
    return out


def probabilities(classifier: Any, images: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """The pipeline's probabilities as an (n, classes) array in the model's class order."""
    rows = classifier(list(images), top_k=None, batch_size=16)
    return np.asarray([[next(r["score"] for r in row if r["label"] == c) for c in classes] for row in rows])


def _changes(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    changed = int((ours.argmax(1) != theirs.argmax(1)).sum())
    moved = np.abs(ours - theirs).max(axis=1)
    return {
        "n": len(ours),
        "class_changed": changed,
        "class_changed_ci95": metrics.wilson_interval(changed, len(ours)),
        "max_probability_change_median": float(np.median(moved)),
        "max_probability_change_p95": float(np.quantile(moved, 0.95)),
    }


def compare(model_dir: Path, paths: Sequence[Path]) -> dict[str, Any]:
    """hfxray's pipeline against plain transformers' (what a Hub user writes: transformers 5 picks the
    torchvision backend) and against plain transformers with the PIL backend (the JPEG step alone)."""
    from transformers import AutoImageProcessor, pipeline

    predictor = Predictor.from_pretrained(model_dir, backend="torch")
    images = [load_image(p) for p in paths]
    ours = probabilities(predictor.as_pipeline(), images, predictor.classes)
    plain = pipeline("image-classification", model=str(model_dir))
    pil = AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    plain_pil = pipeline("image-classification", model=plain.model, image_processor=pil)
    # A film already S x S is taken as it is (no JPEG step, `square_resize`): only larger films differ.
    size = predictor.film_format["image_size"]
    larger = np.asarray([im.size != (size, size) for im in images])
    out: dict[str, Any] = {
        "model": str(model_dir), "hfxray_processor": type(predictor.processor).__name__, "image_size": size,
    }
    for name, classifier in (("plain", plain), ("plain_pil", plain_pil)):
        theirs = probabilities(classifier, images, predictor.classes)
        out[name] = {"processor": type(classifier.image_processor).__name__, **_changes(ours, theirs)}
        if larger.any():
            out[name][f"films_larger_than_{size}px"] = _changes(ours[larger], theirs[larger])
        if (~larger).any():
            out[name][f"films_already_{size}px"] = _changes(ours[~larger], theirs[~larger])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "hfxray" / "default_model")
    parser.add_argument("--data_dir", nargs="+", type=Path, default=list(DEFAULT_DATA_DIRS))
    parser.add_argument("--every", type=int, default=8, help="every n-th film of the folders after the first")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--attach", action="store_true", help="store the count in the model's hfxray.json and card")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    paths = films(args.data_dir, args.every)
    if not paths:
        parser.error(f"no films under {', '.join(map(str, args.data_dir))}")
    result = compare(args.model, paths)
    if args.model.resolve().is_relative_to(REPO_ROOT):
        result["model"] = str(args.model.resolve().relative_to(REPO_ROOT))
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for name, what in (("plain", "plain transformers"), ("plain_pil", "plain transformers, PIL backend")):
        r = result[name]
        lo, hi = r["class_changed_ci95"]
        print(
            f"{what} ({r['processor']}): {r['class_changed']} of {r['n']} films change class "
            f"({r['class_changed'] / r['n']:.1%}, 95% CI {lo:.1%}-{hi:.1%}); max probability change "
            f"median {r['max_probability_change_median']:.4f}, p95 {r['max_probability_change_p95']:.3f}"
        )
    if args.attach:  # the card quotes what a Hub user's one-liner does to the films a hospital has
        plain, described, size = result["plain"], "of every size", result["image_size"]
        if f"films_larger_than_{size}px" in plain:  # films already S x S skip the JPEG step: only larger ones change
            plain, described = plain[f"films_larger_than_{size}px"], f"larger than {size} px"
        measured = {k: plain[k] for k in ("n", "class_changed", "class_changed_ci95")}
        hub.update_metadata(args.model, plain_pipeline={**measured, "films": described})
        hub.write_model_card(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
