#!/usr/bin/env python
"""Shortcut audit of a model on a labelled folder: does it read the lungs or the film's source?

    python scripts/audit.py --data_dir DIR [--model ID_OR_DIR] --output_dir OUT [--write_to_model]

DIR holds one sub-folder per class (all or some of the model's classes). Writes OUT/audit.json,
OUT/audit.html and PNGs: border-only and lungs-only accuracy, Grad-CAM mass inside the lung box,
prediction flips under downscaling / JPEG / gamma / contrast, and leakage from the training data.
Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray import DISCLAIMER
from hfxray.cli import fail


@dataclass
class AuditArguments:
    """What to audit, with which model, and where the report goes."""

    data_dir: str = field(
        metadata={"help": "Folder with one sub-folder per class (named as the model's classes)."}
    )
    output_dir: str = field(metadata={"help": "Folder for audit.json, audit.html and the PNGs."})
    model: str | None = field(
        default=None, metadata={"help": "Model directory or Hub id (default: the bundled model)."}
    )
    backend: str = field(
        default="auto", metadata={"help": "auto | onnx | torch (Grad-CAM always uses torch)."}
    )
    write_to_model: bool = field(
        default=False,
        metadata={"help": "Store the summary under 'audit' in the model's hfxray.json and refresh its card."},
    )
    max_per_class: int | None = field(
        default=None, metadata={"help": "Audit at most this many images per class."}
    )
    no_heatmaps: bool = field(default=False, metadata={"help": "Skip the Grad-CAM check (faster)."})
    downscale_to: list[int] = field(
        default_factory=lambda: [224, 512],
        metadata={"help": "Short sides for the downscale-and-back transform."},
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(AuditArguments).parse_args_into_dataclasses(args=argv)
    from tqdm.auto import tqdm

    from hfxray.audit import run_audit, write_audit_to_model
    from hfxray.inference import Predictor

    if args.write_to_model and args.model is not None and not Path(args.model).is_dir():
        # A Hub id resolves to a read-only snapshot in the HF cache: never edit that in place.
        return fail(f"--write_to_model needs a local model directory, not the Hub id {args.model!r}")
    try:
        predictor = Predictor.from_pretrained(args.model, backend=args.backend)
        with tqdm(desc="audit", unit="image") as bar:
            result = run_audit(
                predictor,
                args.data_dir,
                output_dir=args.output_dir,
                max_per_class=args.max_per_class,
                heatmaps=not args.no_heatmaps,
                downscale_to=args.downscale_to,
                progress=bar.update,
            )
        if args.write_to_model:
            write_audit_to_model(predictor.model_dir, result)
    except (ValueError, OSError, RuntimeError) as err:
        return fail(err)
    verdict = result["verdict"]
    print(f"shortcut risk: {verdict['shortcut_risk']} (n={result['n']})")
    for reason in verdict["reasons"]:
        print(f"  - {reason}")
    for warning in verdict["warnings"]:
        print(f"  ! {warning}")
    print(f"report: {args.output_dir}/audit.html")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
