"""benchmarks/seed_average.py: two seeds' probabilities and weights averaged, on real films, real tiny models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import seed_average  # noqa: E402
from corpus_helpers import source_corpus  # noqa: E402

from hfxray.images import load_image  # noqa: E402
from hfxray.inference import Predictor  # noqa: E402

CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory) -> Path:
    """Four real films per class, one source named "site-a"."""
    return source_corpus(shared_data, tmp_path_factory.mktemp("seed_average") / "corpus", CLASSES, 4, lambda i: "site-a")


@pytest.fixture(scope="module")
def fold_models(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """Two "seeds" of one fold: the tiny model, and a copy whose float weights are changed."""
    root = tmp_path_factory.mktemp("fold_models")
    first = Path(shutil.copytree(tiny_model_dir, root / "recipe" / "site-a-seed42"))
    second = Path(shutil.copytree(tiny_model_dir, root / "recipe" / "site-a-seed43"))
    state = load_file(second / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    changed = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in state.items()}
    save_file(changed, second / "model.safetensors", metadata={"format": "pt"})
    key = next(k for k, v in state.items() if v.is_floating_point())
    assert not torch.equal(load_file(first / "model.safetensors")[key], changed[key])
    return root


def test_weight_average_is_the_mean_of_the_seeds(fold_models: Path, tmp_path: Path) -> None:
    dirs = [fold_models / "recipe" / f"site-a-seed{s}" for s in (42, 43)]
    soup = seed_average.average_weights(dirs, tmp_path / "soup")
    a, b, mean = (load_file(d / "model.safetensors") for d in (*dirs, soup))
    for key, value in mean.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2)
        else:
            assert torch.equal(value, a[key])
    assert (soup / "config.json").is_file() and not list(soup.glob("*.onnx"))


def test_different_models_are_not_averaged(fold_models: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(fold_models / "recipe" / "site-a-seed43", tmp_path / "other"))
    state = load_file(other / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="different weights"):
        seed_average.average_weights([fold_models / "recipe" / "site-a-seed42", other], tmp_path / "soup")


@pytest.mark.slow
def test_rows_for_each_seed_and_both_averages(corpus: Path, fold_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "seed_average.py"), "--choice", "recipe",
        "--model_root", str(fold_models), "--data_dir", str(corpus), "--output", str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["seed 42", "seed 43", seed_average.PROBABILITY_AVERAGE, seed_average.WEIGHT_AVERAGE]
    assert all(r["n"] == 12 and r["fold"] == "site-a" for r in rows)
    # the probability average calls each film what the mean of the two seeds' probabilities says
    films = sorted(p for p in corpus.rglob("*") if p.suffix in (".jpg", ".jpeg", ".png"))
    labels = np.array([CLASSES.index(p.parent.name) for p in films])
    images = [load_image(p, draft_size=224) for p in films]
    probs = [Predictor.from_pretrained(fold_models / "recipe" / f"site-a-seed{s}", backend="torch").predict_images(images)
             for s in (42, 43)]
    pred = np.mean(probs, axis=0).argmax(axis=1)
    expected = {c: {d: int(((labels == i) & (pred == j)).sum()) for j, d in enumerate(CLASSES)} for i, c in enumerate(CLASSES)}
    assert {c: v["called"] for c, v in rows[2]["per_class"].items()} == expected
    assert "| site-a | weight average (soup) | 12 |" in run.stdout


def test_no_fold_models_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "seed_average.py"), "--model_root", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert run.returncode == 2 and "no fold has models" in run.stderr.strip().splitlines()[-1]
