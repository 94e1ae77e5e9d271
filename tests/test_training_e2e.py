"""End to end on real radiographs: train a small model, save, reload, evaluate, predict.

Small on purpose (a stratified subset, 96 px, one epoch per phase) so it runs in CI on 2 cores;
what it checks is consistency, not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from hfxray.inference import Predictor

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = [
    "--image_size", "96", "--max_train_samples", "36", "--head_epochs", "1", "--num_train_epochs", "1",
    "--lr_find_steps", "6", "--per_device_train_batch_size", "8", "--model_name_or_path", "efficientnet-lite0",
    # the archive input format, so that training, evaluate.py, predict.py and ONNX are checked on it
    "--resample", "lanczos", "--jpeg_quality", "92",
]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def small_folder(shared_data: Path, tmp_path_factory) -> Path:
    """A labelled folder of 4 real images per class (copies; the shared data is read-only)."""
    out = tmp_path_factory.mktemp("eval") / "Test"
    for cls_dir in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        (out / cls_dir.name).mkdir(parents=True)
        for f in sorted(cls_dir.iterdir())[-4:]:
            shutil.copy(f, out / cls_dir.name / f.name)
    return out


@pytest.fixture(scope="module")
def trained_dir(shared_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "xray-model"
    cmd = [sys.executable, str(ROOT / "scripts/train.py"), "--data_dir", str(shared_data), "--output_dir", str(out), *TRAIN_FLAGS]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation accuracy" in proc.stdout
    return out


@pytest.mark.slow
def test_saved_directory_format(trained_dir: Path) -> None:
    names = {p.name for p in trained_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "hfxray.json", "lr_find.png"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names), names
    assert not [p for p in trained_dir.parent.iterdir() if ".tmp-" in p.name], "temp dir left behind"
    # TimmWrapperConfig writes the labels as `label_names`; transformers rebuilds id2label from them.
    config = AutoConfig.from_pretrained(trained_dir)
    assert config.id2label == {0: "Covid", 1: "Normal", 2: "Viral Pneumonia"}
    meta = json.loads((trained_dir / "hfxray.json").read_text())
    assert meta["classes"] == ["Covid", "Normal", "Viral Pneumonia"]
    assert meta["image_size"] == 96
    processor = json.loads((trained_dir / "preprocessor_config.json").read_text())
    assert (processor["resample"], processor["jpeg_quality"]) == (1, 92)  # LANCZOS, the archive format
    assert processor["image_processor_type"] == "ViTImageProcessor"  # plain AutoImageProcessor loads it
    assert meta["learning_rates"]["head_lr"] > 0
    assert meta["learning_rates"]["backbone_lr"] < meta["learning_rates"]["unfrozen_head_lr"]
    assert meta["temperature"] > 0
    assert meta["split"]["n_train"] + meta["split"]["n_validation"] == 36
    assert len(meta["training_data"]["fingerprint"]) == 64
    v = meta["validation"]
    assert v["n"] == meta["split"]["n_validation"]
    assert np.asarray(v["confusion_matrix"]).sum() == v["n"]
    assert v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1]
    phases = {h["phase"] for h in meta["log_history"]}
    assert phases == {"head", "all layers"}
    assert any("eval_accuracy" in h for h in meta["log_history"])
    assert load_file(trained_dir / "model.safetensors")  # loads without unpickling


@pytest.mark.slow
def test_reloaded_model_is_deterministic_and_evaluates(trained_dir: Path, small_folder: Path, tmp_path: Path) -> None:
    a = Predictor.from_pretrained(trained_dir, backend="torch")
    b = Predictor.from_pretrained(trained_dir, backend="torch")
    files = sorted(small_folder.rglob("*.*"))
    pa = np.array([list(r.probs.values()) for r in a.predict_paths(files)])
    pb = np.array([list(r.probs.values()) for r in b.predict_paths(files)])
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_allclose(pa.sum(axis=1), 1.0, atol=1e-5)

    report_dir = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/evaluate.py"), "--data_dir", str(small_folder), "--model", str(trained_dir),
         "--output_dir", str(report_dir)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((report_dir / "metrics.json").read_text())
    assert m["n"] == len(files) == 12
    assert m["classes"] == ["Covid", "Normal", "Viral Pneumonia"]
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == m["n"] and (cm.sum(axis=1) == 4).all()
    assert abs(m["accuracy"] - np.trace(cm) / cm.sum()) < 1e-9
    for cls in m["classes"]:
        for key in ("sensitivity", "specificity", "ppv", "f1", "auroc"):
            assert key in m["per_class"][cls]
    for name in ("confusion_matrix.png", "most_wrong.png", "report.html", "predictions.csv"):
        assert (report_dir / name).stat().st_size > 0
    # evaluate's predictions agree with the Predictor on the same files
    with (report_dir / "predictions.csv").open() as fh:
        rows = {Path(r["path"]).resolve(): r for r in csv.DictReader(fh)}
    assert set(rows) == {f.resolve() for f in files}
    for f, p in zip(files, pa, strict=True):
        assert abs(float(rows[f.resolve()]["prob_Covid"]) - p[0]) < 1e-4


@pytest.mark.slow
def test_predict_script_on_trained_model(trained_dir: Path, small_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/predict.py"), str(small_folder), "--model", str(trained_dir), "--output", str(out)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    for r in rows:
        total = sum(float(r[f"prob_{c}"]) for c in ("Covid", "Normal", "Viral Pneumonia"))
        assert abs(total - 1) < 1e-4


@pytest.mark.slow
def test_two_process_accelerate_launch(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp-model"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "scripts/train.py"), "--data_dir", str(shared_data), "--output_dir", str(out), *TRAIN_FLAGS,
        "--learning_rate_find", "false", "--learning_rate", "1e-3", "--fit_input_gate", "false",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "hfxray.json"} <= {p.name for p in out.iterdir()}
    p = Predictor.from_pretrained(out, backend="torch")
    assert p.classes == ["Covid", "Normal", "Viral Pneumonia"]


@pytest.mark.slow
def test_evaluate_on_a_class_subset(trained_dir: Path, small_folder: Path, tmp_path: Path) -> None:
    """External validation: a folder with only Covid/ and Normal/ reports what it can measure."""
    subset = tmp_path / "external"
    for cls in ("Covid", "Normal"):
        shutil.copytree(small_folder / cls, subset / cls)
    report_dir = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/evaluate.py"), "--data_dir", str(subset), "--model", str(trained_dir),
         "--output_dir", str(report_dir)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((report_dir / "metrics.json").read_text())
    assert m["n"] == 8
    assert m["n_per_class"]["Viral Pneumonia"] == 0
    vp = m["per_class"]["Viral Pneumonia"]
    assert vp["sensitivity"] is None and vp["auroc"] is None
    for cls in ("Covid", "Normal"):
        assert m["per_class"][cls]["sensitivity"] is not None
        assert m["per_class"][cls]["specificity"] is not None
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm[2].sum() == 0 and cm.sum() == 8
    assert m["input_gate"]["n"] == 8 and 0 <= m["input_gate"]["abstained"] <= 8


@pytest.mark.slow
def test_finish_bundle_makes_a_small_audited_onnx_model(trained_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    """The steps of `make model` after training: fp16 weights, verified ONNX, audit, card."""
    from huggingface_hub import ModelCard

    from hfxray.bundle import finish_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_dir, bundle)
    before = (bundle / "model.safetensors").stat().st_size
    finish_bundle(bundle, shared_data)
    weights = load_file(bundle / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert (bundle / "model.safetensors").stat().st_size < 0.6 * before
    meta = json.loads((bundle / "hfxray.json").read_text())
    assert meta["audit"]["shortcut_risk"] in {"low", "moderate", "high"}
    card = ModelCard.load(bundle / "README.md")
    assert "Shortcut audit" in card.text and "not a diagnostic device" in card.text.lower()
    onnx = Predictor.from_pretrained(bundle)
    torch_backend = Predictor.from_pretrained(bundle, backend="torch")
    assert onnx.backend == "onnx"
    files = sorted(shared_data.glob("Normal/*"))[:4]
    a = np.array([list(r.probs.values()) for r in onnx.predict_paths(files)])
    b = np.array([list(r.probs.values()) for r in torch_backend.predict_paths(files)])
    assert np.abs(a - b).max() <= 1e-4
