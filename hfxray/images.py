"""The one image reader of hfxray: any supported file -> RGB ``PIL.Image``, within safe limits.

Dataset loading, prediction, evaluation and the Gradio Space all call :func:`load_image`, so every
path sees the same pixels for the same file. Decoding rules, chosen once here:

* Format is decided by content (magic bytes), not by extension: a PNG named ``.jpg`` still loads.
  Accepted: PNG, JPEG, BMP, TIFF (via Pillow) and DICOM Part 10 (via pydicom).
* EXIF/TIFF orientation is applied, so a phone photo of a film stands upright.
* Every mode becomes the same 8-bit RGB image: 8-bit data is kept as is; data deeper than 8 bits
  (16-bit PNG/TIFF, 32-bit integer or float TIFF, 12/16-bit DICOM) is stretched linearly from its
  minimum to its maximum (not clipped, not shifted), which also handles 10/12-bit values stored
  in 16-bit containers.
* Transparency is composited onto **black**: a radiograph's background is dark (unexposed film
  edges are black on a MONOCHROME2 display), so a transparent margin stays background instead of
  becoming a bright frame that a model could learn from.
* DICOM: modality LUT (rescale) then VOI LUT / window of the first view, then min/max to 8 bit;
  MONOCHROME1 is inverted so bone is always bright; only the first frame of a multi-frame file
  is decoded. Only the image-pixel elements are parsed (``specific_tags``), so patient
  identifiers are never read, logged, returned or put into an error message.
* ``draft_size``: consumers pass the model's input size. Large JPEGs are then decoded at a
  reduced DCT scale and any format whose short side is still above ``4 * draft_size`` is
  box-reduced by an integer factor, always keeping both sides ``>= 2 * draft_size`` (so the
  model's final resize still downsamples). Images are never enlarged: a film already smaller
  than that comes back at its own size. The result depends only on the file and
  ``draft_size``, so training, evaluation, prediction and the Space agree pixel for pixel.

Every failure - missing, empty, too big, truncated, a decompression bomb, text, PDF, an
unsupported format or a DICOM that needs a missing codec - is an :class:`ImageReadError` whose
message is one line naming the file and the reason. Size limits are checked on the header,
before any pixel is decoded. No global state is touched (``PIL.Image.MAX_IMAGE_PIXELS`` and
``ImageFile.LOAD_TRUNCATED_IMAGES`` keep their defaults; Pillow's bomb warning is handled
locally with ``warnings.catch_warnings``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "SUPPORTED_EXTENSIONS",
    "ImageReadError",
    "is_supported_path",
    "load_image",
]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
"""Lower-case file extensions that folder scans pick up (content still decides the decoder)."""

MAX_PIXELS: int = 80_000_000
"""Refuse images with more pixels than this (a 9000 x 9000 film is 81 MP); checked on the header.
Pillow's own hard ceiling (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 MP) still applies above it."""

MAX_BYTES: int = 256 * 1024 * 1024
"""Refuse files larger than this many bytes before reading them."""

MIN_SIDE: int = 32
"""Refuse images smaller than this on either side: no radiograph is that small."""

# Pillow formats we decode. Restricting Image.open keeps e.g. EPS (Ghostscript) and exotic
# plugins out of the attack surface; anything else gets a clear "unsupported" message.
_PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")

# Modes whose samples are deeper than 8 bits and need the min/max stretch to 8 bit.
_DEEP_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32S"})

# The only DICOM elements parsed. Keeping this list to the Image Pixel, Modality LUT and VOI LUT
# modules means patient/study identifiers are skipped by the parser and never reach memory.
_DICOM_TAGS: tuple[str, ...] = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)


class ImageReadError(ValueError):
    """A file that cannot be used as an image; ``str(e)`` is one human-readable line."""


def is_supported_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has one of :data:`SUPPORTED_EXTENSIONS` (case-insensitive).

    Only for picking files out of folders; :func:`load_image` itself trusts content, not names.
    """
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def load_image(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    min_side: int = MIN_SIDE,
    grey: bool = False,
) -> Image.Image:
    """Decode ``source`` into a fully loaded ``PIL.Image`` in mode ``"RGB"``.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current position).
        draft_size: the model's input size. When given, the image may come back downscaled, but
            both sides stay ``>= 2 * draft_size`` (see the module docstring). Every consumer passes
            the same value so all of them see the same pixels.
        max_pixels: refuse images whose header declares more pixels than this.
        max_bytes: refuse inputs larger than this many bytes.
        min_side: refuse images smaller than this on either side.
        grey: return single-channel (8- or 16-bit) PNG/JPEG/TIFF films in mode ``"L"`` instead,
            with the same values in every channel once converted to RGB. Prediction uses it:
            resizing one channel instead of three makes a grey 1024 px film's resize twice as fast.

    Raises:
        ImageReadError: with a one-line reason naming the file, for anything that is not a
            readable, reasonably sized PNG/JPEG/BMP/TIFF/DICOM image.
        ValueError: for invalid arguments (a programming error, not a bad file).
    """
    if draft_size is not None and (not isinstance(draft_size, int) or draft_size <= 0):
        raise ValueError(f"draft_size must be a positive int or None, got {draft_size!r}")
    name = _source_name(source)
    data = _read_bytes(source, name, max_bytes)
    if not data:
        raise ImageReadError(f"cannot read {name}: the file is empty")

    if _is_dicom(data):
        img = _decode_dicom(data, name, max_pixels, min_side)
    else:
        img = _decode_pil(data, name, max_pixels, min_side, draft_size)
        img = _to_rgb(img, name, keep_grey=grey)

    if draft_size is not None:
        img = _reduce(img, draft_size)
    return img


# --------------------------------------------------------------------------------------------
# Input handling


def _source_name(source: object) -> str:
    """How the file is called in error messages (the caller's own path, never file content)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    file_name = getattr(source, "name", None)
    return repr(file_name) if isinstance(file_name, str) else "<file object>"


def _read_bytes(source: object, name: str, max_bytes: int) -> bytes:
    """Read the whole input, refusing oversize ones before reading them where possible."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise ImageReadError(
                f"cannot read {name}: {len(data):,} bytes is larger than the {max_bytes:,}-byte limit"
            )
        return data
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if path.is_dir():
                raise ImageReadError(f"cannot read {name}: it is a directory, not a file")
            if size > max_bytes:
                raise ImageReadError(
                    f"cannot read {name}: {size:,} bytes is larger than the {max_bytes:,}-byte limit"
                )
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageReadError(f"cannot read {name}: no such file") from None
        except PermissionError:
            raise ImageReadError(f"cannot read {name}: permission denied") from None
        except OSError as err:
            raise ImageReadError(f"cannot read {name}: {_one_line(err.strerror or err)}") from None
    read = getattr(source, "read", None)
    if not callable(read):
        raise ImageReadError(
            f"cannot read {name}: expected a path, bytes or a binary file object, got {type(source).__name__}"
        )
    try:
        data = read(max_bytes + 1)
    except OSError as err:
        raise ImageReadError(f"cannot read {name}: {_one_line(err)}") from None
    if isinstance(data, str):
        raise ImageReadError(f"cannot read {name}: the file object is open in text mode; open it with 'rb'")
    if len(data) > max_bytes:
        raise ImageReadError(f"cannot read {name}: larger than the {max_bytes:,}-byte limit")
    return bytes(data)


def _one_line(err: object) -> str:
    """An exception's text squeezed onto one short line (no tracebacks reach users)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _check_dimensions(name: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    """Refuse absurd sizes from the header alone, before a single pixel is decoded."""
    if width * height > max_pixels:
        raise ImageReadError(
            f"cannot read {name}: {width} x {height} = {width * height:,} pixels is more than the "
            f"{max_pixels:,}-pixel limit (possible decompression bomb)"
        )
    if min(width, height) < min_side:
        raise ImageReadError(
            f"cannot read {name}: {width} x {height} pixels is too small for a radiograph "
            f"(each side must be at least {min_side} px)"
        )


# --------------------------------------------------------------------------------------------
# PNG / JPEG / BMP / TIFF


def _decode_pil(
    data: bytes, name: str, max_pixels: int, min_side: int, draft_size: int | None
) -> Image.Image:
    """Open with Pillow, check the header size, optionally draft (JPEG), then load the pixels."""
    with warnings.catch_warnings():
        # Our max_pixels check replaces Pillow's warning; its hard DecompressionBombError stays.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"cannot read {name}: {_one_line(err)}") from None
        except UnidentifiedImageError:
            raise ImageReadError(f"cannot read {name}: {_describe_unknown(data, name)}") from None
        except Exception as err:  # any parser failure is a bad file, never a crash
            fmt = _guess_format(data[:16]) or "image"
            raise ImageReadError(f"cannot read {name}: invalid {fmt} header ({_one_line(err)})") from None

        width, height = img.size
        _check_dimensions(name, width, height, max_pixels, min_side)
        if draft_size is not None and img.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 DCT scale while both sides stay >= 2 * draft_size: a
            # 4000 px film decodes several times faster and the model never needed those pixels.
            img.draft(img.mode, (2 * draft_size, 2 * draft_size))
        try:
            img.load()
        except Exception as err:  # truncated/corrupt streams raise OSError, SyntaxError, zlib errors...
            raise ImageReadError(
                f"cannot read {name}: truncated or corrupt {img.format} data ({_one_line(err)})"
            ) from None

    # A malformed EXIF block must not cost the image itself: keep the stored orientation then.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    return img


def _describe_unknown(data: bytes, name: str) -> str:
    """Why Pillow could not identify ``data``: name the likely culprit instead of a generic error."""
    head = data[:512]
    if head.startswith(b"%PDF"):
        return "this is a PDF document, not an image (export the radiograph as PNG, JPEG or DICOM)"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF is not a supported format (use PNG, JPEG, BMP, TIFF or DICOM)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP is not a supported format (use PNG, JPEG, BMP, TIFF or DICOM)"
    if head[4:8] == b"ftyp":
        return "HEIC/AVIF/MP4 is not a supported format (use PNG, JPEG, BMP, TIFF or DICOM)"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG 2000 is not a supported format (use PNG, JPEG, BMP, TIFF or DICOM)"
    fmt = _guess_format(head)
    if fmt is not None:
        return f"looks like {fmt} but its header is corrupt"
    if _looks_like_text(head):
        return "this is a text file, not an image"
    if name.lower().rstrip("'\"").endswith(".dcm"):
        return "not a DICOM Part 10 file (no 'DICM' marker at byte 128) nor another supported image"
    return "not a recognised image format (supported: PNG, JPEG, BMP, TIFF, DICOM)"


def _guess_format(head: bytes) -> str | None:
    """The supported format whose signature ``head`` starts with, for clearer error messages."""
    signatures = (
        (b"\x89PNG", "PNG"),
        (b"\xff\xd8", "JPEG"),
        (b"BM", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
    )
    return next((fmt for magic, fmt in signatures if head.startswith(magic)), None)


def _looks_like_text(head: bytes) -> bool:
    """Printable UTF-8 with no NUL bytes: a text file, CSV, HTML or JSON."""
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the 512-byte boundary.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text)


def _to_rgb(img: Image.Image, name: str, keep_grey: bool = False) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB by the rules in the module docstring (8-bit grey ``"L"``
    for single-channel images when ``keep_grey``)."""
    mode = img.mode
    if (mode == "RGB" or (keep_grey and mode == "L")) and "transparency" not in img.info:
        return img
    if mode in _DEEP_MODES:
        grey = Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
        return grey if keep_grey else grey.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        # Composite on black: see the module docstring (radiograph backgrounds are dark).
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr
    except (ValueError, OSError) as err:
        raise ImageReadError(
            f"cannot read {name}: unsupported pixel mode {mode!r} ({_one_line(err)})"
        ) from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a grayscale array linearly from its own min/max onto 0..255 (8-bit input is kept).

    Stretching (rather than a fixed ``/257``) makes 12-bit data in 16-bit containers and float
    TIFFs of any range come out with full contrast; a constant image becomes black.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        # A lookup table keeps the memory at one byte per pixel for big 16-bit films.
        lo, hi = int(arr.min()), int(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        levels = np.arange(hi + 1, dtype=np.float64)
        lut = np.clip(np.rint((levels - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        return lut[arr]
    values = arr.astype(np.float64 if arr.dtype.itemsize > 4 else np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    all_finite = bool(finite.all())
    lo = float(values.min() if all_finite else values[finite].min())
    hi = float(values.max() if all_finite else values[finite].max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    if not all_finite:
        values = np.where(finite, values, lo)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _reduce(img: Image.Image, draft_size: int) -> Image.Image:
    """Box-reduce by an integer factor when the short side exceeds ``4 * draft_size``.

    The factor is chosen so the short side stays ``>= 2 * draft_size``; aspect ratio is kept
    (both sides divided by the same factor, rounded up).
    """
    short = min(img.size)
    if short <= 4 * draft_size:
        return img
    factor = short // (2 * draft_size)
    return img.reduce(factor) if factor >= 2 else img


# --------------------------------------------------------------------------------------------
# DICOM


def _decode_dicom(data: bytes, name: str, max_pixels: int, min_side: int) -> Image.Image:
    """Decode the first frame of a DICOM Part 10 file to RGB (see the module docstring)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
    from pydicom.pixels import pixel_array as dicom_pixel_array

    # pydicom warns (and logs) about odd element values; since only pixel-module elements are
    # parsed none of these can hold identifiers, and silencing them keeps stderr clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False, specific_tags=list(_DICOM_TAGS))
        except Exception as err:
            raise ImageReadError(f"cannot read {name}: invalid DICOM file ({type(err).__name__})") from None

        if "PixelData" not in ds:
            raise ImageReadError(f"cannot read {name}: the DICOM file contains no image (no Pixel Data)")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            samples = int(ds.get("SamplesPerPixel", 1))
            photometric = str(ds.PhotometricInterpretation).strip().upper()
            syntax = ds.file_meta.TransferSyntaxUID
        except Exception as err:
            raise ImageReadError(
                f"cannot read {name}: DICOM image description is incomplete ({_one_line(err)})"
            ) from None
        _check_dimensions(name, cols, rows, max_pixels, min_side)

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise ImageReadError(
                f"cannot read {name}: DICOM transfer syntax {syntax.name!r} ({syntax}) is not supported"
            ) from None
        if not decoder.is_available:
            raise ImageReadError(
                f"cannot read {name}: DICOM transfer syntax {syntax.name!r} needs a decoder plugin that "
                f"is not installed (one of: {'; '.join(decoder.missing_dependencies)})"
            )
        try:
            arr = dicom_pixel_array(ds, index=0)  # first frame only: never decode a whole cine loop
        except Exception as err:
            raise ImageReadError(
                f"cannot read {name}: DICOM pixel data could not be decoded ({_one_line(err)})"
            ) from None

        try:
            if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
                gray = _dicom_gray_to_uint8(arr, ds, apply_modality_lut, apply_voi_lut)
                if photometric == "MONOCHROME1":
                    gray = 255 - gray  # MONOCHROME1 shows low values bright; make bone bright
                return Image.fromarray(gray, mode="L").convert("RGB")
            if photometric == "PALETTE COLOR" and samples == 1:
                rgb = apply_color_lut(arr, ds)
            elif samples == 3:
                rgb = arr  # RGB, or YBR already converted to RGB by pixel_array
            else:
                raise ImageReadError(
                    f"cannot read {name}: unsupported DICOM photometric interpretation {photometric!r}"
                )
        except ImageReadError:
            raise
        except Exception as err:
            raise ImageReadError(
                f"cannot read {name}: DICOM pixel transform failed ({_one_line(err)})"
            ) from None

    if rgb.dtype != np.uint8:
        # Colour channels share one scale so hues are kept.
        peak = float(rgb.max())
        rgb = np.clip(np.rint(rgb.astype(np.float32) * (255.0 / peak)), 0, 255) if peak > 0 else rgb * 0
        rgb = rgb.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def _dicom_gray_to_uint8(arr: np.ndarray, ds: object, modality_lut, voi_lut) -> np.ndarray:
    """Modality LUT, then VOI LUT/window (first view), then min/max to 8 bit.

    A malformed window (e.g. width 0) falls back to the modality values rather than losing the
    image: the min/max stretch still gives a usable picture.
    """
    values = modality_lut(arr, ds)
    with contextlib.suppress(ValueError, IndexError, NotImplementedError, AttributeError):
        values = voi_lut(values, ds, index=0)
    return _to_uint8(np.asarray(values))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file bytes (streamed: radiographs can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
