"""Check image folders before training: class counts, unreadable files, duplicates, leakage, confounding.

    python scripts/check_data.py DATA_DIR [DATA_DIR2 ...] [--test_dir TEST_DIR] [--quarantine]
        [--json out.json] [--html REPORT_DIR] [--no_confounding]

The confounding report (class x source and class x population tables, and a metadata-only
baseline: how well a classifier that sees only file properties, never the lungs, predicts the
class) is on by default; it is the first thing to look at before trusting any accuracy.

Exit status 0 when the check ran (findings are printed, not fatal), 1 with a one-line reason
when it could not run (missing folder, wrong layout, ...). The logic is `hfxray.data.check_folder`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import json  # noqa: E402
import os  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from transformers import HfArgumentParser  # noqa: E402

from hfxray.cli import fail  # noqa: E402


@dataclass
class CheckDataArguments:
    data_dir: list[str] = field(
        default_factory=list,
        metadata={"help": "Folder(s) with one sub-folder of images per class (or give them positionally)."},
    )
    test_dir: str | None = field(
        default=None, metadata={"help": "A test folder to check for images shared with DATA_DIR (leakage)."}
    )
    quarantine: bool = field(
        default=False,
        metadata={"help": "Move unreadable files to DATA_DIR/../quarantine/ (logged, never deleted)."},
    )
    json: str | None = field(default=None, metadata={"help": "Also write the report as JSON to this file."})
    html: str | None = field(default=None, metadata={"help": "Also write REPORT_DIR/report.html."})
    confounding: bool = field(
        default=True,
        metadata={
            "help": "Class x source/population tables and the metadata-only baseline (--no_confounding: skip)."
        },
    )
    image_size: int = field(default=224, metadata={"help": "Decode size S (shares the training cache at S)."})
    phash_distance: int = field(
        default=4, metadata={"help": "Max perceptual-hash distance for near duplicates (-1: exact only)."}
    )


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(CheckDataArguments, prog="check_data.py")
    parser.add_argument("data_dir_positional", metavar="DATA_DIR", nargs="*", help="Data folder(s).")
    args, extra = parser.parse_args_into_dataclasses(args=argv)
    data_dirs = [*args.data_dir, *extra.data_dir_positional]
    if not data_dirs:
        parser.error("DATA_DIR is required")

    from hfxray.data import check_folder  # after parsing: --help stays fast

    try:
        report = check_folder(
            data_dirs[0] if len(data_dirs) == 1 else data_dirs,
            test_dir=args.test_dir,
            image_size=args.image_size,
            phash_distance=args.phash_distance,
            move_bad_files=args.quarantine,
            confounding=args.confounding,
        )
    except (OSError, ValueError) as e:
        return fail(" ".join(str(e).split()))
    print(report.format())
    try:
        if args.json:
            out = Path(args.json)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
            os.replace(tmp, out)
            print(f"Report written to {args.json}")
        if args.html:
            print(f"HTML report written to {report.write_html(args.html)}")
    except OSError as e:
        return fail(f"cannot write the report: {' '.join(str(e).split())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
