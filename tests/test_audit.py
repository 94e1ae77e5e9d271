"""Shortcut audit on tiny real models trained here on synthetic films with a known shortcut (or none).

- corner: the class is a bright patch in a corner, the centre is random -> the audit must say "high".
- centre: the class is a shape in the centre, borders are random -> the audit must say "low".
- resolution: one class is stored at low resolution, the other sharp -> downscaling flips answers.
Each model is saved as a real model directory and audited through `Predictor`, like any user model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification

from hfxray.audit import (
    archive_copy,
    border_only,
    downscale,
    invariance_transforms,
    lungs_only,
    run_audit,
    write_audit_to_model,
)
from hfxray.data import dataset_fingerprint, file_sha256, image_phash
from hfxray.inference import Predictor
from hfxray.modeling import make_processor

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["A", "B"]
SIZE = 128  # stored film size
INPUT = 64  # model input size
N_TRAIN, N_AUDIT = 40, 24  # per class


def _smooth_noise(rng: np.random.Generator, cells: int = 16) -> np.ndarray:
    """Low-frequency random texture in [0, 1] (survives downscaling, unlike pixel noise)."""
    small = rng.uniform(0.2, 0.6, (cells, cells)).astype(np.float32)
    return np.array(Image.fromarray(small, mode="F").resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def corner_film(label: int, rng: np.random.Generator) -> np.ndarray:
    """Class = bright patch in the top-left corner (a text-marker stand-in); the centre is random."""
    img = _smooth_noise(rng)
    cy, cx = rng.integers(40, 88, 2)
    img[cy - 12 : cy + 12, cx - 12 : cx + 12] += rng.uniform(0.1, 0.4)  # uninformative centre blob
    if label == 0:
        img[4:22, 4:22] = 1.0
    return img


def centre_film(label: int, rng: np.random.Generator) -> np.ndarray:
    """Class = a horizontal (A) or vertical (B) bright bar in the centre; borders are random."""
    img = _smooth_noise(rng)
    cy, cx = SIZE // 2 + rng.integers(-6, 7, 2)
    if label == 0:
        img[cy - 7 : cy + 7, cx - 26 : cx + 26] = 1.0
    else:
        img[cy - 26 : cy + 26, cx - 7 : cx + 7] = 1.0
    return img


def resolution_film(label: int, rng: np.random.Generator) -> np.ndarray:
    """Same smooth content in both classes; B is stored sharp (fine grain), A at low resolution."""
    img = _smooth_noise(rng, cells=8)
    if label == 1:
        grain = rng.normal(0.0, 0.12, (SIZE // 2, SIZE // 2)).astype(np.float32)
        img = img + np.kron(grain, np.ones((2, 2), np.float32))
    return img


def _write_folder(
    root: Path, make: Callable[[int, np.random.Generator], np.ndarray], n: int, seed: int
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(make(label, rng), 0, 1)
            Image.fromarray((arr * 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i:03d}.png")
    return root


def _intensity_jitter(x: torch.Tensor) -> torch.Tensor:
    """Random gamma and contrast per image (the usual radiograph augmentation), on [-1, 1] inputs."""
    u = ((x + 1) / 2).clamp(0, 1)
    n = len(u)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.5, 0.5))
    u = u**gamma
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    u = ((u - mean) * torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3) + mean).clamp(0, 1)
    return u * 2 - 1


def _train_model_dir(train_dir: Path, model_dir: Path, seed: int = 0) -> Path:
    """Train a tiny ResNet for a few epochs and save it the way hfxray saves models."""
    torch.manual_seed(seed)
    processor = make_processor([0.5] * 3, [0.5] * 3, INPUT)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=2,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    model = ResNetForImageClassification(config)
    paths = sorted(train_dir.glob("*/*.png"))
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    images = [Image.open(p).convert("RGB") for p in paths]
    x = torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _epoch in range(20):
        perm = torch.randperm(len(x))
        for start in range(0, len(x), 16):
            idx = perm[start : start + 16]
            loss = model(pixel_values=_intensity_jitter(x[idx]), labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    ds = datasets.Dataset.from_dict(
        {
            "path": [str(p.resolve()) for p in paths],
            "sha256": [file_sha256(p) for p in paths],
            "phash": [image_phash(im) for im in images],
        }
    )
    meta = {"classes": CLASSES, "image_size": INPUT, "training_data": dataset_fingerprint(ds, root=train_dir)}
    (model_dir / "hfxray.json").write_text(json.dumps(meta), encoding="utf-8")
    return model_dir


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny convolutions on a shared 2-core machine run ~10x faster on one thread than on two
    contending ones; restore the process-wide setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit")


def _setup(workdir: Path, name: str, make, seed: int) -> tuple[Path, Path]:
    train = _write_folder(workdir / name / "train", make, N_TRAIN, seed)
    audit = _write_folder(workdir / name / "audit", make, N_AUDIT, seed + 1000)
    return _train_model_dir(train, workdir / name / "model"), audit


def test_masks_and_downscale_change_only_what_they_should():
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.uniform(0, 1, (100, 200, 3)) * 255).astype(np.uint8))
    arr = np.asarray(img)
    b = np.asarray(border_only(img))
    assert (b[0] == arr[0]).all() and (b[:, 0] == arr[:, 0]).all()  # borders untouched
    assert len(np.unique(b[50, 40:160].reshape(-1, 3), axis=0)) == 1  # centre is one grey
    lo = np.asarray(lungs_only(img))
    assert (lo[50, 100] == arr[50, 100]).all()  # centre untouched
    assert len(np.unique(lo[:5].reshape(-1, 3), axis=0)) == 1 and (lo[0, 0] == b[50, 100]).all()
    small = downscale(img, 25)
    assert small.size == img.size
    assert np.abs(np.asarray(small, np.float32) - arr).mean() > 20  # pixel noise is gone


def test_archive_copy_is_the_same_film_squashed_and_recompressed(shared_data: Path):
    path = sorted((shared_data / "Normal").iterdir())[0]
    with Image.open(path) as im:
        film = im.convert("RGB")
    copy = archive_copy(film)
    assert copy.size == (224, 224) and copy.mode == "RGB"
    arr = np.asarray(copy, np.float32)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey, as archives store it
    reference = np.asarray(film.convert("L").resize((224, 224), Image.Resampling.BILINEAR), np.float32)
    assert np.corrcoef(arr[..., 0].ravel(), reference.ravel())[0, 1] > 0.95  # the same film
    assert not np.array_equal(arr[..., 0], reference)  # yet other pixels (Lanczos + JPEG)
    assert "archive_224" in {t.name for t in invariance_transforms()}


@pytest.fixture(scope="module")
def corner_audit(workdir) -> dict:
    model_dir, audit_dir = _setup(workdir, "corner", corner_film, seed=1)
    return run_audit(str(model_dir), audit_dir, output_dir=workdir / "corner" / "out", downscale_to=(48,))


def test_audit_flags_planted_corner_shortcut(workdir, corner_audit):
    result = corner_audit
    assert result["full_image"]["accuracy"] >= 0.9
    chance = result["chance"]["majority"]
    assert chance == pytest.approx(0.5)
    border = result["border_only"]
    assert border["accuracy"] >= 0.85 and border["ci95"][0] > chance
    assert border["level"] == "high"
    assert result["lungs_only"]["accuracy"] <= 0.7  # blanking the corners removes the evidence
    assert result["verdict"]["shortcut_risk"] == "high"
    assert any("border-only" in r and "shortcut" in r for r in result["verdict"]["reasons"])
    assert result["leakage"]["measured"] and result["leakage"]["n_exact"] == 0
    out = workdir / "corner" / "out"
    assert json.loads((out / "audit.json").read_text())["verdict"]["shortcut_risk"] == "high"
    page = (out / "audit.html").read_text()
    assert "shortcut risk" in page and "not a diagnostic device" in page
    for png in ("masks.png", "invariance.png", "heatmaps.png"):
        assert Image.open(out / png).size[0] > 100


def test_audit_passes_centre_model_and_finds_leaked_copies(workdir, corner_audit):
    model_dir, audit_dir = _setup(workdir, "centre", centre_film, seed=2)
    train = workdir / "centre" / "train"
    # Two exact copies and one re-encoded copy of training films hidden in the audit folder.
    shutil.copy(train / "A" / "000.png", audit_dir / "A" / "copy_exact.png")
    shutil.copy(train / "B" / "001.png", audit_dir / "B" / "copy_exact.png")
    Image.open(train / "B" / "002.png").save(audit_dir / "B" / "copy_near.jpg", quality=92)
    corner = corner_audit

    result = run_audit(
        Predictor.from_pretrained(model_dir),
        audit_dir,
        output_dir=workdir / "centre" / "out",
        downscale_to=(48,),
    )
    assert result["n"] == 2 * N_AUDIT + 3
    assert result["full_image"]["accuracy"] >= 0.9
    assert result["border_only"]["level"] == "low"
    assert result["border_only"]["ci95"][0] <= result["chance"]["majority"]
    assert result["lungs_only"]["accuracy"] >= 0.85
    assert result["invariance"]["max_flip_rate"] <= 0.1
    assert result["verdict"]["shortcut_risk"] == "low", result["verdict"]
    # The centre model's heat sits more inside the lung box than the corner model's.
    assert result["heatmap"]["mean_central_mass"] > corner["heatmap"]["mean_central_mass"]
    leak = result["leakage"]
    assert (leak["n_exact"], leak["n_near"]) == (2, 1)
    assert {Path(x["path"]).name for x in leak["images"]} == {"copy_exact.png", "copy_near.jpg"}
    assert any("copies of training images" in w for w in result["verdict"]["warnings"])

    write_audit_to_model(model_dir, result)
    meta = json.loads((model_dir / "hfxray.json").read_text())
    assert meta["audit"]["shortcut_risk"] == "low" and meta["training_data"]["n"] == 2 * N_TRAIN
    card = ModelCard.load(model_dir / "README.md")
    assert "Shortcut risk: **low**" in card.text


def test_invariance_flags_class_stored_at_low_resolution(workdir):
    model_dir, audit_dir = _setup(workdir, "resolution", resolution_film, seed=3)
    result = run_audit(
        str(model_dir),
        audit_dir,
        output_dir=workdir / "resolution" / "out",
        downscale_to=(32,),
        heatmaps=False,
    )
    assert result["full_image"]["accuracy"] >= 0.9
    down = result["invariance"]["transforms"]["downscale_32"]
    assert down["n"] == 2 * N_AUDIT
    assert down["flip_rate"] >= 0.35 and down["flip_ci95"][0] >= 0.1
    assert down["accuracy"] <= 0.65  # the sharp class is now called the low-resolution one
    assert result["invariance"]["max_flip_transform"] == "downscale_32"
    assert result["invariance"]["level"] == "high"
    assert result["verdict"]["shortcut_risk"] == "high"
    assert any("downscaled to 32 px" in r for r in result["verdict"]["reasons"])
    assert result["heatmap"]["measured"] is False


def test_audit_script_end_to_end(workdir):
    model_dir = workdir / "resolution" / "model"
    if not model_dir.is_dir():  # this test run alone
        _setup(workdir, "resolution", resolution_film, seed=3)
    out = workdir / "script_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    args = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "audit.py"),
        "--data_dir",
        str(workdir / "resolution" / "audit"),
        "--model",
        str(model_dir),
        "--output_dir",
        str(out),
        "--downscale_to",
        "32",
        "--no_heatmaps",
        "--max_per_class",
        "10",
        "--write_to_model",
    ]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shortcut risk: high (n=20)" in proc.stdout
    assert json.loads((out / "audit.json").read_text())["n"] == 20
    assert (
        json.loads((model_dir / "hfxray.json").read_text())["audit"]["max_flip_transform"] == "downscale_32"
    )
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        run_audit(str(model_dir), workdir / "missing", output_dir=out)
