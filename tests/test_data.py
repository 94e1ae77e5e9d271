"""hfxray.data: real files generated here (PNG/JPEG/DICOM/corrupt) and the shared radiographs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hfxray import data
from hfxray.images import load_image
from hfxray.modeling import film_format as film_format_of
from hfxray.modeling import make_processor

REPO = Path(__file__).resolve().parents[1]
S = 32


# ---------------------------------------------------------------------------------------------
# generated images: smooth random patterns, so that each is clearly different from the others
# under a perceptual hash while re-encoded copies stay close


def _pattern(seed: int, size: tuple[int, int] = (120, 100)) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8))
    return low.resize(size, Image.Resampling.BICUBIC).convert("RGB")


def _dicom(path: Path, arr: np.ndarray) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(arr, "MONOCHROME2", 8)
    ds.save_as(path, enforce_file_format=True)
    return path


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Two classes of PNG/JPEG, one DICOM, plus a corrupt PNG, a text file and an empty JPEG."""
    root = tmp_path / "train"
    seed = 0
    for cls in ("Covid", "Normal"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            _pattern(seed := seed + 1).save(root / cls / f"{i}.png")
            _pattern(seed := seed + 1).save(root / cls / f"{i}.jpg", quality=90)
    _dicom(root / "Normal" / "scan.dcm", np.asarray(_pattern(99).convert("L")))
    (root / "Covid" / "corrupt.png").write_bytes(_png_bytes(_pattern(50))[:60])  # truncated
    (root / "Normal" / "notes.txt").write_text("not an image")
    (root / "Normal" / "empty.jpeg").write_bytes(b"")
    return root


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_load_image_folder_drops_bad_files_and_reads_dicom(messy_folder: Path) -> None:
    ds, bad = data.load_image_folder(messy_folder, image_size=S)

    assert ds.features["label"].names == ["Covid", "Normal"]
    bad_names = {Path(b.path).name: b.reason for b in bad}
    assert set(bad_names) == {"corrupt.png", "notes.txt", "empty.jpeg"}
    assert bad_names["notes.txt"] == data.NOT_AN_IMAGE_REASON
    assert all(r and "\n" not in r for r in bad_names.values())
    assert all(Path(b.path).is_absolute() and Path(b.path).exists() for b in bad)  # nothing moved

    names = {Path(p).name: label for p, label in zip(ds["path"], ds["label"], strict=True)}
    assert len(ds) == 13 and set(names) >= {"scan.dcm", "0.png", "2.jpg"}
    assert names["scan.dcm"] == ds.features["label"].str2int("Normal")
    assert Counter(ds["label"]) == {0: 6, 1: 7}
    for row in ds:
        assert row["image"].size == (S, S) and row["image"].mode == "RGB"
        assert Path(row["path"]).parent.parent == messy_folder.resolve()
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert len(row["phash"]) == 16


@pytest.mark.parametrize(
    "film_format", [{}, {"resample": "lanczos", "jpeg_quality": 92}], ids=["bilinear", "archive-format"]
)
def test_cached_image_gives_the_processor_output_of_the_file(tmp_path: Path, film_format: dict) -> None:
    """Evaluating the cached S x S image must equal evaluating the original file, in either input format."""
    root = tmp_path / "train"
    for cls, seed in (("A", 1), ("B", 2)):
        (root / cls).mkdir(parents=True)
        _pattern(seed, size=(640, 530)).save(root / cls / "big.jpg", quality=92)  # JPEG draft applies
        _pattern(seed + 10, size=(300, 410)).save(root / cls / "tall.png")
    processor = make_processor([0.5] * 3, [0.25] * 3, S, **film_format)  # the project processor: PIL backend
    ds, bad = data.load_image_folder(root, **film_format_of(processor))
    assert bad == []
    for row in ds:
        from_file = processor(images=load_image(row["path"], draft_size=S), return_tensors="pt")
        from_cache = processor(images=row["image"], return_tensors="pt")
        torch.testing.assert_close(from_cache["pixel_values"], from_file["pixel_values"], rtol=0, atol=0)


def test_second_load_reuses_the_datasets_cache(messy_folder: Path) -> None:
    first, _ = data.load_image_folder(messy_folder, image_size=S)
    second, bad = data.load_image_folder(messy_folder, image_size=S)
    assert first.cache_files and second.cache_files == first.cache_files
    assert second["sha256"] == first["sha256"] and len(bad) == 3


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("flat", "flat folder"),
        ("nothing", "no class folders"),
        ("empty_class", "is empty"),
        ("one_class", "only one class"),
        ("all_bad", "no readable images"),
    ],
)
def test_layout_errors_are_one_line_value_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    if layout == "flat":
        _pattern(1).save(root / "x.png")
    elif layout in ("empty_class", "one_class", "all_bad"):
        (root / "A").mkdir()
        _pattern(1).save(root / "A" / "x.png")
        if layout != "one_class":
            (root / "B").mkdir()
        if layout == "all_bad":
            (root / "B" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=message) as err:
        data.load_image_folder(root, image_size=S)
    assert "\n" not in str(err.value)


def test_missing_folder_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_image_folder(tmp_path / "nope", image_size=S)


# ---------------------------------------------------------------------------------------------
# quarantine


def test_quarantine_moves_logs_and_never_overwrites(messy_folder: Path) -> None:
    top = messy_folder.parent
    before = _count_files(top)
    _, bad = data.load_image_folder(messy_folder, image_size=S)
    contents = {b.path: Path(b.path).read_bytes() for b in bad}

    qdir = data.quarantine(bad, messy_folder)

    assert qdir == top / "quarantine"
    assert all(not Path(b.path).exists() for b in bad)
    assert (qdir / "Normal" / "notes.txt").read_text() == "not an image"
    assert (qdir / "Covid" / "corrupt.png").read_bytes() == contents[
        str(messy_folder / "Covid" / "corrupt.png")
    ]
    with open(qdir / data.QUARANTINE_LOG, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["original_path"] for r in rows} == set(contents)
    assert all(Path(r["new_path"]).exists() and r["reason"] and r["time"] for r in rows)
    assert _count_files(top) == before + 1  # + the log, nothing deleted

    # the same name again: kept beside the first, not over it
    (messy_folder / "Normal" / "notes.txt").write_text("second")
    data.quarantine([data.BadFile(str(messy_folder / "Normal" / "notes.txt"), "again")], messy_folder)
    assert (qdir / "Normal" / "notes.txt").read_text() == "not an image"
    assert (qdir / "Normal" / "notes-1.txt").read_text() == "second"
    assert _count_files(top) == before + 2  # + the log + the new file, nothing deleted
    with open(qdir / data.QUARANTINE_LOG, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows) + 1

    # imagefolder does not see the quarantine: the folder now loads without bad files
    ds, bad_after = data.load_image_folder(messy_folder, image_size=S)
    assert bad_after == [] and len(ds) == 13


# ---------------------------------------------------------------------------------------------
# duplicates and split


@pytest.fixture
def dup_folder(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """3 classes x 20 distinct images + planted exact and near (rescaled JPEG) copies."""
    root = tmp_path / "train"
    seed = 100
    for cls in ("Covid", "Normal", "Viral Pneumonia"):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            _pattern(seed := seed + 1).save(root / cls / f"{i:02d}.png")
    planted = {
        "exact": ["Normal/05.png", "Normal/copy_of_05.png"],
        "near": ["Covid/03.png", "Covid/smaller_03.jpg"],
        "exact3": ["Viral Pneumonia/07.png", "Viral Pneumonia/a.png", "Viral Pneumonia/b.png"],
    }
    (root / "Normal" / "copy_of_05.png").write_bytes((root / "Normal" / "05.png").read_bytes())
    Image.open(root / "Covid" / "03.png").resize((60, 50)).save(root / "Covid" / "smaller_03.jpg", quality=80)
    for name in ("a.png", "b.png"):
        (root / "Viral Pneumonia" / name).write_bytes((root / "Viral Pneumonia" / "07.png").read_bytes())
    return root, planted


def _rel(root: Path, paths: list[str]) -> list[str]:
    return sorted(Path(p).relative_to(root.resolve()).as_posix() for p in paths)


def test_find_duplicates_names_exact_and_near_copies(dup_folder) -> None:
    root, planted = dup_folder
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    groups = data.find_duplicates(paths)
    found = {tuple(_rel(root, g.members)): g.kind for g in groups}
    assert found == {
        tuple(sorted(planted["exact"])): "exact",
        tuple(sorted(planted["near"])): "near",
        tuple(sorted(planted["exact3"])): "exact",
    }
    # exact-only mode keeps the byte copies and drops the near copy
    exact_only = data.find_duplicates(paths, phash_distance=-1)
    assert {tuple(_rel(root, g.members)) for g in exact_only} == {
        tuple(sorted(planted["exact"])),
        tuple(sorted(planted["exact3"])),
    }


def test_cross_duplicates_finds_leakage_between_folders(dup_folder, tmp_path: Path) -> None:
    root, _ = dup_folder
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    (test_dir / "leak.png").write_bytes((root / "Covid" / "10.png").read_bytes())
    _pattern(10_000).save(test_dir / "fresh.png")
    train_paths = sorted(p for p in root.rglob("*") if p.is_file())
    groups = data.cross_duplicates(train_paths, sorted(test_dir.iterdir()))
    assert [sorted(Path(m).name for m in g.members) for g in groups] == [["10.png", "leak.png"]]
    assert groups[0].kind == "exact"


def test_split_is_stratified_deterministic_and_keeps_groups_together(dup_folder) -> None:
    root, planted = dup_folder
    ds, bad = data.load_image_folder(root, image_size=S)
    assert bad == [] and len(ds) == 64

    splits = data.split_dataset(ds, test_size=0.2, seed=42)
    again = data.split_dataset(ds, test_size=0.2, seed=42)
    other = data.split_dataset(ds, test_size=0.2, seed=7)

    assert splits["validation"]["path"] == again["validation"]["path"]
    assert splits["train"]["path"] == again["train"]["path"]
    assert set(splits["validation"]["path"]) != set(other["validation"]["path"])
    assert sorted(list(splits["train"]["path"]) + list(splits["validation"]["path"])) == sorted(ds["path"])
    assert 0.17 <= len(splits["validation"]) / len(ds) <= 0.23
    val_counts = Counter(splits["validation"]["label"])
    for label, n in Counter(ds["label"]).items():
        assert abs(val_counts[label] - 0.2 * n) <= 1.5  # 20% of each class, up to group rounding

    for split in (splits, other):
        val = {Path(p).relative_to(root.resolve()).as_posix() for p in split["validation"]["path"]}
        for members in planted.values():
            assert len({m in val for m in members}) == 1, members


def test_dataset_fingerprint(dup_folder) -> None:
    root, _ = dup_folder
    ds, _ = data.load_image_folder(root, image_size=S)
    fp = data.dataset_fingerprint(ds)
    lines = sorted(
        f"{Path(p).relative_to(root.resolve()).as_posix()}\t{hashlib.sha256(Path(p).read_bytes()).hexdigest()}"
        for p in ds["path"]
    )
    assert fp["fingerprint"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert fp["n"] == 64 and fp["dir"] == str(root.resolve())
    assert fp["files"][hashlib.sha256((root / "Normal" / "05.png").read_bytes()).hexdigest()] in {
        "Normal/05.png",
        "Normal/copy_of_05.png",
    }
    assert set(fp["phash"]) == {Path(p).relative_to(root.resolve()).as_posix() for p in ds["path"]}
    assert data.dataset_fingerprint(ds.select(range(63)))["fingerprint"] != fp["fingerprint"]


# ---------------------------------------------------------------------------------------------
# transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(values: list[int], size: int = S) -> dict[str, list]:
    return {
        "image": [Image.new("RGB", (size, size), (v, v, v)) for v in values],
        "label": list(range(len(values))),
    }


def test_train_transform_shapes_dtypes_and_normalisation() -> None:
    plain = data.train_transform(S, MEAN, STD, data.augmentation_config("none"), seed=0)
    out = plain(_batch([200, 10], size=S + 8))  # not S x S: resized
    assert set(out) == {"pixel_values", "labels"} and out["labels"] == [0, 1]
    for x, v in zip(out["pixel_values"], (200, 10), strict=True):
        assert x.shape == (3, S, S) and x.dtype == torch.float32
        expected = (v / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
        torch.testing.assert_close(x.mean(dim=(1, 2)), expected.float(), atol=1e-4, rtol=0)


def test_train_transform_is_seeded_and_augments() -> None:
    image = _pattern(3, size=(S, S))
    batch = {"image": [image] * 6, "label": [0] * 6}
    a = data.train_transform(S, MEAN, STD, seed=1)(batch)["pixel_values"]
    b = data.train_transform(S, MEAN, STD, seed=1)(batch)["pixel_values"]
    none = data.train_transform(S, MEAN, STD, data.augmentation_config("none"), seed=1)(batch)["pixel_values"]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert any(not torch.allclose(x, none[0]) for x in a)


def test_all_optional_augmentations_run_and_border_mask_blanks_a_border() -> None:
    config = data.AugmentationConfig(
        border_mask_p=1.0,
        random_erasing_p=1.0,
        downscale_p=1.0,
        jpeg_p=1.0,
        blur_p=1.0,
        noise_p=1.0,
        equalize_p=1.0,
    )
    out = data.train_transform(S, MEAN, STD, config, seed=0)({"image": [_pattern(4, (S, S))], "label": [2]})
    assert out["pixel_values"][0].shape == (3, S, S) and out["labels"] == [2]

    only_mask = data.AugmentationConfig(
        affine_p=0, brightness_contrast_p=0, gamma_p=0, clahe_p=0, border_mask_p=1.0
    )
    zero = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1)
    transform = data.train_transform(S, MEAN, STD, only_mask, seed=0)
    for x in transform(_batch([255] * 4))["pixel_values"]:
        edges = [x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]]
        assert any(torch.allclose(e, zero.view(3, 1).expand_as(e), atol=1e-5) for e in edges)
        assert not torch.allclose(x[:, S // 2, S // 2], zero.view(3))  # centre untouched


def test_every_preset_builds_and_resampling_keeps_the_picture_not_its_pixels() -> None:
    for name in data.AUGMENTATION_PRESETS:
        out = data.train_transform(S, MEAN, STD, data.augmentation_config(name), seed=0)(_batch([128]))
        assert out["pixel_values"][0].shape == (3, S, S)
    only_resample = data.AugmentationConfig(affine_p=0, brightness_contrast_p=0, gamma_p=0, clahe_p=0, resample_p=1.0)
    rng = np.random.default_rng(7)
    texture = _pattern(8, (S, S))  # smooth structure plus pixel-level texture
    arr = np.clip(np.asarray(texture, np.float32) + rng.normal(0, 20, (S, S, 1)), 0, 255).astype(np.uint8)
    batch = {"image": [Image.fromarray(arr)] * 4, "label": [0] * 4}
    plain = data.train_transform(S, MEAN, STD, data.augmentation_config("none"), seed=0)(batch)["pixel_values"][0]
    for x in data.train_transform(S, MEAN, STD, only_resample, seed=3)(batch)["pixel_values"]:
        assert np.corrcoef(x[0].ravel(), plain[0].ravel())[0, 1] > 0.8  # the same picture
        assert float((x - plain).abs().mean()) > 0.05  # its fine texture redrawn
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        data.augmentation_config("pipeline")


def test_eval_transform_is_the_processor() -> None:
    processor = make_processor(MEAN, STD, S)
    batch = {"image": [_pattern(5, (70, 50)), _pattern(6, (S, S))], "label": [1, 0]}
    out = data.eval_transform(processor)(batch)
    assert out["labels"] == [1, 0]
    direct = processor(images=batch["image"], return_tensors="pt")["pixel_values"]
    for x, y in zip(out["pixel_values"], direct, strict=True):
        assert x.shape == (3, S, S) and x.dtype == torch.float32
        torch.testing.assert_close(x, y)


def test_with_transform_on_a_loaded_dataset(dup_folder) -> None:
    root, _ = dup_folder
    ds, _ = data.load_image_folder(root, image_size=S)
    item = ds.with_transform(data.train_transform(S, MEAN, STD, seed=0))[0]
    assert item["pixel_values"].shape == (3, S, S) and isinstance(item["labels"], int)


# ---------------------------------------------------------------------------------------------
# scripts/check_data.py (subprocess, like a user)


def _check_data(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_data.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_check_data_names_duplicates_in_the_shared_data(shared_data: Path, tmp_path: Path) -> None:
    result = _check_data(str(shared_data), "--json", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any("Normal/019.jpeg" in line and "Normal/020.jpeg" in line for line in lines), result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(report["counts"].values()) + len(report["bad_files"]) == 251
    groups = [
        sorted(Path(m).relative_to(shared_data).as_posix() for m in g["members"])
        for g in report["duplicates"]
    ]
    assert ["Normal/019.jpeg", "Normal/020.jpeg"] in groups


def test_check_data_missing_dir_exits_1_with_one_line(tmp_path: Path) -> None:
    result = _check_data(str(tmp_path / "missing"))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_data_test_dir_leakage_and_quarantine(messy_folder: Path, tmp_path: Path) -> None:
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    (test_dir / "leaked.png").write_bytes((messy_folder / "Covid" / "1.png").read_bytes())
    before = _count_files(messy_folder.parent)
    result = _check_data(str(messy_folder), "--test_dir", str(test_dir), "--quarantine")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "corrupt.png" in out and "notes.txt" in out and "empty.jpeg" in out
    leak_lines = [line for line in out.splitlines() if "leaked.png" in line]
    assert len(leak_lines) == 1 and "Covid/1.png" in leak_lines[0]
    assert not (messy_folder / "Covid" / "corrupt.png").exists()
    assert (messy_folder.parent / "quarantine" / "Covid" / "corrupt.png").exists()
    assert _count_files(messy_folder.parent) == before + 1  # the log; nothing deleted


# ---------------------------------------------------------------------------------------------
# the shared radiographs, loaded once


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path):
    return data.load_image_folder(shared_data, image_size=224)


def test_shared_data_split_keeps_known_copies_together(shared_dataset, shared_data: Path) -> None:
    ds, bad = shared_dataset
    assert bad == [] and ds.features["label"].names == ["Covid", "Normal", "Viral Pneumonia"]
    splits = data.split_dataset(ds)
    val = {Path(p).relative_to(shared_data).as_posix() for p in splits["validation"]["path"]}
    for pair in (
        ("Normal/019.jpeg", "Normal/020.jpeg"),
        ("Viral Pneumonia/019.jpeg", "Viral Pneumonia/020.jpeg"),
    ):
        assert (pair[0] in val) == (pair[1] in val)
    assert len(splits["train"]) + len(splits["validation"]) == len(ds) == 251
