"""hfxray.confounding: the metadata-only baseline and the class x source tables, on real files made here."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray import data
from hfxray.data import confounding

CLASSES = ["Covid", "Normal"]


def _film(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random grey picture with a random dark frame: every film differs, no class cue."""
    low = Image.fromarray(rng.integers(40, 220, (7, 6), dtype=np.uint8))
    arr = np.asarray(low.resize(size, Image.Resampling.BICUBIC)).copy()
    k = int(rng.integers(0, 6))
    if k:
        arr[:k], arr[-k:], arr[:, :k], arr[:, -k:] = 0, 0, 0, 0
    return Image.fromarray(arr).convert("RGB")


def _write(image: Image.Image, path: Path, rng: np.random.Generator) -> None:
    """PNG or JPEG at a random quality, chosen independently of the class."""
    if rng.random() < 0.5:
        image.save(path.with_suffix(".png"))
    else:
        image.save(path.with_suffix(".jpg"), quality=int(rng.integers(70, 96)))


def _folder(
    root: Path, sizes: dict[str, tuple[int, int] | None], n: int | dict[str, int] = 30, seed: int = 0
) -> list[Path]:
    """``root/<class>/<file>``; a class with size None gets sizes drawn from one shared range."""
    rng = np.random.default_rng(seed)
    for cls, size in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n if isinstance(n, int) else n[cls]):
            side = size or (int(rng.integers(150, 260)), int(rng.integers(150, 260)))
            _write(_film(rng, side), root / cls / f"{i:03d}", rng)
    return sorted(p for p in root.rglob("*") if p.is_file())


def _labels(paths: list[Path]) -> list[int]:
    return [CLASSES.index(p.parent.name) for p in paths]


def test_file_features_read_the_header_and_the_border(tmp_path: Path) -> None:
    path = tmp_path / "film.jpg"
    arr = np.full((200, 300), 128, dtype=np.uint8)
    arr[:, :75] = 0  # a black quarter on the left: covers the whole left border strip
    Image.fromarray(arr).save(path, quality=75)
    f = confounding.file_features(path)
    assert (f["width"], f["height"], f["aspect"]) == (300.0, 200.0, 1.5)
    assert f["format_jpeg"] == 1.0 and f["format_png"] == 0.0 and f["jpeg_tables"] == 1.0
    assert abs(f["jpeg_quality"] - 75) <= 2  # an IJG table: the estimate recovers the quality
    assert f["file_kbytes"] == pytest.approx(path.stat().st_size / 1024)
    assert f["left_mean"] < 10 < 100 < f["right_mean"] and f["border_black"] > 0
    assert f["colour_max"] == 0.0
    assert set(f) <= set(confounding.BASELINE_FEATURES)


def test_jpeg_quality_estimate_follows_the_encoder(tmp_path: Path) -> None:
    image = _film(np.random.default_rng(1), (128, 128))
    estimates = []
    for q in (30, 60, 90):
        image.save(tmp_path / f"q{q}.jpg", quality=q)
        with Image.open(tmp_path / f"q{q}.jpg") as im:
            estimates.append(confounding.jpeg_quality(im.quantization))
    assert [abs(e - q) <= 2 for e, q in zip(estimates, (30, 60, 90), strict=True)] == [True] * 3
    assert np.isnan(confounding.jpeg_quality(None))


def test_baseline_learns_a_class_that_is_the_image_size(tmp_path: Path) -> None:
    paths = _folder(tmp_path / "data", {"Covid": (300, 240), "Normal": (200, 260)})
    x, ok = confounding.feature_matrix(paths)
    assert ok == list(range(len(paths)))
    result = confounding.metadata_baseline(x, _labels(paths), CLASSES)
    assert result["n"] == 60 and result["chance"] == 0.5
    assert result["accuracy"] >= 0.9 and result["accuracy_ci95"][0] > result["chance"]
    assert result["level"] == "high" and "can be learned from where the films come from" in result["verdict"]
    assert {"width", "height", "aspect", "megapixels"} & set(list(result["top_features"])[:3])


def test_baseline_is_near_chance_when_files_say_nothing_about_the_class(tmp_path: Path) -> None:
    paths = _folder(tmp_path / "data", {"Covid": None, "Normal": None})
    x, _ = confounding.feature_matrix(paths)
    result = confounding.metadata_baseline(x, _labels(paths), CLASSES)
    lo, hi = result["accuracy_ci95"]
    assert lo <= result["chance"] <= hi  # the interval covers chance
    assert result["level"] == "low" and result["verdict"].startswith("LOW")


def test_groups_keep_a_patients_films_in_one_fold(tmp_path: Path) -> None:
    """With patient groups the folds are StratifiedGroupKFold; a patient's films never straddle."""
    paths = _folder(tmp_path / "data", {"Covid": (300, 240), "Normal": (200, 260)}, n=20)
    x, _ = confounding.feature_matrix(paths)
    groups = [f"{p.parent.name}-{int(p.stem) // 4}" for p in paths]  # 5 patients per class, 4 films each
    result = confounding.metadata_baseline(x, _labels(paths), CLASSES, groups=groups, by={"patient": groups})
    assert result["cv"].startswith("StratifiedGroupKFold")
    assert sum(r["n"] for r in result["by_patient"].values()) == result["n"] == 40


def test_crosstab_and_report_match_the_folder(tmp_path: Path) -> None:
    """Two folders, one with metadata.csv: the class x source table counts what is on disk."""
    rng = np.random.default_rng(3)
    multi = tmp_path / "multi"
    rows = []
    plan = {("Covid", "hospital-a"): 7, ("Normal", "hospital-a"): 3, ("Normal", "hospital-b"): 6}
    for (cls, source), n in plan.items():
        (multi / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{cls}/{source}-{i}.png"
            _film(rng, (96, 80)).save(multi / name)
            rows.append({"file_name": name, "source": source, "population": "adult", "patient_id": ""})
    with open(multi / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seed = _folder(tmp_path / "seedset" / "train", {"Covid": (120, 100), "Normal": (90, 110)}, n=5, seed=4)

    ds, bad = data.load_image_folder([multi, tmp_path / "seedset" / "train"], image_size=32)
    assert bad == []
    report = confounding.confounding_report(ds)
    table = report["tables"]["source"]
    on_disk = Counter(plan)
    on_disk.update((p.parent.name, "seedset") for p in seed)
    expected = {
        src: [on_disk.get((cls, src), 0) for cls in table["columns"]]
        for src in ("hospital-a", "hospital-b", "seedset")
    }
    assert table["rows"] == expected and table["n"] == len(ds) == 26
    assert table["single_class"] == {"hospital-b": "Normal"}
    assert report["tables"]["population"]["rows"] == {"adult": [7, 9], "unknown": [5, 5]}
    assert sum(r["n"] for r in report["baseline"]["by_source"].values()) == report["baseline"]["n"] == 26
    text = confounding.format_confounding(report)
    assert "class x source" in text and "hospital-b" in text and "Metadata-only baseline" in text


def test_check_data_prints_and_writes_the_confounding_report(tmp_path: Path) -> None:
    """scripts/check_data.py on two folders: each source is mostly one class and has its own size."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    a = tmp_path / "hospital-a" / "train"
    b = tmp_path / "hospital-b"
    _folder(a, {"Covid": (300, 240), "Normal": (300, 240)}, n={"Covid": 20, "Normal": 3}, seed=5)
    _folder(b, {"Covid": (200, 260), "Normal": (200, 260)}, n={"Covid": 3, "Normal": 20}, seed=6)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    out_json, out_html = tmp_path / "check.json", tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, str(repo / "scripts/check_data.py"), str(a), str(b), "--json", str(out_json)]
        + ["--html", str(out_html)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class x source" in proc.stdout and "HIGH confounding" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["counts"] == {"Covid": 23, "Normal": 23}
    table = report["confounding"]["tables"]["source"]
    assert table["rows"] == {"hospital-a": [20, 3], "hospital-b": [3, 20]}
    assert table["single_class"] == {} and 0.5 < table["cramers_v"] < 1
    baseline = report["confounding"]["baseline"]
    assert baseline["level"] == "high" and baseline["accuracy_ci95"][0] > baseline["chance"]
    html = (out_html / "report.html").read_text()
    assert "Class x source" in html and "Metadata-only baseline" in html and "hospital-b" in html
