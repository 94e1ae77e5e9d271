"""Hugging Face Space entry point: `python space/app.py` (or `make demo`). All logic: hfxray.space_app."""

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Run from a clone without installing: the repository root (parent of space/) holds hfxray/.
# On a Space, hfxray/ is uploaded next to this file, which is already on sys.path.
_root = Path(__file__).resolve().parent.parent
if (_root / "hfxray").is_dir() and str(_root) not in sys.path:
    sys.path.insert(0, str(_root))

from hfxray.space_app import main

if __name__ == "__main__":
    main()
