#!/usr/bin/env python
"""Export a saved model directory to ONNX (MODEL_DIR/model.onnx) and check it against PyTorch.

    python scripts/export_onnx.py MODEL_DIR [--images DIR] [--n_images 6] [--opset 17]

The file is written only if ONNX Runtime reproduces PyTorch's probabilities within 1e-4 on real
radiographs (default: a few per class from ../shared/data/covid19-xray/train when it exists,
otherwise synthetic images). After that, `Predictor.from_pretrained(MODEL_DIR)` uses ONNX Runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray.cli import fail

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid19-xray" / "train"


@dataclass
class ExportArguments:
    """Which model to export and which images verify it."""

    model_dir: str = field(metadata={"help": "Saved model directory (config.json, model.safetensors)."})
    images: str | None = field(
        default=None, metadata={"help": f"Folder of radiographs for the check (default: {DEFAULT_IMAGES})."}
    )
    n_images: int = field(
        default=6, metadata={"help": "How many images to verify on (spread over sub-folders)."}
    )
    opset: int = field(default=17, metadata={"help": "ONNX opset version."})
    atol: float = field(default=1e-4, metadata={"help": "Largest accepted |p_onnx - p_torch|."})


def pick_images(folder: Path, n: int) -> list[Path]:
    """Round-robin over sub-folders (classes) so the check sees every class, sorted for repeatability."""
    from hfxray.images import is_supported_path

    groups = [
        sorted(p for p in d.rglob("*") if p.is_file() and is_supported_path(p))
        for d in sorted(folder.iterdir())
        if d.is_dir()
    ]
    groups.append(sorted(p for p in folder.iterdir() if p.is_file() and is_supported_path(p)))
    groups = [g for g in groups if g]
    picked: list[Path] = []
    while len(picked) < n and any(groups):
        for g in groups:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    return picked


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # MODEL_DIR positionally, as the usage line shows
        argv = ["--model_dir", *argv]
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        return fail(f"{model_dir} is not a saved model directory (no config.json)", code=2)
    folder = Path(args.images) if args.images else DEFAULT_IMAGES
    if args.images and not folder.is_dir():
        return fail(f"--images {folder} is not a folder", code=2)

    from hfxray.images import ImageReadError, load_image
    from hfxray.inference import read_model_metadata
    from hfxray.onnx_export import ONNX_MAX_DIFF_KEY, OnnxVerificationError, export_onnx, onnx_metadata

    image_size = read_model_metadata(model_dir).get("image_size")
    images, used = [], []
    for p in pick_images(folder, args.n_images) if folder.is_dir() else []:
        try:
            images.append(load_image(p, draft_size=image_size))
            used.append(p)
        except ImageReadError as err:
            print(f"skipping {err}", file=sys.stderr)
    try:
        onnx_path = export_onnx(model_dir, opset=args.opset, verify_images=images or None, atol=args.atol)
    except OnnxVerificationError as err:
        return fail(err)
    except (ValueError, OSError) as err:
        return fail(err, code=2)
    diff = onnx_metadata(onnx_path)[ONNX_MAX_DIFF_KEY]
    what = f"{len(used)} radiographs from {folder}" if used else "synthetic images (no radiographs found)"
    print(f"wrote {onnx_path}")
    print(f"max |p_onnx - p_torch| = {diff} on {what} (tolerance {args.atol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
