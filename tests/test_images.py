"""hfxray.images: every format and mode to the same RGB pixels, and every bad input refused cleanly.

All images are generated here (or taken from the shared radiographs); expected pixel values are
computed independently from the generating arrays, so each assertion can fail.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from hfxray.images import (
    MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    ImageReadError,
    is_supported_path,
    load_image,
)

H, W = 48, 64


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """A 48 x 64 8-bit image spanning the full 0..255 range with structure in both axes."""
    x = np.linspace(0, 255, W)
    y = np.linspace(0, 1, H)[:, None]
    arr = np.rint(x[None, :] * (0.5 + 0.5 * y))
    arr[0, -1] = 255
    arr[-1, 0] = 0
    return arr.astype(np.uint8)


def _rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _arr(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


# ---------------------------------------------------------------------------------------------
# Pillow formats and modes


def test_supported_extensions_and_paths() -> None:
    assert set(SUPPORTED_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
    assert is_supported_path("a/b/IMG.PNG")
    assert is_supported_path(Path("x.Dcm"))
    assert not is_supported_path("notes.txt")
    assert not is_supported_path("scan.gif")
    assert not is_supported_path("no_extension")


def test_gray_png_is_rgb_with_same_values(tmp_path: Path, gray: np.ndarray) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path)
    out = _arr(load_image(path))
    np.testing.assert_array_equal(out, _rgb_of(gray))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "I;16", "I", "F", "BMP", "TIFF"])
def test_every_mode_gives_the_same_rgb_image(tmp_path: Path, gray: np.ndarray, mode: str) -> None:
    expected = _rgb_of(gray)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([_rgb_of(gray), np.full((H, W), 255, np.uint8)]), "RGBA")
        path = tmp_path / "x.png"
    elif mode == "LA":
        img = Image.fromarray(np.dstack([gray, np.full((H, W), 255, np.uint8)]), "LA")
        path = tmp_path / "x.png"
    elif mode == "P":
        img = Image.fromarray(gray, "P")
        img.putpalette([v for i in range(256) for v in (i, i, i)])
        path = tmp_path / "x.png"
    elif mode == "1":
        img = Image.fromarray(gray >= 128).convert("1")
        expected = _rgb_of(np.where(gray >= 128, 255, 0).astype(np.uint8))
        path = tmp_path / "x.png"
    elif mode == "I;16":  # 16-bit PNG using the full range: must scale, not clip
        img = Image.fromarray(gray.astype(np.uint16) * 257)
        assert img.mode == "I;16"
        path = tmp_path / "x.png"
    elif mode == "I":  # signed 32-bit TIFF with an arbitrary offset
        img = Image.fromarray(gray.astype(np.int32) * 1000 - 5000, "I")
        path = tmp_path / "x.tif"
    elif mode == "F":  # float TIFF in an arbitrary range
        img = Image.fromarray((gray.astype(np.float32) / 255.0) * 3.7 + 1.0, "F")
        path = tmp_path / "x.tif"
    elif mode == "BMP":
        img = Image.fromarray(_rgb_of(gray), "RGB")
        path = tmp_path / "x.bmp"
    else:
        img = Image.fromarray(_rgb_of(gray), "RGB")
        path = tmp_path / "x.tif"
    img.save(path)
    with Image.open(path) as check:  # the file really holds the mode under test
        if mode not in ("BMP", "TIFF"):
            assert check.mode == mode
    out = _arr(load_image(path))
    assert out.shape == (H, W, 3)
    if mode == "F":
        assert np.abs(out.astype(int) - expected).max() <= 1
    else:
        np.testing.assert_array_equal(out, expected)


def test_16bit_with_12bit_content_is_stretched(tmp_path: Path) -> None:
    """12-bit values in a 16-bit PNG (a common export) must not come out nearly black."""
    arr = np.tile(np.linspace(100, 4000, W).astype(np.uint16), (H, 1))
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = _arr(load_image(tmp_path / "a.png"))[:, :, 0]
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255
    expected = np.rint((arr.astype(float) - 100) * 255 / 3900)
    assert np.abs(out - expected).max() <= 1


def test_transparency_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, : W // 2, 3] = 0  # fully transparent: hidden colour must not show
    rgba[:, W // 2 :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = _arr(load_image(tmp_path / "t.png"))
    assert out[:, : W // 2].max() == 0
    assert np.abs(out[:, W // 2 :].astype(int) - round(200 * 128 / 255)).max() <= 1


def test_cmyk_jpeg(tmp_path: Path, gray: np.ndarray) -> None:
    cmyk = np.zeros((H * 2, W * 2, 4), np.uint8)
    cmyk[..., 3] = 255 - np.kron(gray, np.ones((2, 2), np.uint8))  # K channel carries the image
    img = Image.fromarray(cmyk, "CMYK")
    img.save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as check:
        assert check.mode == "CMYK"
    out = _arr(load_image(tmp_path / "c.jpg")).astype(int)
    expected = np.asarray(img.convert("RGB")).astype(int)
    assert out.shape == expected.shape
    assert np.abs(out - expected).mean() < 3
    assert out[:, :10].mean() < 40 and out[:, -10:].mean() > 150  # dark left, bright right


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # stored: left half white, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = _arr(load_image(tmp_path / "r.jpg"))
    assert out.shape == (80, 40, 3)  # width and height swapped
    assert out[:35].mean() > 240 and out[45:].mean() < 15  # left half became the top


def test_path_bytes_and_file_object_give_identical_pixels(tmp_path: Path, gray: np.ndarray) -> None:
    path = tmp_path / "s.jpg"
    Image.fromarray(gray).save(path, quality=90)
    from_path = _arr(load_image(path))
    from_str = _arr(load_image(str(path)))
    from_bytes = _arr(load_image(path.read_bytes()))
    with path.open("rb") as fh:
        from_file = _arr(load_image(fh))
    from_bytesio = _arr(load_image(io.BytesIO(path.read_bytes())))
    for other in (from_str, from_bytes, from_file, from_bytesio):
        np.testing.assert_array_equal(from_path, other)
    assert np.abs(from_path[:, :, 0].astype(int) - gray).mean() < 3  # it is our picture


def test_wrong_extension_is_decoded_by_content(tmp_path: Path, gray: np.ndarray) -> None:
    png_as_jpg = tmp_path / "really_png.jpg"
    Image.fromarray(gray).save(png_as_jpg, format="PNG")
    np.testing.assert_array_equal(_arr(load_image(png_as_jpg)), _rgb_of(gray))
    png_as_dcm = tmp_path / "really_png.dcm"
    png_as_dcm.write_bytes(png_as_jpg.read_bytes())
    np.testing.assert_array_equal(_arr(load_image(png_as_dcm)), _rgb_of(gray))


# ---------------------------------------------------------------------------------------------
# Refusals


def _error(source, **kwargs) -> str:
    with pytest.raises(ImageReadError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG signature and IHDR declaring ``width`` x ``height``, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)


def test_decompression_bomb_png_is_refused_without_decoding(tmp_path: Path) -> None:
    """A 20000 x 20000 1-bit PNG that compresses to a few KB (400 MP)."""
    side = 20000
    row = b"\x00" + bytes(side // 8)  # filter byte + one row of black 1-bit pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    data = _png_header_only(side, side)
    data += _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(data)
    assert bomb.stat().st_size < 200_000
    message = _error(bomb)
    assert "bomb.png" in message and "pixels" in message


def test_too_many_pixels_is_refused_from_the_header(tmp_path: Path) -> None:
    """9500 x 9500 (90 MP) exceeds MAX_PIXELS; the file has no pixel data at all, so a message
    about size (not truncation) proves that the check ran before decoding."""
    assert MAX_PIXELS < 9500 * 9500
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(9500, 9500, 8, 0) + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)))
    message = _error(path)
    assert "90,250,000 pixels" in message and "limit" in message
    assert "truncated" not in message


def test_max_pixels_and_max_bytes_are_respected(tmp_path: Path, gray: np.ndarray) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(gray).save(path)
    assert "pixel limit" in _error(path, max_pixels=W * H - 1)
    assert _arr(load_image(path, max_pixels=W * H)).shape == (H, W, 3)
    size = path.stat().st_size
    assert "byte limit" in _error(path, max_bytes=size - 1)
    assert "byte limit" in _error(path.read_bytes(), max_bytes=size - 1)
    assert "byte limit" in _error(io.BytesIO(path.read_bytes()), max_bytes=size - 1)
    assert _arr(load_image(path, max_bytes=size)).shape == (H, W, 3)


def test_too_small_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "icon.png"
    Image.new("L", (16, 64), 128).save(path)
    assert "too small" in _error(path)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty" in _error(empty) and "empty.png" in _error(empty)
    assert "empty" in _error(b"")
    assert "no such file" in _error(tmp_path / "missing.png")
    assert "directory" in _error(tmp_path)


def test_truncated_jpeg_and_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format=fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        message = _error(path)
        assert "truncated or corrupt" in message and f"cut.{fmt.lower()}" in message


def test_non_images_are_refused_with_a_reason(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("patient notes, not an image\n" * 20)
    assert "text file" in _error(text)
    pdf = tmp_path / "scan.png"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(200))
    assert "PDF" in _error(pdf)
    gif = io.BytesIO()
    Image.new("L", (64, 64), 0).save(gif, format="GIF")
    assert "GIF is not a supported format" in _error(gif.getvalue())
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(bytes(range(256)) * 4)
    assert "not a recognised image format" in _error(junk)
    corrupt = _png_header_only(64, 64)[:20]
    assert "PNG" in _error(corrupt)


def test_text_mode_file_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("hello")
    with path.open("r") as fh:
        assert "binary" in _error(fh) or "'rb'" in _error(fh)


def test_invalid_draft_size_is_a_programming_error(tmp_path: Path, gray: np.ndarray) -> None:
    with pytest.raises(ValueError, match="draft_size"):
        load_image(b"irrelevant", draft_size=0)


# ---------------------------------------------------------------------------------------------
# DICOM


def _dicom(
    path: Path,
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-12345"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome2_8bit_keeps_values(tmp_path: Path, gray: np.ndarray) -> None:
    path = _dicom(tmp_path / "m2.dcm", gray)
    assert path.read_bytes()[128:132] == b"DICM"
    np.testing.assert_array_equal(_arr(load_image(path)), _rgb_of(gray))


def test_dicom_monochrome1_16bit_is_inverted(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 60000, W).astype(np.uint16), (H, 1))
    mono1 = _arr(load_image(_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1", 16)))[:, :, 0]
    mono2 = _arr(load_image(_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2", 16)))[:, :, 0]
    # MONOCHROME2: low values dark; the 16-bit ramp is scaled to the full 8-bit range.
    expected = np.rint(ramp.astype(float) * 255 / 60000)
    assert np.abs(mono2 - expected).max() <= 1
    # MONOCHROME1: the same ramp comes out reversed (bright left, dark right).
    assert (mono1[:, 0] == 255).all() and (mono1[:, -1] == 0).all()
    assert (np.diff(mono1[0].astype(int)) <= 0).all()
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_12bit_rescale_and_window(tmp_path: Path) -> None:
    raw = np.tile(np.linspace(0, 4095, W).astype(np.uint16), (H, 1))
    # Stored values 0..4095 map to -1024..3071 (modality rescale); the window shows -512..512.
    path = _dicom(
        tmp_path / "w.dcm",
        raw,
        "MONOCHROME2",
        12,
        RescaleIntercept=-1024,
        RescaleSlope=1,
        WindowCenter=0,
        WindowWidth=1024,
    )
    ds = pydicom.dcmread(path)
    assert ds.BitsStored == 12 and ds.BitsAllocated == 16
    out = _arr(load_image(path))[:, :, 0].astype(float)
    hu = raw.astype(float) - 1024
    expected = np.rint(np.clip((hu - (0 - 0.5)) / (1024 - 1) + 0.5, 0, 1) * 255)
    assert np.abs(out - expected).max() <= 1
    assert (out[hu <= -512] == 0).all() and (out[hu > 512] == 255).all()
    inside = (hu > -500) & (hu < 500)
    assert out[inside].min() > 0 and out[inside].max() < 255  # a real window, not a threshold


def test_dicom_multiframe_takes_first_frame(tmp_path: Path, gray: np.ndarray) -> None:
    frames = np.stack([gray, np.full_like(gray, 77)])
    path = _dicom(tmp_path / "mf.dcm", frames)
    assert int(pydicom.dcmread(path).NumberOfFrames) == 2
    np.testing.assert_array_equal(_arr(load_image(path)), _rgb_of(gray))


def test_dicom_rgb(tmp_path: Path, gray: np.ndarray) -> None:
    rgb = np.dstack([gray, 255 - gray, np.full_like(gray, 9)])
    np.testing.assert_array_equal(_arr(load_image(_dicom(tmp_path / "c.dcm", rgb, "RGB", 8))), rgb)


def test_dicom_rle_compressed_decodes(tmp_path: Path, gray: np.ndarray) -> None:
    path = _dicom(tmp_path / "plain.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(_arr(load_image(tmp_path / "rle.dcm")), _rgb_of(gray))


def test_dicom_missing_codec_is_a_clear_error(tmp_path: Path, gray: np.ndarray) -> None:
    path = _dicom(tmp_path / "jls.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    message = _error(path)
    assert "JPEG-LS" in message and "decoder" in message


def test_dicom_with_wrong_extension_and_as_bytes(tmp_path: Path, gray: np.ndarray) -> None:
    path = _dicom(tmp_path / "scan.png", gray)
    np.testing.assert_array_equal(_arr(load_image(path)), _rgb_of(gray))
    np.testing.assert_array_equal(_arr(load_image(path.read_bytes())), _rgb_of(gray))


def test_dicom_errors_never_reveal_patient_identifiers(
    tmp_path: Path, gray: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    path = _dicom(tmp_path / "bad.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # too short for Rows x Columns
    ds.save_as(path, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)
    message = _error(path)
    assert "bad.dcm" in message and "DICOM" in message
    logged = " ".join(r.getMessage() for r in caplog.records)
    for secret in ("Doe", "Jane", "SECRET-12345"):
        assert secret not in message and secret not in logged
    tiny = _dicom(tmp_path / "tiny.dcm", np.zeros((8, 8), np.uint8))
    assert "too small" in _error(tiny)


def test_dicom_without_pixels_and_non_dicom_dcm(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "nopix.dcm", np.zeros((64, 64), np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    assert "no image" in _error(path)
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(bytes(range(200, 256)) * 10)
    assert "DICOM" in _error(fake)


# ---------------------------------------------------------------------------------------------
# draft_size: the reduced decode every consumer shares


def test_draft_size_on_a_real_large_radiograph(shared_data: Path) -> None:
    jpegs = [p for p in shared_data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")]
    path = max(jpegs, key=lambda p: min(Image.open(p).size))
    with Image.open(path) as original:
        full_w, full_h = original.size
    assert min(full_w, full_h) > 4 * 448  # a big film, so the draft path is exercised

    img = load_image(path, draft_size=224)
    w, h = img.size
    assert img.mode == "RGB"
    assert min(w, h) >= 448 and min(w, h) <= 4 * 224
    assert abs(w / h - full_w / full_h) < 0.01
    # Same picture as a full decode shrunk to that size (reduced DCT decode is close, not equal).
    full = load_image(path)
    assert full.size == (full_w, full_h)
    shrunk = np.asarray(full.resize((w, h), Image.Resampling.BOX)).astype(int)
    assert np.abs(np.asarray(img).astype(int) - shrunk).mean() < 4
    # Deterministic: the same call gives the same pixels (training == prediction == Space).
    np.testing.assert_array_equal(np.asarray(img), np.asarray(load_image(path.read_bytes(), draft_size=224)))


def test_draft_size_reduces_other_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (1500, 2000), dtype=np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(arr).save(path, compress_level=1)
    img = load_image(path, draft_size=224)
    assert img.size == (667, 500)  # integer factor 3: 1500 // 448
    expected = np.asarray(Image.fromarray(arr).reduce(3))
    np.testing.assert_array_equal(np.asarray(img)[:, :, 0], expected)
    small = load_image(path, draft_size=512)  # 1500 <= 4 * 512: left alone
    assert small.size == (2000, 1500)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "LA"])
def test_grey_option_keeps_one_channel_with_the_same_values(tmp_path: Path, gray: np.ndarray, mode: str) -> None:
    """grey=True: single-channel films come back as "L"; everything else exactly as without it."""
    path = tmp_path / "x.png"
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([gray, np.full((H, W), 255, np.uint8)]), "LA").save(path)
    else:
        Image.fromarray(gray if mode == "L" else _rgb_of(gray), mode).save(path)
    kept = load_image(path, grey=True)
    assert kept.mode == ("L" if mode in ("L", "I;16") else "RGB")
    np.testing.assert_array_equal(np.asarray(kept.convert("RGB")), np.asarray(load_image(path)))
