#!/usr/bin/env python
"""Fit the two-question input gate (v2) of a model directory and store it in its hfxray.json.

    python scripts/fit_gate.py MODEL_DIR --chest_dirs DIR... [--negative_dirs DIR...] \\
        [--reference_dirs DIR...] [--generated_per_kind 40] [--max_per_group N]

"Not a frontal chest radiograph" -> refused; "unlike the training films" -> answered with a warning
(see hfxray/gate.py). Chest folders with a metadata.csv are grouped by its `source` column, negative
folders by sub-folder (kind); the threshold is chosen on held-out groups. Writes MODEL_DIR/hfxray.json
(`gate`, atomic) and refreshes the model card. Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import logging

from hfxray.cli import fail

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="saved model directory (its hfxray.json gets the gate)")
    parser.add_argument(
        "--chest_dirs", nargs="+", required=True, help="folders of frontal chest films (any layout)"
    )
    parser.add_argument(
        "--negative_dirs", nargs="*", default=[str(DATA / "not-cxr")],
        help="folders of non-chest images, one sub-folder per kind (default: ../shared/data/not-cxr)",
    )
    parser.add_argument(
        "--reference_dirs", nargs="*", default=None,
        help="the folders the model was trained on, for the unfamiliar-film warning (default: chest_dirs)",
    )
    parser.add_argument("--generated_per_kind", type=int, default=40, help="synthetic negatives per kind")
    parser.add_argument("--max_per_group", type=int, default=None, help="cap per source/kind (faster)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        return fail(f"not a model directory: {model_dir}")
    from tqdm.auto import tqdm

    from hfxray.gate_fit import fit_and_write_gate

    try:
        with tqdm(desc="gate features", unit="img") as bar:
            stats = fit_and_write_gate(
                model_dir, args.chest_dirs, args.negative_dirs, reference_dirs=args.reference_dirs,
                generated_per_kind=args.generated_per_kind, max_per_group=args.max_per_group,
                seed=args.seed, progress=bar.update,
            )
    except (ValueError, OSError) as err:
        return fail(err)
    worst = min(stats["held_out"].items(), key=lambda kv: kv[1]["share"])
    print(
        f"gate v2 written to {model_dir / 'hfxray.json'}: {stats['n_chest']} chest films, "
        f"{stats['n_negative']} negatives, threshold {stats['chest']['threshold']:.3f}, "
        f"weakest held-out group {worst[0]} ({worst[1]['measure']} {worst[1]['share']:.1%}, n={worst[1]['n']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
