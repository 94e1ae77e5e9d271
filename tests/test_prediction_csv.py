"""One CSV schema for predict.py and the Space, with cells a spreadsheet will not run as formulas."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfxray.prediction_csv import (
    PartWriter,
    csv_columns,
    csv_record,
    read_done_paths,
    read_records,
    restore_cell,
    safe_cell,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Covid", "Normal", "Viral Pneumonia"]
EVIL = '=HYPERLINK("x").png'


def _film(shared_data: Path) -> Path:
    return sorted((shared_data / "Normal").iterdir())[0]


def _evil_png(shared_data: Path, folder: Path) -> Path:
    """A real radiograph saved as a PNG whose name is a spreadsheet formula."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / EVIL
    with Image.open(_film(shared_data)) as im:
        im.save(path, format="PNG")
    return path


@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "'plain"])
def test_formula_cells_are_neutralised_and_restorable(text):
    cell = safe_cell(text)
    assert cell == "'" + text
    assert restore_cell(cell) == text


@pytest.mark.parametrize("text", ["Normal", "/data/a.png", "a=b.png", "", "0.25"])
def test_ordinary_cells_are_unchanged(text):
    assert safe_cell(text) == text == restore_cell(text)


def test_record_layout():
    record = csv_record(
        "-x.png", "Normal", {"Covid": 0.25, "Normal": 0.5, "Viral Pneumonia": 0.25}, CLASSES, warning="=w"
    )
    assert dict(zip(csv_columns(CLASSES), record, strict=True)) == {
        "path": "'-x.png",
        "predicted": "Normal",
        "prob_Covid": "0.25",
        "prob_Normal": "0.5",
        "prob_Viral Pneumonia": "0.25",
        "refused": "",
        "warning": "'=w",
        "error": "",
    }
    unreadable = csv_record("a.png", None, None, CLASSES, error="@bad")
    assert unreadable[2:5] == ["", "", ""] and unreadable[-1] == "'@bad"


def test_part_file_keeps_complete_rows_only(tmp_path):
    from hfxray.inference import PredictionRow

    part = tmp_path / "p.csv.part"
    rows = [
        PredictionRow(f"{c}{i}.png", "Normal", dict.fromkeys(CLASSES, 1 / 3)) for i, c in enumerate("=ab")
    ]
    with PartWriter(part, CLASSES, resume=False) as w:
        w.write(rows)
    with part.open("a", encoding="utf-8") as f:
        f.write('"c.png,Nor')  # cut by a kill inside a quoted cell
    assert read_done_paths([part, tmp_path / "missing.csv"], CLASSES) == {"=0.png", "a1.png", "b2.png"}
    with PartWriter(part, CLASSES, resume=True) as w:  # resuming drops the cut row, then appends
        w.write([PredictionRow("d.png", None, {}, error="unreadable")])
    assert [restore_cell(r[0]) for r in read_records(part, CLASSES)] == [
        "=0.png",
        "a1.png",
        "b2.png",
        "d.png",
    ]
    with pytest.raises(ValueError, match="columns"):
        list(read_records(part, ["Cat", "Dog"]))


def test_formula_file_name_is_neutralised_in_predict_csv(shared_data, tmp_path):
    _evil_png(shared_data, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), EVIL, "--output", "out.csv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as f:
        header, row = list(csv.reader(f))
    assert header == csv_columns(CLASSES)
    assert row[0] == "'" + EVIL and row[1] in CLASSES  # read, predicted, and inert in a spreadsheet


@pytest.mark.slow
def test_formula_file_name_is_neutralised_in_the_space_csv(shared_data, tmp_path):
    from hfxray.space_app import XrayService

    service = XrayService()  # the bundled model, as the Space serves it
    evil = _evil_png(shared_data, tmp_path / "upload")
    unreadable = tmp_path / "upload" / "+cmd.png"
    unreadable.write_bytes(b"not a png")
    plain = tmp_path / "upload" / "plain.jpeg"
    shutil.copy(_film(shared_data), plain)
    results = [service.analyse_path(p) for p in (evil, unreadable, plain)]
    path = service.write_csv(results)
    with path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert header == csv_columns(service.classes)  # the schema of predict.py
    assert [r[0] for r in rows] == ["'" + EVIL, "'+cmd.png", "plain.jpeg"]
    assert rows[0][1] in service.classes and rows[0][1] == rows[2][1]  # same film, same answer
    assert rows[1][1] == "" and rows[1][-1]  # unreadable: no class, the reason under error
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r)
