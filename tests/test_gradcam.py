"""Grad-CAM on real (tiny and ImageNet) models and real images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from hfxray.gradcam import central_mass, explain, find_target_layer, grad_cam, overlay
from hfxray.images import load_image
from hfxray.inference import Predictor
from hfxray.modeling import load_model, offline_backbone_dir, scratch_resnet_config


def _radiograph(shared_data: Path) -> Image.Image:
    path = sorted((shared_data / "Normal").iterdir())[0]
    return load_image(path, draft_size=224)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_grad_cam_on_a_radiograph_is_a_normalised_map(tiny, shared_data):
    model, processor = tiny
    pixel_values = processor(images=[_radiograph(shared_data)], return_tensors="pt")["pixel_values"]
    cam = grad_cam(model, pixel_values)
    assert cam.shape == (224, 224)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() > 0.99 and cam.std() > 0.01  # min-max scaled, not flat


def test_target_layer_is_the_last_spatial_feature_map(tiny):
    model, _ = tiny
    layer = find_target_layer(model, torch.zeros(1, 3, 224, 224))
    assert layer is model.timm_model.bn2  # after conv_head, before global pooling


def test_explain_matches_predictor_and_timm_features(tiny, tiny_model_dir, shared_data):
    model, processor = tiny
    images = [load_image(p, draft_size=224) for p in sorted((shared_data / "Covid").iterdir())[:3]]
    predictor = Predictor.from_pretrained(tiny_model_dir, backend="torch")
    pixel_values = torch.from_numpy(predictor.preprocess(images))
    out = explain(model, pixel_values)
    np.testing.assert_allclose(out.probs, predictor.predict_images(images), atol=1e-5)
    assert out.target_classes == [int(i) for i in out.probs.argmax(1)]
    with torch.no_grad():
        tm = model.timm_model
        expected = tm.forward_head(tm.forward_features(pixel_values), pre_logits=True).numpy()
    np.testing.assert_allclose(out.features, expected, rtol=1e-4, atol=1e-5)
    assert out.cams.shape == (3, 224, 224)


def test_target_class_changes_the_map_and_is_validated(tiny, shared_data):
    model, processor = tiny
    pixel_values = processor(images=[_radiograph(shared_data)], return_tensors="pt")["pixel_values"]
    maps = [grad_cam(model, pixel_values, target_class=c) for c in range(3)]
    assert not np.allclose(maps[0], maps[1]) or not np.allclose(maps[1], maps[2])
    with pytest.raises(ValueError, match="target_class"):
        grad_cam(model, pixel_values, target_class=7)


def test_grad_cam_finds_the_cat_with_an_imagenet_model():
    """A real localisation check: a cat on the left half, blank grey right half. The ImageNet
    backbone's Grad-CAM for its predicted class must put most of the heat on the left."""
    model, processor = load_model(offline_backbone_dir("efficientnet-lite0"))
    cat = Image.fromarray(data.chelsea()).resize((224, 448))
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(cat, (0, 0))
    pixel_values = processor(images=[canvas], return_tensors="pt")["pixel_values"]
    out = explain(model, pixel_values)
    assert "cat" in model.config.id2label[out.target_classes[0]].lower()
    left = central_mass(out.cams[0], lung_box=(0.0, 0.0, 0.5, 1.0))
    assert left > 0.7


def test_grad_cam_on_a_transformers_resnet():
    from transformers import ResNetForImageClassification

    config = scratch_resnet_config(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    torch.manual_seed(0)
    model = ResNetForImageClassification(config).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    assert find_target_layer(model, pixel_values) is model.resnet.encoder.stages[-1]
    cams = grad_cam(model, pixel_values)
    assert cams.shape == (2, 64, 64)
    assert np.isfinite(cams).all()


def test_overlay_blends_at_the_image_size():
    image = Image.fromarray(data.camera()).convert("RGB")
    cam = np.zeros((224, 224), np.float32)
    cam[:112, :112] = 1.0
    assert np.array_equal(np.asarray(overlay(image, cam, alpha=0.0)), np.asarray(image))
    blended = np.asarray(overlay(image, cam, alpha=0.5)).astype(int)
    assert blended.shape == (*image.size[::-1], 3)
    # hot corner turns red-ish (jet's top), the cold corner blue-ish
    hot, cold = blended[:100, :100].mean((0, 1)), blended[-100:, -100:].mean((0, 1))
    assert hot[0] > hot[2] and cold[2] > cold[0]
    with pytest.raises(ValueError):
        overlay(image, cam, alpha=1.5)


def test_central_mass():
    inside = np.zeros((100, 100))
    inside[40:60, 40:60] = 1.0
    assert central_mass(inside) == pytest.approx(1.0)
    corner = np.zeros((100, 100))
    corner[:5, :5] = 1.0
    assert central_mass(corner) == pytest.approx(0.0)
    assert central_mass(np.ones((100, 100))) == pytest.approx(0.7 * 0.8)
    assert central_mass(np.zeros((10, 10))) == 0.0
    with pytest.raises(ValueError):
        central_mass(np.ones((10, 10)), lung_box=(0.5, 0.0, 0.4, 1.0))
