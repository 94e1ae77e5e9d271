"""hfxray.data.checks.metadata_problems: metadata.csv against the files it describes (real files)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from hfxray import data
from hfxray.data.checks import metadata_problems


def _write_folder(root: Path, rows: list[str], files: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(root / name)
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "source"])
        writer.writerows([name, "somewhere"] for name in rows)


def test_consistent_metadata_has_no_problems(tmp_path: Path) -> None:
    files = ["Covid/a.png", "Normal/b.png"]
    _write_folder(tmp_path, files, files)
    assert metadata_problems(tmp_path) == []
    assert metadata_problems(tmp_path / "Covid") == []  # no metadata.csv: nothing to check


def test_repeated_missing_and_unlisted_files_are_named(tmp_path: Path) -> None:
    files = ["Covid/a.png", "Covid/b.png", "Normal/c.png", "Normal/unlisted.png"]
    rows = ["Covid/a.png", "Covid/b.png", "Normal/c.png", "Normal/c.png", "Normal/c.png", "Normal/gone.png"]
    _write_folder(tmp_path, rows, files)
    problems = metadata_problems(tmp_path)
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    repeated, missing, unlisted = problems
    assert "2 extra row(s)" in repeated and "Normal/c.png x3" in repeated
    assert "1 row(s)" in missing and "gone.png" in missing
    assert "1 image file(s) have no row" in unlisted and "unlisted.png" in unlisted

    report = data.check_folder(tmp_path, image_size=32)
    assert report.metadata_problems == problems
    assert "3 metadata problem(s)" in report.format()
