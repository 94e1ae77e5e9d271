"""Predictor (torch backend), the transformers pipeline view, and scripts/predict.py, on real radiographs."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hfxray import DISCLAIMER
from hfxray.images import load_image
from hfxray.inference import Predictor, collect_image_paths, write_predictions_csv

REPO = Path(__file__).resolve().parents[1]


def _radiograph_paths(shared_data: Path, per_class: int = 2) -> list[Path]:
    out = []
    for d in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        out += sorted(p for p in d.iterdir() if p.is_file())[:per_class]
    return out


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir, backend="auto")


@pytest.fixture(scope="module")
def radiographs(shared_data, predictor) -> list:
    return [load_image(p, draft_size=predictor.image_size) for p in _radiograph_paths(shared_data)]


def test_loads_torch_backend_with_metadata(predictor, tiny_model_dir):
    assert predictor.backend == "torch"  # no model.onnx in the directory
    assert predictor.classes == ["Covid", "Normal", "Viral Pneumonia"]
    assert predictor.image_size == 224
    assert not predictor.model.training


def test_probabilities_are_softmax_of_logits_and_vary(predictor, radiographs):
    logits = predictor.predict_logits(radiographs)
    probs = predictor.predict_images(radiographs)
    assert probs.shape == (len(radiographs), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        probs, torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy(), atol=1e-7
    )
    # a degenerate (constant) model would make every consistency test below pass vacuously
    assert np.ptp(probs, axis=0).max() > 1e-3


def test_batch_and_single_give_same_probabilities(predictor, radiographs):
    batched = predictor.predict_images(radiographs, batch_size=4)
    single = np.concatenate([predictor.predict_images([im]) for im in radiographs])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_pipeline_agrees_with_predictor(predictor, radiographs):
    pipe = predictor.as_pipeline()
    outputs = pipe(radiographs, top_k=None)
    probs = predictor.predict_images(radiographs)
    for row, out in zip(probs, outputs, strict=True):
        by_label = {o["label"]: o["score"] for o in out}
        assert sorted(by_label) == predictor.classes
        np.testing.assert_allclose([by_label[c] for c in predictor.classes], row, atol=1e-5)


def test_predict_paths_keeps_order_and_reports_bad_files(predictor, shared_data, tmp_path):
    real = _radiograph_paths(shared_data, per_class=1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    missing = tmp_path / "missing.jpg"
    paths = [real[0], broken, real[1], missing, real[2]]

    rows = predictor.predict_paths(paths, batch_size=2, num_workers=2)

    assert [r.path for r in rows] == [str(p) for p in paths]
    assert [r.ok for r in rows] == [True, False, True, False, True]
    assert "broken.png" in rows[1].error and "\n" not in rows[1].error
    assert rows[1].predicted is None and rows[1].probs == {}
    expected = predictor.predict_images([load_image(p, draft_size=224) for p in real])
    for row, exp in zip([rows[0], rows[2], rows[4]], expected, strict=True):
        got = np.array([row.probs[c] for c in predictor.classes])
        np.testing.assert_allclose(got, exp, atol=1e-5)
        assert row.predicted == predictor.classes[int(np.argmax(exp))]


def test_grey_film_file_gives_the_probabilities_of_its_rgb_decoding(predictor, shared_data, tmp_path):
    """Files are decoded keeping grey films in one channel (faster); the answer must not change."""
    from PIL import Image

    path = tmp_path / "grey.png"
    load_image(_radiograph_paths(shared_data, 1)[0]).convert("L").save(path)
    (row,) = predictor.predict_paths([path])
    rows = predictor.predict_paths([path, path, path], batch_size=2)
    expected = predictor.predict_images([load_image(path, draft_size=224)])[0]
    assert load_image(path, draft_size=224, grey=True).mode == "L"
    assert Image.open(path).mode == "L"
    for r in (row, *rows):
        np.testing.assert_allclose([r.probs[c] for c in predictor.classes], expected, atol=1e-6)


def test_small_image_gets_a_warning_but_a_prediction(predictor, tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (100, 1))).save(small)
    (row,) = predictor.predict_paths([small])
    assert row.ok and row.predicted in predictor.classes
    assert "small" in row.warning


def test_torch_thread_count_is_restored(tiny_model_dir, radiographs):
    before = torch.get_num_threads()
    p = Predictor.from_pretrained(tiny_model_dir, backend="torch", num_threads=1)
    p.predict_images(radiographs[:1])
    assert torch.get_num_threads() == before


def test_bad_arguments_raise_one_line_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="backend"):
        Predictor.from_pretrained(tiny_model_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="no model.onnx"):
        Predictor.from_pretrained(tiny_model_dir, backend="onnx")
    with pytest.raises(ValueError, match="not found"):
        Predictor.from_pretrained(tmp_path / "nope")


def test_collect_image_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/1.png", "a/b/2.JPG", "a/notes.txt", "a/b/3.dcm"]:
        (tmp_path / name).write_bytes(b"x")
    paths, skipped = collect_image_paths([tmp_path / "a", tmp_path / "a" / "1.png", tmp_path / "x.txt"])
    assert paths == [
        str(tmp_path / "a" / "1.png"),
        str(tmp_path / "a/b/2.JPG"),
        str(tmp_path / "a/b/3.dcm"),
        str(tmp_path / "x.txt"),
    ]  # explicit files kept whatever their name; duplicates once
    assert skipped == 1


def test_write_csv_refuses_to_overwrite(predictor, shared_data, tmp_path):
    rows = predictor.predict_paths(_radiograph_paths(shared_data, per_class=1)[:1])
    out = tmp_path / "p.csv"
    out.write_text("precious\n")
    with pytest.raises(FileExistsError):
        write_predictions_csv(rows, predictor.classes, out)
    assert out.read_text() == "precious\n"
    write_predictions_csv(rows, predictor.classes, out, overwrite=True)
    assert out.read_text().startswith("path,predicted,prob_Covid")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ scripts/predict.py
def _run_predict(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_predict_script_on_a_folder(tiny_model_dir, shared_data, tmp_path):
    real = _radiograph_paths(shared_data, per_class=1)
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(real[0], folder / real[0].name)
    shutil.copy(real[1], folder / "nested" / real[1].name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred.csv"

    result = _run_predict(folder, "--model", tiny_model_dir, "--output", out, "--batch_size", 2, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert DISCLAIMER in result.stdout
    assert "1 non-image files skipped" in result.stdout
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0].keys())
    assert header == [
        "path",
        "predicted",
        "prob_Covid",
        "prob_Normal",
        "prob_Viral Pneumonia",
        "refused",
        "warning",
        "error",
    ]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {real[0].name, real[1].name, "broken.jpg"}
    assert by_name["broken.jpg"]["error"] and not by_name["broken.jpg"]["predicted"]
    for name in (real[0].name, real[1].name):
        r = by_name[name]
        probs = [float(r[k]) for k in header if k.startswith("prob_")]
        assert abs(sum(probs) - 1) < 1e-6 and r["error"] == ""
        assert r["predicted"] == ["Covid", "Normal", "Viral Pneumonia"][int(np.argmax(probs))]

    # an existing CSV is never replaced without --overwrite
    before = out.read_bytes()
    again = _run_predict(folder, "--model", tiny_model_dir, "--output", out, cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert out.read_bytes() == before


def test_predict_script_exit_1_when_nothing_readable(tiny_model_dir, tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.jpg").write_bytes(b"")
    result = _run_predict(tmp_path / "a.png", tmp_path / "b.jpg", "--model", tiny_model_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: none of the 2 files")
    # the error rows are still written: the user sees why each file failed
    with (tmp_path / "predictions.csv").open(newline="") as f:
        assert all(r["error"] for r in csv.DictReader(f))


def test_predict_script_bad_arguments_exit_2(tiny_model_dir, tmp_path):
    result = _run_predict(tmp_path, "--model", tiny_model_dir, "--backend", "gpu", cwd=tmp_path)
    assert result.returncode == 2


def test_gate_abstains_on_a_colour_picture_but_keeps_probabilities(predictor, shared_data, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = np.zeros((300, 400, 3), dtype=np.uint8)
    photo[:, :200] = (220, 40, 40)  # red and blue halves: two distinct hues, never a radiograph
    photo[:, 200:] = (40, 60, 220)
    photo = np.clip(photo + rng.normal(0, 10, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    real = _radiograph_paths(shared_data, per_class=1)[0]

    photo_row, real_row = predictor.predict_paths([tmp_path / "photo.png", real])

    assert photo_row.ok and photo_row.abstained and photo_row.predicted is None
    assert "colour" in photo_row.warning
    assert abs(sum(photo_row.probs.values()) - 1) < 1e-9
    assert not real_row.abstained and real_row.predicted in predictor.classes
    assert predictor.predict_images_gated([load_image(real)])[1] is None  # no gate statistics in this model dir
