"""ONNX export and the ONNX Runtime backend agree with PyTorch on real radiographs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from hfxray.images import load_image
from hfxray.inference import ONNX_FILENAME, Predictor
from hfxray.onnx_export import ONNX_MAX_DIFF_KEY, OnnxVerificationError, export_onnx, onnx_metadata

REPO = Path(__file__).resolve().parents[1]


def _radiograph_paths(shared_data: Path, start: int, per_class: int) -> list[Path]:
    out = []
    for d in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        out += sorted(p for p in d.iterdir() if p.is_file())[start : start + per_class]
    return out


@pytest.fixture(scope="module")
def onnx_model_dir(tiny_model_dir, shared_data, tmp_path_factory) -> Path:
    """A copy of the tiny model with a verified model.onnx (the shared fixture stays ONNX-free)."""
    model_dir = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    verify = [load_image(p, draft_size=224) for p in _radiograph_paths(shared_data, 0, 1)]
    path = export_onnx(model_dir, verify_images=verify)
    assert path == model_dir / ONNX_FILENAME and path.is_file()
    return model_dir


@pytest.fixture(scope="module")
def held_out_images(shared_data) -> list:
    """Radiographs not used during export verification."""
    return [load_image(p, draft_size=224) for p in _radiograph_paths(shared_data, 3, 2)]


def test_onnx_matches_torch_on_real_radiographs(onnx_model_dir, held_out_images):
    ort_pred = Predictor.from_pretrained(onnx_model_dir)
    torch_pred = Predictor.from_pretrained(onnx_model_dir, backend="torch")
    assert (ort_pred.backend, torch_pred.backend) == ("onnx", "torch")
    p_ort = ort_pred.predict_images(held_out_images, batch_size=4)
    p_torch = torch_pred.predict_images(held_out_images, batch_size=4)
    assert np.abs(p_ort - p_torch).max() <= 1e-4
    assert np.array_equal(p_ort.argmax(axis=1), p_torch.argmax(axis=1))
    assert (
        np.ptp(p_torch, axis=0).max() > 1e-3
    )  # the model is not constant, so the comparison means something
    assert float(onnx_metadata(onnx_model_dir / ONNX_FILENAME)[ONNX_MAX_DIFF_KEY]) <= 1e-4


def test_onnx_dynamic_batch_and_session_reuse(onnx_model_dir, held_out_images, shared_data):
    predictor = Predictor.from_pretrained(onnx_model_dir, backend="onnx")
    session = predictor.session
    batched = predictor.predict_images(held_out_images, batch_size=5)
    single = np.concatenate([predictor.predict_images([im]) for im in held_out_images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    rows = predictor.predict_paths(_radiograph_paths(shared_data, 3, 1), batch_size=2)
    assert all(r.ok for r in rows)
    assert predictor.session is session  # one InferenceSession for the Predictor's lifetime


def test_stale_onnx_is_not_used(onnx_model_dir, tmp_path, held_out_images):
    """After the weights change (e.g. retraining into the same dir) the old model.onnx must not be used."""
    model_dir = tmp_path / "model"
    shutil.copytree(onnx_model_dir, model_dir)
    weights = load_file(model_dir / "model.safetensors")
    key = next(k for k in weights if k.endswith("classifier.weight"))
    weights[key] = weights[key] * 2
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})

    auto = Predictor.from_pretrained(model_dir)
    assert auto.backend == "torch"
    with pytest.raises(ValueError, match="other weights"):
        Predictor.from_pretrained(model_dir, backend="onnx")
    # re-exporting makes it usable again, and it follows the new weights
    export_onnx(model_dir, verify_images=held_out_images[:2])
    again = Predictor.from_pretrained(model_dir)
    assert again.backend == "onnx"
    np.testing.assert_allclose(
        again.predict_images(held_out_images), auto.predict_images(held_out_images), atol=1e-4
    )


def test_failed_verification_leaves_existing_file_untouched(onnx_model_dir, tmp_path, held_out_images):
    model_dir = tmp_path / "model"
    shutil.copytree(onnx_model_dir, model_dir)
    before = (model_dir / ONNX_FILENAME).read_bytes()
    with pytest.raises(OnnxVerificationError, match="not written"):
        export_onnx(model_dir, verify_images=held_out_images[:1], atol=-1.0)  # no difference is < 0
    assert (model_dir / ONNX_FILENAME).read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []


def test_export_script_prints_difference_on_radiographs(tiny_model_dir, shared_data, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "export_onnx.py"),
            str(model_dir),
            "--images",
            str(shared_data),
            "--n_images",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"max \|p_onnx - p_torch\| = (\S+) on 3 radiographs", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 1e-4
    assert Predictor.from_pretrained(model_dir).backend == "onnx"


def test_onnx_exports_gate_features_matching_torch(onnx_model_dir, held_out_images):
    """The input gate's feature distance must not depend on the backend."""
    ort_pred = Predictor.from_pretrained(onnx_model_dir, backend="onnx")
    torch_pred = Predictor.from_pretrained(onnx_model_dir, backend="torch")
    x = ort_pred.preprocess(held_out_images[:3])
    f_ort = ort_pred.features_pixel_values(x)
    f_torch = torch_pred.features_pixel_values(x)
    assert f_ort.shape == f_torch.shape == (3, torch_pred.model.timm_model.num_features)
    np.testing.assert_allclose(f_ort, f_torch, rtol=1e-3, atol=1e-4)


def _ort_optimised_ops(onnx_path: Path, tmp_path: Path) -> set[str]:
    """Op types left after ONNX Runtime's portable graph optimisations (constant folding, fusions)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


@pytest.mark.parametrize("which", ["exported", "bundled"])
def test_same_padding_is_folded_into_the_convolutions(which, onnx_model_dir, bundled_model_dir, tmp_path):
    """tf_efficientnet's 'SAME' padding must be constant in the graph: computed from the input shape at
    run time, it leaves Pad nodes (and layout conversions) that cost a third of the inference time."""
    model_dir = onnx_model_dir if which == "exported" else bundled_model_dir
    ops = _ort_optimised_ops(model_dir / ONNX_FILENAME, tmp_path)
    assert "Conv" in ops
    assert not ops & {"Pad", "Shape", "Ceil"}, sorted(ops)
