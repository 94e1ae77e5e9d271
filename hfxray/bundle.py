"""Build the bundled default model: train with the library's own command, shrink, export, card.

`make model` runs this on ../shared/data/covid19-xray/train. The result lives in the repository
(`hfxray/default_model`), so every step is deterministic and the directory stays small: weights
in fp16 (loaded back as float32), an fp32 ONNX export made from those same rounded weights so that
both backends agree.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from hfxray import modeling

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def weights_to_fp16(model_dir: str | Path) -> int:
    """Rewrite model.safetensors with float tensors in fp16; returns the new size in bytes."""
    path = Path(model_dir) / "model.safetensors"
    tensors = load_file(path)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    tmp = path.with_suffix(".tmp")
    save_file(half, tmp, metadata={"format": "pt"})
    tmp.replace(path)
    return path.stat().st_size


def build_default_model(data_dir: str | Path, output_dir: str | Path, train_args: list[str] | None = None) -> Path:
    """Train on `data_dir` with scripts/train.py defaults, then `finish_bundle`."""
    out = Path(output_dir)
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "--data_dir", str(data_dir), "--output_dir", str(out),
        "--overwrite_output_dir", "true", *(train_args or []),
    ]
    logger.info("training: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return finish_bundle(out, data_dir)


def finish_bundle(out: Path, data_dir: str | Path) -> Path:
    """fp16 weights, an ONNX export verified on real radiographs, the shortcut audit on the
    held-out validation split, and the model card."""
    from hfxray import audit, hub, onnx_export
    from hfxray.data import load_image_folder

    size = weights_to_fp16(out)
    logger.info("weights stored in fp16: %.1f MB", size / 1e6)
    processor = modeling.load_processor(out)
    ds, _ = load_image_folder(data_dir, image_size=processor.size["height"])
    verify = [ds[i]["image"] for i in range(0, len(ds), max(len(ds) // 12, 1))]
    onnx_export.export_onnx(out, verify_images=verify)
    with tempfile.TemporaryDirectory() as tmp:
        val_dir = audit.rebuild_validation_folder(out, data_dir, Path(tmp) / "validation")
        result = audit.run_audit(out, val_dir, output_dir=Path(tmp) / "audit")
        result["data_dir"] = "the model's held-out validation split"  # not the temporary folder
        audit.write_audit_to_model(out, result)
    hub.write_model_card(out)
    return out
