"""Model card generation and the push path, against a local stand-in of the Hub (no internet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_standin import HubStandin
from huggingface_hub import ModelCard
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor, pipeline

from hfxray import DISCLAIMER
from hfxray.hub import NOT_MEASURED, build_model_card, write_model_card

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


def _tiny_model_dir(path: Path, meta: dict | None) -> Path:
    """A real (tiny, random) transformers image classifier saved the way hfxray saves models."""
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    ResNetForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    if meta is not None:
        (path / "hfxray.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


def _full_meta() -> dict:
    return {
        "hfxray_version": "0.1.0",
        "base_model": "microsoft/resnet-50",
        "image_size": 32,
        "classes": CLASSES,
        "temperature": 1.734,
        "ece_before": 0.0912,
        "ece_after": 0.0311,
        "training_data": {
            "dir": "/data/covid19-xray/train",
            "n": 5,
            "fingerprint": "ab" * 32,
            "files": {
                "1" * 64: "Covid/01.png",
                "2" * 64: "Covid/02.png",
                "3" * 64: "Normal/01.jpeg",
                "4" * 64: "Viral Pneumonia/01.jpeg",
                "5" * 64: "Viral Pneumonia/02.jpeg",
            },
            "phash": {},
        },
        "validation": {
            "n": 51,
            "classes": CLASSES,
            "n_per_class": {"Covid": 23, "Normal": 14, "Viral Pneumonia": 14},
            "accuracy": 0.9412,
            "accuracy_ci95": [0.8404, 0.9798],
            "macro_f1": 0.9377,
            "per_class": {
                c: {
                    "n": n,
                    **{k: 0.9 for k in ("sensitivity", "specificity", "ppv", "f1")},
                    **{f"{k}_ci95": [0.7, 0.97] for k in ("sensitivity", "specificity", "ppv")},
                    "auroc": 0.98,
                    "auroc_ci95": [0.93, 1.0],
                }
                for c, n in zip(CLASSES, (23, 14, 14), strict=True)
            },
        },
        "gate": {"method": "feature-distance", "threshold": 1.41},
        "audit": {
            "shortcut_risk": "high",
            "reasons": ["border-only accuracy 0.81 [0.72, 0.88] is far above chance 0.44"],
            "border_only": {"accuracy": 0.81, "ci95": [0.72, 0.88], "chance": 0.44},
            "data_dir": "/data/external",
            "n": 90,
        },
    }


def test_card_shows_sources_licences_and_held_out_sources(tmp_path):
    meta = _full_meta()
    meta["sources"] = {"train": {"Covid": {"bimcv": 545, "cxnet-spain": 90}, "Normal": {"rsna-nih": 539}}}
    meta["data_licences"] = {"bimcv": "BIMCV-COVID19+ research-use terms", "rsna-nih": "research use"}
    meta["validation_by_source"] = {"bimcv": {"n": 139, "accuracy": 0.928, "accuracy_ci95": [0.87, 0.96]}}
    meta["leave_one_source_out"] = [
        {"source": "rsna-nih", "seed": 42, "n": 683, "accuracy": 0.61, "accuracy_ci95": [0.57, 0.65],
         "covid_specificity": 0.61, "covid_specificity_ci95": [0.57, 0.65]},
    ]
    text = str(build_model_card(_tiny_model_dir(tmp_path / "model", meta)))
    assert "| class | bimcv | cxnet-spain | rsna-nih |" in text
    assert "| Covid | 545 | 90 | 0 |" in text and "| Normal | 0 | 0 | 539 |" in text
    assert "- `bimcv`: BIMCV-COVID19+ research-use terms" in text and "research use only" in text
    assert "| bimcv | 139 | 0.928 [0.870, 0.960] |" in text
    assert "| rsna-nih (seed 42) | 683 | 0.610 [0.570, 0.650] |" in text
    assert "archive copy" not in text  # no such measurement in these rows: no column for it

    meta["leave_one_source_out"] += [
        {"source": "seed", "seed": 42, "n": 251, "accuracy": 0.71, "accuracy_ci95": [0.65, 0.77],
         "archive_copy": {"changed": 133, "n": 251, "changed_rate": 0.53, "changed_ci95": [0.47, 0.59]}},
    ]
    text = str(build_model_card(_tiny_model_dir(tmp_path / "model2", meta)))
    assert "class changed as a 224 px archive copy |" in text
    assert "| seed (seed 42) | 251 | 0.710 [0.650, 0.770] | - | - | 0.530 [0.470, 0.590] |" in text
    assert "| rsna-nih (seed 42) | 683 | 0.610 [0.570, 0.650] | - | 0.610 [0.570, 0.650] | not measured |" in text

    meta["leave_one_source_out"][1].update(covid_auroc=0.92, covid_auroc_ci95=[0.88, 0.95])
    meta["leave_sources_out_together"] = [
        {"source": "all held out", "fold": "cxnet-spain+seed", "seed": 43, "n": 359, "accuracy": 0.68,
         "accuracy_ci95": [0.64, 0.73], "covid_sensitivity": 0.79, "covid_sensitivity_ci95": [0.73, 0.84],
         "covid_specificity": 0.74, "covid_specificity_ci95": [0.67, 0.81], "covid_auroc": 0.88,
         "covid_auroc_ci95": [0.85, 0.91]},
    ]
    text = str(build_model_card(_tiny_model_dir(tmp_path / "model3", meta)))
    assert "| Covid AUROC (threshold-free) | class changed as a 224 px archive copy |" in text
    assert "| seed (seed 42) | 251 | 0.710 [0.650, 0.770] | - | - | 0.920 [0.880, 0.950] | 0.530 [0.470, 0.590] |" in text
    assert "| rsna-nih (seed 42) | 683 | 0.610 [0.570, 0.650] | - | 0.610 [0.570, 0.650] | - | not measured |" in text
    assert "### New hospitals: several sources held out at once" in text
    assert (
        "| cxnet-spain, seed (seed 43) | 359 | 0.680 [0.640, 0.730] | 0.790 [0.730, 0.840] | "
        "0.740 [0.670, 0.810] | 0.880 [0.850, 0.910] |"
    ) in text


def test_card_renders_from_metadata_and_round_trips(tmp_path):
    model_dir = _tiny_model_dir(tmp_path / "model", _full_meta())
    path = write_model_card(model_dir)
    assert path == model_dir / "README.md"
    text = path.read_text(encoding="utf-8")
    card = ModelCard.load(path)
    built = build_model_card(model_dir)
    # Metadata survives save -> load unchanged.
    assert card.data.to_dict() == built.data.to_dict()
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == "microsoft/resnet-50"
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(0.9412)
    assert results["f1"].metric_value == pytest.approx(0.9377)
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert data["model-index"][0]["results"][0]["task"]["type"] == "image-classification"
    # Body: provenance, intervals, calibration, audit, intended use, limitations, usage.
    for needle in (
        "/data/covid19-xray/train",
        "Covid: 2, Normal: 1, Viral Pneumonia: 2",
        "ab" * 32,
        "0.941 [0.840, 0.980]",
        "| Normal | 14 | 0.900 [0.700, 0.970] |",
        "T = 1.734",
        "before: 0.091, after: 0.031",
        "Shortcut risk: **high**",
        "far above chance",
        "NOT a diagnostic device",
        DISCLAIMER,
        "Viral Pneumonia is a children's class",
        'pipeline("image-classification"',
    ):
        assert needle in text, needle
    assert NOT_MEASURED not in text.split("## Training data")[1].split("## Limitations")[0]


def test_card_with_missing_metadata_says_not_measured(tmp_path):
    bare = _tiny_model_dir(tmp_path / "bare", None)
    card = build_model_card(bare)
    assert "model-index" not in card.data.to_dict()
    assert card.text.count(NOT_MEASURED) >= 4
    partial = _tiny_model_dir(
        tmp_path / "partial",
        {
            "classes": CLASSES,
            "base_model": "/local/backbone",
            "validation": {"accuracy": "n/a"},
            "audit": None,
        },
    )
    write_model_card(partial)
    card = ModelCard.load(partial / "README.md")
    assert card.data.base_model is None  # a local path is not a Hub id
    assert card.data.eval_results is None
    assert "Shortcut audit: not measured" in card.text
    assert "Temperature scaling: not measured" in card.text


def test_card_usage_snippet_runs(tmp_path):
    """The card's `pipeline("image-classification", model=...)` snippet works on the saved dir."""
    model_dir = _tiny_model_dir(tmp_path / "model", _full_meta())
    write_model_card(model_dir)
    classifier = pipeline("image-classification", model=str(model_dir))
    rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    out = classifier(Image.fromarray(rgb), top_k=None)
    assert sorted(o["label"] for o in out) == sorted(CLASSES)
    assert sum(o["score"] for o in out) == pytest.approx(1.0, abs=1e-5)


def _run_push(args: list[str], endpoint: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_test",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_push_to_local_hub_standin(tmp_path):
    model_dir = _tiny_model_dir(tmp_path / "model", _full_meta())
    (model_dir / "model.safetensors.tmp").write_bytes(b"half-written")  # must not be uploaded
    (model_dir / ".lock").write_text("x")
    with HubStandin() as hub:
        result = _run_push([str(model_dir), "--repo_id", "tester/tiny-cxr", "--private"], hub.url)
        assert result.returncode == 0, result.stderr[-3000:]
        # Second push to the existing repo: create_repo(exist_ok=True) gets 409 and goes on.
        again = _run_push([str(model_dir), "--repo_id", "tester/tiny-cxr"], hub.url)
        assert again.returncode == 0, again.stderr[-3000:]

    assert hub.created[0] == {
        "name": "tiny-cxr",
        "organization": "tester",
        "visibility": "private",
        "type": "model",
    }
    assert all(r.headers.get("authorization") == "Bearer hf_test" for r in hub.requests if r.method == "POST")
    assert "/api/models/tester/tiny-cxr/preupload/main" in hub.paths("POST")
    assert "/api/models/tester/tiny-cxr/commit/main" in hub.paths("POST")
    assert len(hub.commits) == 2
    stored = hub.repos["tester/tiny-cxr"]
    assert set(stored) == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "hfxray.json",
        "README.md",
    }
    assert stored["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    assert json.loads(stored["config.json"])["id2label"]["2"] == "Viral Pneumonia"
    card_text = stored["README.md"].decode("utf-8")
    assert 'model="tester/tiny-cxr"' in card_text
    assert (
        ModelCard(card_text).data.to_dict()
        == build_model_card(model_dir, repo_id="tester/tiny-cxr").data.to_dict()
    )
    assert "tester/tiny-cxr" in result.stdout


def test_push_refuses_offline_and_non_model_dir(tmp_path):
    with HubStandin() as hub:
        bare = _run_push([str(_tiny_model_dir(tmp_path / "m", None)), "--repo_id", "t/x"], hub.url)
        assert bare.returncode == 0, bare.stderr[-3000:]  # a dir without hfxray.json still pushes
        not_model = _run_push([str(tmp_path), "--repo_id", "t/x"], hub.url)
    assert not_model.returncode != 0
    assert "no config.json" in not_model.stderr.strip().splitlines()[-1]
    offline = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "push_to_hub.py"),
            str(tmp_path / "m"),
            "--repo_id",
            "t/x",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode != 0
    assert "HF_HUB_OFFLINE" in offline.stderr.strip().splitlines()[-1]


def test_card_says_when_the_model_expects_the_archive_format(tmp_path):
    """A Hub user with plain transformers must learn that the JPEG step is not in AutoImageProcessor."""
    from hfxray.modeling import make_processor

    model_dir = _tiny_model_dir(tmp_path / "model", _full_meta())
    assert "JPEG" not in str(build_model_card(model_dir)).split("## Intended use")[0]
    make_processor([0.5] * 3, [0.5] * 3, 32, resample="lanczos", jpeg_quality=92).save_pretrained(model_dir)
    head = str(build_model_card(model_dir)).split("## Intended use")[0]
    assert "JPEG 92" in head and "AutoImageProcessor" in head


def test_card_usage_keeps_the_jpeg_step_and_quotes_what_plain_transformers_changes(tmp_path):
    """With the archive format the card's pipeline line passes hfxray's processor, and says how many
    films plain transformers would answer differently when that was measured."""
    from hfxray.hub import update_metadata
    from hfxray.modeling import make_processor

    model_dir = _tiny_model_dir(tmp_path / "model", _full_meta())
    usage = str(build_model_card(model_dir)).split("## How to use")[1]
    assert "load_processor" not in usage and 'pipeline("image-classification", model=' in usage
    make_processor([0.5] * 3, [0.5] * 3, 32, resample="lanczos", jpeg_quality=92).save_pretrained(model_dir)
    usage = str(build_model_card(model_dir)).split("## How to use")[1]
    assert "image_processor=load_processor(" in usage and "not measured for this model" in usage
    measured = {"n": 277, "class_changed": 31, "class_changed_ci95": [0.080, 0.154], "films": "larger than 224 px"}
    update_metadata(model_dir, plain_pipeline=measured)
    usage = str(build_model_card(model_dir)).split("## How to use")[1]
    assert "31 of 277 films larger than 224 px (11.2%, 95% CI 8.0%-15.4%" in usage


def test_load_processor_keeps_the_jpeg_step_for_a_hub_id(tmp_path):
    """A model pulled from the Hub (here: its files in the Hub cache, offline) loads with the JPEG step."""
    from hfxray.modeling import make_processor

    snapshot = tmp_path / "hub" / "models--someone--cxr" / "snapshots" / ("0" * 40)
    make_processor([0.5] * 3, [0.5] * 3, 32, resample="lanczos", jpeg_quality=92).save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--cxr" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--cxr" / "refs" / "main").write_text("0" * 40)
    code = (
        "from hfxray.modeling import load_processor\n"
        "p = load_processor('someone/cxr')\n"
        "print(type(p).__name__, p.jpeg_quality)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ChestFilmImageProcessor", "92"]
