"""Per-group evaluation (`evaluate_folder(group_by=...)`): real files, a real (tiny) model, sums checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray import metrics
from hfxray.evaluation import evaluate_folder


def _film(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    low = Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8))
    return low.resize(size, Image.Resampling.BICUBIC).convert("RGB")


@pytest.fixture
def two_folders(tmp_path: Path) -> list[Path]:
    """``multi`` with metadata.csv (sources a, b; two populations) and ``plain`` without one."""
    rng = np.random.default_rng(7)
    multi, plain = tmp_path / "multi", tmp_path / "plain" / "train"
    rows = []
    plan = [
        ("Covid", "a", "adult", 3),
        ("Normal", "a", "adult", 2),
        ("Normal", "b", "child", 3),
        ("Viral Pneumonia", "b", "child", 2),
    ]
    for cls, source, population, n in plan:
        (multi / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{cls}/{source}{i}.jpg"
            _film(rng, (140, 120)).save(multi / name, quality=90)
            rows.append({"file_name": name, "source": source, "population": population})
    with open(multi / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file_name", "source", "population"])
        writer.writeheader()
        writer.writerows(rows)
    for cls in ("Covid", "Normal"):
        (plain / cls).mkdir(parents=True)
        for i in range(2):
            _film(rng, (100, 100)).save(plain / cls / f"{i}.png")
    return [multi, plain]


def test_per_group_metrics_sum_to_the_whole(
    two_folders: list[Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = evaluate_folder(
        two_folders, out, model=tiny_model_dir, backend="torch", group_by=["source", "population"]
    )
    assert result["n"] == 14
    written = json.loads((out / "metrics.json").read_text())
    assert written["groups"] == result["groups"]
    whole_cm = np.asarray(result["confusion_matrix"])
    expected = {"source": {"a": 5, "b": 5, "plain": 4}, "population": {"adult": 5, "child": 5, "unknown": 4}}
    for column, per in result["groups"].items():
        assert {v: r["n"] for v, r in per.items()} == expected[column]
        assert sum(r["n"] for r in per.values()) == result["n"]
        np.testing.assert_array_equal(sum(np.asarray(r["confusion_matrix"]) for r in per.values()), whole_cm)
        correct = sum(round(r["accuracy"] * r["n"]) for r in per.values())
        assert correct == round(result["accuracy"] * result["n"])
        for r in per.values():  # every metric with its interval, per group
            assert len(r["accuracy_ci95"]) == 2 and set(r["per_class"]) == set(result["classes"])
    # a one-class-per-row source still gets the other classes' specificity (films not called them)
    b = result["groups"]["source"]["b"]["per_class"]["Covid"]
    assert b["n"] == 0 and b["specificity"] is not None and b["sensitivity"] is None

    html = (out / "report.html").read_text()
    assert "By source (95% intervals)" in html and "By population (95% intervals)" in html
    with (out / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_source = {s: sum(1 for r in rows if r["source"] == s) for s in expected["source"]}
    assert by_source == expected["source"]


def test_unknown_group_column_is_a_one_line_error(
    two_folders: list[Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="cannot group by hospital") as err:
        evaluate_folder(
            two_folders[0], tmp_path / "r", model=tiny_model_dir, backend="torch", group_by=["hospital"]
        )
    assert "\n" not in str(err.value) and "source" in str(err.value)
    assert not (tmp_path / "r").exists()


def test_classification_report_by_group_partitions_the_films() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    groups = rng.choice(["x", "y", "z"], 60)
    per = metrics.classification_report_by_group(y, probs, ["A", "B", "C"], groups)
    assert list(per) == ["x", "y", "z"]
    assert sum(r["n"] for r in per.values()) == 60
    whole = metrics.classification_report(y, probs, ["A", "B", "C"])
    np.testing.assert_array_equal(
        sum(np.asarray(r["confusion_matrix"]) for r in per.values()), whole["confusion_matrix"]
    )
    with pytest.raises(ValueError, match="group values"):
        metrics.classification_report_by_group(y, probs, ["A", "B", "C"], groups[:10])
