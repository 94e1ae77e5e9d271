"""The real Space in a child process on loopback, driven through gradio_client like any API user."""

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from skimage import data

from hfxray import DISCLAIMER
from hfxray.prediction_csv import csv_columns
from hfxray.space_app import ABSTAIN_TEXT, TURNED_TEXT, parse_auth, spawn_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(bundled_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("space")
    log = tmp / "server.log"
    proc, url = spawn_server(bundled_model_dir, env={"GRADIO_TEMP_DIR": str(tmp / "gradio")}, log_path=log)
    try:
        yield {"url": url, "log": log, "cache": tmp / "gradio", "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def _radiographs(shared_data: Path, n: int) -> list[Path]:
    return [sorted((shared_data / c).iterdir())[3] for c in ("Covid", "Normal", "Viral Pneumonia")][:n]


def _confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def _assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text


def test_predict_a_radiograph(client, shared_data, server):
    path = _radiographs(shared_data, 1)[0]
    label, heatmap, result, warnings = client.predict(handle_file(str(path)), api_name="/predict")
    probs = _confidences(label)
    assert set(probs) == {"Covid", "Normal", "Viral Pneumonia"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert label["label"] == max(probs, key=probs.get)
    assert label["label"] in result and DISCLAIMER in result
    heat = Image.open(heatmap)
    assert heat.mode == "RGB" and max(heat.size) == 512
    assert isinstance(warnings, str)
    # the upload was deleted from the server's cache once answered
    assert not list(server["cache"].rglob(path.name))


def test_a_colour_photo_is_refused(client, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    label, heatmap, result, warnings = client.predict(handle_file(str(photo)), api_name="/predict")
    assert ABSTAIN_TEXT in result and DISCLAIMER in result
    assert "colour photograph" in result and "colour photograph" not in warnings  # refusal apart from warnings
    assert not label.get("confidences")  # no class probabilities for an abstention
    assert heatmap is not None  # the heatmap is still shown, to see what the model looked at


def test_an_upside_down_film_is_refused_with_its_reason(client, shared_data, tmp_path):
    """A chest film uploaded upside down gets no class and is told to be turned, not "not a chest film"."""
    path = _radiographs(shared_data, 2)[1]
    upside_down = tmp_path / f"upside-down{path.suffix}"
    Image.open(path).rotate(180).save(upside_down)
    label, _, result, warnings = client.predict(handle_file(str(upside_down)), api_name="/predict")
    assert TURNED_TEXT in result and ABSTAIN_TEXT not in result and DISCLAIMER in result
    assert "turn it so that the neck is at the top" in result and "upside down" not in warnings
    assert not label.get("confidences")
    label, _, result, _ = client.predict(handle_file(str(path)), api_name="/predict")  # the same film upright
    assert label.get("confidences") and TURNED_TEXT not in result


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A 20000 x 20000 1-bit PNG (400 MP) that compresses to a few KB."""
    row = b"\x00" + bytes(side // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


def _bad_files(tmp_path: Path, shared_data: Path) -> dict[str, tuple[Path, str]]:
    jpeg = next(
        p for p in sorted((shared_data / "Normal").iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")
    )
    raw = jpeg.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(raw[: len(raw) // 3])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"  # a text file with an image name
    text.write_text("Patient notes: nothing to see here.\n" * 20)
    return {
        "truncated": (truncated, "truncated"),
        "empty": (empty, "empty"),
        "text": (text, "text"),
        "bomb": (_bomb_png(tmp_path / "bomb.png"), "pixels"),
    }


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "bomb"])
def test_bad_files_get_a_clear_message(client, shared_data, tmp_path, kind):
    path, expected = _bad_files(tmp_path, shared_data)[kind]
    label, heatmap, result, warnings = client.predict(handle_file(str(path)), api_name="/predict")
    assert heatmap is None and not label.get("confidences")
    assert path.name in warnings and expected in warnings.lower()
    assert len(warnings.splitlines()) == 1  # one line, the reason
    assert "could not be read" in result and DISCLAIMER in result
    _assert_no_traceback(result, warnings)


def _dicom_from(png: Path, out: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Zyxwv^Quentin"
    ds.PatientID = "PID-987654321"
    ds.set_pixel_data(arr, "MONOCHROME2", 8)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_batch_with_dicom_and_a_bad_file_gives_a_csv(client, shared_data, tmp_path, server):
    good = _radiographs(shared_data, 2)
    dicom = _dicom_from(good[0], tmp_path / "film")  # DICOM files often have no extension
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    files = [*good, dicom, empty]
    gallery, label, result, warnings, table, csv_path = client.predict(
        [handle_file(str(p)) for p in files], True, api_name="/predict_batch"
    )
    assert len(gallery) == 3  # the unreadable file has no image
    assert sum(_confidences(label).values()) == pytest.approx(1.0, abs=1e-6)
    assert DISCLAIMER in result
    with Path(csv_path).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # predict.py's schema (hfxray.prediction_csv): path, predicted, prob_<class>..., refused, warning, error
    assert list(rows[0]) == csv_columns(["Covid", "Normal", "Viral Pneumonia"])
    assert [r["path"] for r in rows] == [p.name for p in files]
    for row in rows[:3]:
        probs = [float(row[f"prob_{c}"]) for c in ("Covid", "Normal", "Viral Pneumonia")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] in ("Covid", "Normal", "Viral Pneumonia")
    # the DICOM and its PNG source decode to the same picture, so they get the same answer
    assert rows[2]["predicted"] == rows[0]["predicted"]
    assert rows[3]["predicted"] == "" and "empty" in rows[3]["error"] and rows[3]["prob_Covid"] == ""
    assert len(table["data"]) == 4
    # no upload kept, no patient identifier in the server log
    for p in files:
        assert not list(server["cache"].rglob(p.name))
    log = server["log"].read_text(errors="replace")
    assert "Zyxwv" not in log and "987654321" not in log
    assert "Traceback" not in log


def test_auth_parsing():
    assert parse_auth(None) is None and parse_auth("") is None
    assert parse_auth("doc:s3cret, nurse:pw") == [("doc", "s3cret"), ("nurse", "pw")]
    with pytest.raises(ValueError, match="HFXRAY_AUTH"):
        parse_auth("nocolon")


def test_auth_is_enforced(tiny_model_dir, tmp_path, shared_data):
    proc, url = spawn_server(
        tiny_model_dir, env={"HFXRAY_AUTH": "doc:s3cret", "GRADIO_TEMP_DIR": str(tmp_path / "g")}
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises a plain ValueError/HTTP error
            Client(url, verbose=False).predict(
                handle_file(str(_radiographs(shared_data, 1)[0])), api_name="/predict"
            )
        label, *_ = Client(url, auth=("doc", "s3cret"), verbose=False).predict(
            handle_file(str(_radiographs(shared_data, 1)[0])), api_name="/predict"
        )
        assert label["confidences"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_service_uses_the_model_dirs_gate(tiny_model_dir, shared_data, tmp_path):
    """In process: a model dir with fitted gate statistics makes the Space abstain on a text page,
    with the distance computed from the features of the same forward pass as its probabilities."""
    import shutil

    from PIL import ImageDraw

    from hfxray.gate import InputGate, fit_gate, write_gate
    from hfxray.images import load_image
    from hfxray.modeling import load_model
    from hfxray.space_app import XrayService

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "gated"))
    paths = sorted(p for p in shared_data.rglob("*") if p.is_file())
    model, processor = load_model(model_dir)
    write_gate(model_dir, fit_gate(model, processor, paths[::8]))
    service = XrayService(model_dir)
    assert service.predictor.gate.has_feature_stats

    page = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(page)
    for i in range(40):
        draw.text((60, 60 + i * 24), f"{i:02d} Lorem ipsum dolor sit amet, consectetur.", fill="black")
    refused = service.analyse_image(page, "letter.png")
    assert refused.abstained and refused.predicted is None and not refused.probs
    assert "does not look like the chest X-rays" in refused.refused and not refused.warnings
    assert refused.label_value() == ABSTAIN_TEXT

    films = [service.analyse_path(p) for p in paths[3::16]]
    assert all(f.error is None for f in films)
    assert np.median([f.distance for f in films]) < refused.distance
    # the distance from the Space's forward pass equals the gate's own (PyTorch) feature extraction
    image = load_image(paths[3], draft_size=service.image_size)
    own = InputGate.from_model_dir(model_dir, service.model)
    assert films[0].distance == pytest.approx(own.check(image).distance, rel=1e-4)
    answered = [f for f in films if not f.abstained]
    assert answered and all(sum(f.probs.values()) == pytest.approx(1.0) for f in answered)


def test_space_probabilities_come_from_onnx_runtime_like_predict(bundled_model_dir, shared_data):
    """The bundled model ships model.onnx: the Space answers with ONNX Runtime, with the numbers
    scripts/predict.py writes, and PyTorch only draws the heatmap."""
    from hfxray.inference import Predictor
    from hfxray.space_app import XrayService

    service = XrayService(bundled_model_dir)
    assert service.predictor.backend == "onnx" and service.predictor.model is None
    assert service.model is not None  # the PyTorch weights, for Grad-CAM only
    paths = _radiographs(shared_data, 3)
    results = [service.analyse_path(p) for p in paths]
    onnx_rows = Predictor.from_pretrained(bundled_model_dir).predict_paths(paths)
    torch_rows = Predictor.from_pretrained(bundled_model_dir, backend="torch").predict_paths(paths)
    for result, onnx_row, torch_row in zip(results, onnx_rows, torch_rows, strict=True):
        assert result.error is None and not result.abstained, result.warnings
        classes = list(result.probs)
        np.testing.assert_allclose([result.probs[c] for c in classes], [onnx_row.probs[c] for c in classes], atol=1e-6)
        np.testing.assert_allclose([result.probs[c] for c in classes], [torch_row.probs[c] for c in classes], atol=1e-4)
        assert result.predicted == onnx_row.predicted == torch_row.predicted
        assert result.heatmap is not None and result.heatmap.size == result.image.size
    assert len({r.predicted for r in results}) > 1  # the three films are not all given one class
