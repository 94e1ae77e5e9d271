#!/usr/bin/env python
"""Evaluate a model on a labelled folder (one sub-folder per class, all or some of the model's classes).

    python scripts/evaluate.py --data_dir TEST_DIR [--model ID_OR_DIR] --output_dir REPORT_DIR

Writes metrics.json, confusion_matrix.png, most_wrong.png, reliability.png, predictions.csv and report.html.
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
class EvaluateArguments:
    """What to evaluate, with which model, and where the report goes."""

    data_dir: str = field(metadata={"help": "Folder with one sub-folder per class (names as the model's classes)."})
    output_dir: str = field(metadata={"help": "Folder for metrics.json, plots and report.html."})
    model: str | None = field(default=None, metadata={"help": "Model directory or Hub id (default: the bundled model)."})
    backend: str = field(default="auto", metadata={"help": "auto | onnx | torch"})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    from hfxray.evaluation import evaluate_folder

    try:
        result = evaluate_folder(args.data_dir, args.output_dir, model=args.model, backend=args.backend)
    except (ValueError, OSError) as err:
        return fail(err)
    lo, hi = result["accuracy_ci95"]
    print(f"n={result['n']} accuracy {result['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}) macro F1 {result['macro_f1']:.3f}")
    print(f"report: {args.output_dir}/report.html")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
