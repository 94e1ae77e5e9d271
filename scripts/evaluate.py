#!/usr/bin/env python
"""Evaluate a model on a labelled folder (one sub-folder per class, all or some of the model's classes).

    python scripts/evaluate.py --data_dir TEST_DIR [TEST_DIR2 ...] [--model ID_OR_DIR] --output_dir REPORT_DIR \
        [--group_by source population]

Writes metrics.json, confusion_matrix.png, most_wrong.png, reliability.png, predictions.csv and report.html.
``--group_by`` adds every metric per value of a metadata column (``groups`` in metrics.json, a table
in report.html): a headline over several sources can hide the one where the model fails.
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

    data_dir: list[str] = field(
        metadata={
            "help": "Folder(s) with one sub-folder per class (names as the model's classes); metadata.csv read."
        }
    )
    output_dir: str = field(metadata={"help": "Folder for metrics.json, plots and report.html."})
    model: str | None = field(
        default=None, metadata={"help": "Model directory or Hub id (default: the bundled model)."}
    )
    backend: str = field(default="auto", metadata={"help": "auto | onnx | torch"})
    group_by: list[str] = field(
        default_factory=list,
        metadata={"help": "Metadata column(s) to report every metric by: source, population, view, ..."},
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    from hfxray.evaluation import evaluate_folder

    try:
        result = evaluate_folder(
            args.data_dir, args.output_dir, model=args.model, backend=args.backend, group_by=args.group_by
        )
    except (ValueError, OSError) as err:
        return fail(err)
    lo, hi = result["accuracy_ci95"]
    print(
        f"n={result['n']} accuracy {result['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}) macro F1 {result['macro_f1']:.3f}"
    )
    for column, per in result.get("groups", {}).items():
        print(f"by {column}:")
        for value, r in per.items():
            g_lo, g_hi = r["accuracy_ci95"]
            print(f"  {value}: n={r['n']} accuracy {r['accuracy']:.3f} (95% CI {g_lo:.3f}-{g_hi:.3f})")
    print(f"report: {args.output_dir}/report.html")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
