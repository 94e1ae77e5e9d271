"""Shared fixtures. Every test runs offline: the Hub is unreachable by design."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = (Path(__file__).resolve().parents[2] / "shared" / "data" / "covid19-xray" / "train").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real radiographs shipped beside the project (../shared/data/covid19-xray/train)."""
    assert SHARED_DATA.is_dir(), f"shared data missing at {SHARED_DATA}"
    return SHARED_DATA


TINY_CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


@pytest.fixture(scope="module")
def lite0():
    """A fresh EfficientNet-Lite0 classifier at 96 px (ImageNet weights, new 3-class head) and its processor;
    one per test module, for the tests of training-time hooks (MixStyle, RandConv)."""
    from hfxray import modeling

    return modeling.load_for_finetuning(modeling.resolve_base_model("efficientnet-lite0"), TINY_CLASSES, 96)


@pytest.fixture(scope="module")
def films(shared_data: Path, lite0):
    """Eight real radiographs of the seed data, as ``lite0``'s processor makes them."""
    from hfxray.images import is_supported_path, load_image

    _, processor = lite0
    paths = sorted(p for p in shared_data.rglob("*") if is_supported_path(p))[::30][:8]
    return processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real, tiny, untrained saved model directory (TimmWrapper tf_efficientnet_lite0, 3 classes, 224 px).

    Session-scoped and shared: treat it as read-only (copy it with shutil.copytree before writing,
    e.g. before exporting model.onnx, which changes what Predictor(backend="auto") picks).
    Weights use timm's own initialisation, with the classifier scaled down so the probabilities are
    neither uniform nor saturated (HF's default init gives ~1e-21 logits -> every image 1/3 1/3 1/3,
    which would make consistency tests pass vacuously).
    """
    import json

    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    out = tmp_path_factory.mktemp("tiny_model")
    config = TimmWrapperConfig(
        architecture="tf_efficientnet_lite0",
        num_labels=len(TINY_CLASSES),
        id2label=dict(enumerate(TINY_CLASSES)),
        label2id={c: i for i, c in enumerate(TINY_CLASSES)},
    )
    model = TimmWrapperForImageClassification(config)
    torch.manual_seed(0)
    model.timm_model.load_state_dict(
        timm.create_model("tf_efficientnet_lite0", num_classes=len(TINY_CLASSES)).state_dict()
    )
    with torch.no_grad():
        model.timm_model.get_classifier().weight.mul_(0.1)
    model.eval().save_pretrained(out)
    ViTImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)
    (out / "hfxray.json").write_text(json.dumps({"classes": TINY_CLASSES, "image_size": 224}))
    return out


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The model shipped in the repository (what `make demo` serves)."""
    from hfxray.modeling import DEFAULT_MODEL_DIR

    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), (
        f"bundled model missing at {DEFAULT_MODEL_DIR}"
    )
    return DEFAULT_MODEL_DIR
