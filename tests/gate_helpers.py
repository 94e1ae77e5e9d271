"""A small input gate v2, fitted for tests on real films and real non-chest images.

Shared by the gate, Space and browser tests: a gate fitted on a few images per source and kind
(minutes of model time spared), with some files kept out of every fit so that the tests judge
the gate on images it never saw.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED = DATA / "covid19-xray" / "train"
MULTI = DATA / "cxr-multisource"
NOT_CXR = DATA / "not-cxr"


def _files(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(prefix))


# Kept out of every fit below: the tests' unseen examples.
KNEE = _files(NOT_CXR / "knee-xray")[-1]
CT = _files(NOT_CXR / "ct-slice")[-1]
ADULT_FILM = _files(MULTI / "Covid", "cxnet-spain")[-1]  # an adult film from a Spanish hospital
HELD_OUT = {str(KNEE), str(CT), str(ADULT_FILM)}


def fit_small_gate(predictor: Any, *, per_group: int = 12, generated_per_kind: int = 6) -> dict[str, Any]:
    """Gate v2 statistics for ``predictor`` from ``per_group`` images per source / kind (HELD_OUT excluded)."""
    from hfxray import gate_fit as gf

    items = [it for it in gf.chest_items(SEED)[::5]]
    items += [it for it in gf.chest_items(MULTI) if it.source not in HELD_OUT]
    items += [it for it in gf.negative_items(NOT_CXR) if it.source not in HELD_OUT]
    items = gf._cap_groups(items, per_group, seed=0) + gf.generated_items(generated_per_kind, seed=1)
    data = gf.gather_gate_data(predictor, items)
    stats = gf.fit_gate_from_data(data, n_splits=4)
    # the orientation check needs no model pass: more films for it cost seconds, not minutes
    films = gf._cap_groups([it for it in gf.chest_items(SEED) + gf.chest_items(MULTI) if it.source not in HELD_OUT], 40, seed=0)
    stats["orientation"] = gf.fit_orientation(gf.orientation_data(films, predictor.image_size))
    return stats


def gated_model_dir(bundled: Path, out: Path) -> Path:
    """The bundled model when it ships gate v2, else a copy of it with a small gate v2 fitted."""
    from hfxray.gate import GATE_METHOD_V2, read_gate, write_gate
    from hfxray.inference import Predictor

    if (read_gate(bundled) or {}).get("method") == GATE_METHOD_V2:
        return bundled
    copy = Path(shutil.copytree(bundled, out, ignore=shutil.ignore_patterns("*.png", "README.md")))
    write_gate(copy, fit_small_gate(Predictor.from_pretrained(copy)))
    return copy


def noise_png(path: Path, seed: int = 123) -> Path:
    """Uniform grey noise saved as PNG (a fresh seed: not one of the generated training negatives)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (700, 600), dtype=np.uint8)).save(path)
    return path
