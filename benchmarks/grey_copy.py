#!/usr/bin/env python
"""A grey copy of an image folder, for the "grey films" leave-one-source-out screening (docs/loso.md).

    HF_HUB_OFFLINE=1 python benchmarks/grey_copy.py ../shared/data/covid19-xray/train /tmp/grey/covid19-xray/train

The seed archive's films are the only colour ones in the shared data (posterized and painted green
in the files; every `cxr-multisource` film is one-channel grey), so colour names their source. This
writes each film read by hfxray's one image reader, turned to one-channel grey (Pillow's ITU-R 601
luma) and saved losslessly as PNG under the same class folder, so that `benchmarks/loso.py --data_dir
COPY ../shared/data/cxr-multisource` trains and tests with that cue removed and nothing else changed
(the folder keeps its source name: `covid19-xray` for `.../covid19-xray/train`). A screening, not an
option: it was not adopted (docs/loso.md). Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hfxray.images import is_supported_path, load_image  # noqa: E402


def grey_copy(src: Path, dst: Path) -> int:
    """Write every readable film of ``src``'s class folders to ``dst`` as grey PNG; returns how many."""
    written: set[Path] = set()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and is_supported_path(p)):
        out = dst / path.relative_to(src).with_suffix(".png")
        if out in written:  # a.jpg and a.png side by side: both would become a.png
            raise SystemExit(f"error: two films named {path.stem} in {path.parent} would both become {out}")
        if out.exists():  # never overwrite: an earlier copy may hold other films
            raise SystemExit(f"error: {out} already exists; write the copy to a new folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        load_image(path).convert("L").save(out)
        written.add(out)
    return len(written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a class-folder image folder (e.g. covid19-xray/train)")
    parser.add_argument("dst", type=Path, help="a new folder (must not hold the films already)")
    args = parser.parse_args(argv)
    print(f"wrote {grey_copy(args.src, args.dst)} grey films to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
