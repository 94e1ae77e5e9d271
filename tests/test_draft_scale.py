"""benchmarks/draft_scale.py: its candidate decode must stay a faithful copy of load_image's JPEG path.

factor=2 must give load_image's exact pixels (the benchmark also checks this on every film before it
reports), factor=1 must keep both sides >= S and draft further on a real large film.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from hfxray.images import load_image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "draft_scale.py"


def _module():
    spec = importlib.util.spec_from_file_location("hfxray_benchmarks_draft_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_candidate_decode_matches_load_image_and_drafts_further(shared_data: Path) -> None:
    draft_scale = _module()
    path = max(draft_scale.jpeg_films(shared_data), key=lambda p: min(Image.open(p).size))
    today = draft_scale.decode(path, 224, factor=2)
    np.testing.assert_array_equal(np.asarray(today), np.asarray(load_image(path, draft_size=224, grey=True)))
    assert today.size == load_image(path, draft_size=224).size
    assert min(today.size) >= 2 * 224
    candidate = draft_scale.decode(path, 224, factor=1)
    assert 224 <= min(candidate.size) < 2 * 224
    assert candidate.size[0] < today.size[0]
