"""FastProcessor gives exactly the saved image processor's pixel values, only faster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

from hfxray.images import load_image
from hfxray.modeling import ChestFilmImageProcessor, load_processor, make_processor
from hfxray.preprocessing import FastProcessor, square_resize


def _films(shared_data: Path, tmp_path: Path) -> list[Image.Image]:
    """Real radiographs as every consumer decodes them, plus the awkward cases."""
    paths = [p for d in sorted(shared_data.iterdir()) if d.is_dir() for p in sorted(d.iterdir())[:3]]
    paths += sorted(shared_data.rglob("*.png"))[:2]  # the PNGs of the set are larger, other sizes
    films = [load_image(p, draft_size=224) for p in paths]
    grey = films[0].convert("L")
    grey.save(tmp_path / "grey.png")
    films += [
        load_image(tmp_path / "grey.png", draft_size=224, grey=True),  # mode L: resized before RGB
        grey.resize((150, 100)).convert("RGB"),  # smaller than the input size: upscaled
        films[1].crop((0, 0, films[1].width, films[1].height // 3)),  # wide strip
    ]
    assert {im.mode for im in films} == {"RGB", "L"}
    return films


# The bundled processor, a bicubic ImageNet one at another size, and one that only rescales.
PROCESSORS = [
    "bundled",
    ViTImageProcessorPil(
        size={"height": 192, "width": 192},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ),
    ViTImageProcessorPil(size={"height": 224, "width": 224}, do_normalize=False),
    make_processor([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 224, resample="lanczos", jpeg_quality=92),
]
PROCESSOR_IDS = ["bundled", "imagenet-bicubic-192", "rescale-only", "archive-format"]


@pytest.mark.parametrize("processor", PROCESSORS, ids=PROCESSOR_IDS)
def test_bit_identical_to_the_processor(processor, bundled_model_dir, shared_data, tmp_path):
    if processor == "bundled":
        processor = load_processor(bundled_model_dir)
    fast = FastProcessor.from_processor(processor)
    assert fast is not None
    films = _films(shared_data, tmp_path)
    expected = np.asarray(
        processor(images=[im.convert("RGB") for im in films], return_tensors="np")["pixel_values"]
    )
    got = fast(films)
    assert got.dtype == expected.dtype == np.float32
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.ptp(got) > 0.5  # real contrast, not a constant that would match trivially


def test_other_processors_are_left_to_the_processor():
    """Shortest-edge resizes with centre crops (ConvNeXt, ResNet) are not what FastProcessor does."""
    assert FastProcessor.from_processor(ConvNextImageProcessorPil()) is None
    assert FastProcessor.from_processor(ViTImageProcessorPil(size={"height": 224, "width": 160})) is None
    assert FastProcessor.from_processor(object()) is None


def test_wrong_input_is_refused(bundled_model_dir):
    fast = FastProcessor.from_processor(load_processor(bundled_model_dir))
    with pytest.raises(ValueError, match="224x224 RGB"):
        fast.to_array(Image.new("RGB", (100, 100)))


@pytest.mark.parametrize("processor", PROCESSORS, ids=PROCESSOR_IDS)
def test_from_config_json_equals_the_processor(processor, bundled_model_dir, tmp_path):
    """The lean path (no transformers) rebuilds the same table from preprocessor_config.json alone."""
    if processor == "bundled":
        processor = load_processor(bundled_model_dir)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    reference = FastProcessor.from_processor(processor)
    lean = FastProcessor.from_config(config)
    assert lean is not None and reference is not None
    assert (lean.size, lean.resample, lean.jpeg_quality) == (reference.size, reference.resample, reference.jpeg_quality)
    assert lean.table.dtype == np.float32 and np.array_equal(lean.table, reference.table)


def test_from_config_leaves_other_processors_to_transformers(tmp_path):
    ConvNextImageProcessorPil().save_pretrained(tmp_path)
    assert FastProcessor.from_config(json.loads((tmp_path / "preprocessor_config.json").read_text())) is None
    vit = {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}}
    assert FastProcessor.from_config(vit) is not None
    assert FastProcessor.from_config({**vit, "do_center_crop": True}) is None
    assert FastProcessor.from_config({**vit, "size": {"shortest_edge": 224}}) is None
    assert FastProcessor.from_config({**vit, "size": {"height": 224, "width": 160}}) is None


def test_archive_format_saves_every_film_once_as_a_jpeg(shared_data: Path):
    """Lanczos to S x S, then one JPEG round trip: grey stays one channel, colour stays colour, and an
    image already S x S is taken as it is (so a cached film and its file give the same pixels)."""
    # A grey film larger than 224 px (the seed's own films are tinted: see docs/loso.md)
    film = load_image(shared_data.parents[1] / "cxr-multisource" / "Normal" / "chexpert__view1_frontal.jpg")
    lanczos = square_resize(film, 224, Image.Resampling.LANCZOS)
    archived = square_resize(film, 224, Image.Resampling.LANCZOS, jpeg_quality=92)
    assert archived.size == (224, 224) and archived.mode == "L"  # equal channels: saved as a grey JPEG
    diff = np.abs(np.asarray(archived, dtype=int) - np.asarray(lanczos.convert("L"), dtype=int))
    assert 0 < diff.mean() < 3  # JPEG 92: changed, slightly
    assert square_resize(archived, 224, Image.Resampling.LANCZOS, jpeg_quality=92) is archived
    assert square_resize(archived, 224, Image.Resampling.LANCZOS, jpeg_quality=30) is archived
    colour = Image.merge("RGB", [film.getchannel(0), film.getchannel(0).point(lambda v: v // 2), film.getchannel(0)])
    out = np.asarray(square_resize(colour, 224, Image.Resampling.LANCZOS, jpeg_quality=92))
    assert out.ndim == 3 and np.abs(out[..., 0].astype(int) - out[..., 1]).mean() > 10


def test_archive_format_processor_round_trips_and_stays_hub_loadable(tmp_path: Path, shared_data: Path):
    """Saved as ViTImageProcessor + jpeg_quality: hfxray loads its own class back, plain transformers
    loads a ViT processor with the same size and filter (it only lacks the JPEG step)."""
    from transformers import AutoImageProcessor

    processor = make_processor([0.5] * 3, [0.25] * 3, 224, resample="lanczos", jpeg_quality=92)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "ViTImageProcessor" and config["jpeg_quality"] == 92
    ours = load_processor(tmp_path)
    assert isinstance(ours, ChestFilmImageProcessor) and ours.jpeg_quality == 92
    plain = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert not isinstance(plain, ChestFilmImageProcessor)
    assert (plain.size["height"], plain.resample) == (224, Image.Resampling.LANCZOS)
    assert FastProcessor.from_processor(plain).jpeg_quality is None  # plain transformers: no JPEG step
    film = load_image(sorted((shared_data / "Normal").iterdir())[0], draft_size=224)
    a = ours(images=[film], return_tensors="np")["pixel_values"]
    b = plain(images=[film], return_tensors="np")["pixel_values"]
    assert 0 < np.abs(a - b).mean() < 0.05  # the JPEG step, and nothing else, differs
    # Without jpeg_quality, make_processor is transformers' own class, saved without the key.
    make_processor([0.5] * 3, [0.25] * 3, 224, resample="lanczos").save_pretrained(tmp_path / "plain")
    assert "jpeg_quality" not in json.loads((tmp_path / "plain" / "preprocessor_config.json").read_text())
    with pytest.raises(ValueError, match="jpeg_quality"):
        make_processor([0.5] * 3, [0.25] * 3, 224, jpeg_quality=101)
    with pytest.raises(ValueError, match="resample"):
        make_processor([0.5] * 3, [0.25] * 3, 224, resample="nearest")
    with pytest.raises(ValueError, match="jpeg_quality"):
        FastProcessor.from_config({**config, "jpeg_quality": "high"})
