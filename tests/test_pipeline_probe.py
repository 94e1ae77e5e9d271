"""benchmarks/pipeline_probe.py: its measurement tells an export history apart when there is one,
and not when there is none (real films, the real ImageNet backbone)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pipeline_probe  # noqa: E402

from hfxray.audit import jpeg_recompress  # noqa: E402
from hfxray.images import load_image  # noqa: E402


def test_preprocessing_names_give_the_input_they_say(shared_data: Path) -> None:
    film = load_image(next((shared_data / "Normal").iterdir()), draft_size=224)
    assert pipeline_probe.preprocessing("bilinear-128")(film).size == (128, 128)
    assert pipeline_probe.preprocessing("lanczos-224")(film).size == (224, 224)
    low = pipeline_probe.preprocessing("lowpass-56")(film)
    assert low.size == (224, 224)
    # a low-pass keeps less detail than the plain resize of the same film
    plain = np.asarray(pipeline_probe.preprocessing("bilinear-224")(film), dtype=float)
    assert np.abs(np.diff(np.asarray(low, dtype=float), axis=1)).mean() < np.abs(np.diff(plain, axis=1)).mean()
    with pytest.raises(ValueError, match="unknown preprocessing"):
        pipeline_probe.preprocessing("bicubic-224")


def test_probe_reads_a_visible_export_and_not_an_identical_copy(shared_data: Path) -> None:
    from hfxray.inference import Predictor
    from hfxray.modeling import offline_backbone_dir

    paths = [p for cls in ("Normal", "Viral Pneumonia") for p in sorted((shared_data / cls).iterdir())[:20]]
    films = [load_image(p, draft_size=224) for p in paths]
    classes = np.array([p.parent.name for p in paths])
    versions = {
        "as_stored": films,
        "archive_copy": list(films),  # the same pixels: nothing to read
        "other_export": [jpeg_recompress(f, 5) for f in films],  # blocky JPEG 5: obvious
    }
    extractor = Predictor.from_pretrained(offline_backbone_dir("efficientnet-lite0"), backend="torch")
    row = pipeline_probe.probe("bilinear-224", versions, classes, np.arange(len(films)), extractor)
    assert row["detect_archive"] <= 0.6
    assert row["detect_other"] >= 0.9
    assert 0.0 <= row["children_signal"] <= 1.0
