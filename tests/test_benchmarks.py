"""benchmarks/run.py --quick runs end to end, so the benchmark cannot rot.

Timings are printed, never asserted (shared machines are noisy); only the structure of
results.json and the sanity of its numbers (finite, positive, accuracies in [0, 1]) are checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN = REPO_ROOT / "benchmarks" / "run.py"
INFERENCE_SIDES = ("hfxray_default", "hfxray_torch", "transformers_pipeline", "fastai")
FASTAI = importlib.util.find_spec("fastai") is not None


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _load_run_module():
    spec = importlib.util.spec_from_file_location("hfxray_benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_test_image_is_a_1024px_png_from_a_real_radiograph(shared_data, tmp_path):
    run = _load_run_module()
    files = run.image_files(shared_data)
    assert set(files) == {"Covid", "Normal", "Viral Pneumonia"}
    info = run.make_test_png(files, tmp_path / "x.png")
    with Image.open(info["path"]) as im:
        assert im.format == "PNG"
        assert max(im.size) == 1024
    assert Path(info["source"]).parent.parent == shared_data
    subset = run.pick(files, 2, smallest=True)
    assert all(len(v) == 2 for v in subset.values())


@pytest.mark.slow
def test_quick_benchmark_writes_complete_results(shared_data, tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--data_dir", str(shared_data), "--output", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=1500,
    )
    print(proc.stdout)  # the timings, for whoever reads the CI log
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| comparison | side |" in proc.stdout

    r = json.loads(out.read_text())
    assert r["mode"] == "quick"
    assert r["fastai_available"] is FASTAI
    assert _positive(r["system"]["matmul_gflops"])
    assert r["setup"]["test_image"]["size"][0] == 1024 or r["setup"]["test_image"]["size"][1] == 1024

    for side in INFERENCE_SIDES:
        lat, bat = r["latency"][side], r["batch"][side]
        if side == "fastai" and not FASTAI:
            assert lat["skipped"] == bat["skipped"] == "fastai not installed: skipped"
            continue
        assert "error" not in lat, lat
        assert lat["iterations"] >= 1
        assert all(_positive(lat[k]) for k in ("p50_ms", "p95_ms", "peak_rss_mib")), lat
        assert lat["p50_ms"] <= lat["p95_ms"]
        assert bat["n_images"] == r["setup"]["batch_files"] > 0
        assert all(_positive(bat[k]) for k in ("images_per_s", "flops_per_image", "matmul_share")), bat

    for side in ("hfxray", "fastai"):
        t = r["training"][side]
        if side == "fastai" and not FASTAI:
            assert t["skipped"] == "fastai not installed: skipped"
            continue
        assert "error" not in t, t
        assert _positive(t["train_wall_s"]) and _positive(t["peak_rss_mib"])
        assert 0.0 <= t["val_accuracy"] <= 1.0
        assert t["n_train"] > 0 and t["n_validation"] > 0

    ratios = r["ratios"]
    assert _positive(ratios["batch_hfxray_over_pipeline"]) and _positive(ratios["latency_p50_pipeline_over_hfxray"])
    if FASTAI:
        assert _positive(ratios["latency_p50_fastai_over_hfxray"]) and _positive(ratios["batch_hfxray_over_fastai"])
        assert any("than the fastai recipe" in line for line in r["headline"])
    assert r["table"] and all(line.startswith("|") for line in r["table"])
    # the bundled model ships model.onnx: the default side's batch entry carries the stage profile
    profile = r["batch"]["hfxray_default"]["profile"]
    assert all(_positive(profile[k]) for k in ("decode_ms", "prepare_ms", "model_ms", "ceiling_images_per_s"))
    assert any(line.startswith("| batch path profile |") for line in r["table"])


@pytest.mark.slow
def test_scale_benchmark_runs_and_every_file_is_predicted_once(tmp_path):
    """benchmarks/scale.py (archive part, small): one process and a SIGINT + --resume run."""
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "scale.py"), "--files", "60", "--modes", "single,resume",
         "--old_commit", "", "--output", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    archive = json.loads(out.read_text())["archive"]
    assert archive["files"] == 60
    for part in ("one_process", "kill_and_resume"):
        assert archive[part]["every_file_exactly_once"], archive[part]
    assert _positive(archive["one_process"]["images_per_s"])
    assert _positive(archive["one_process"]["rss"]["max_peak_rss_mib_per_predict_process"])
    assert archive["kill_and_resume"]["output_existed_after_sigint"] is False


def _run_plain_pipeline(model: Path, data: Path, results: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "plain_pipeline.py"), "--model", str(model),
         "--data_dir", str(data), "--results", str(results), *extra],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results.read_text())


def test_plain_pipeline_benchmark_sees_the_missing_jpeg_step(shared_data, bundled_model_dir, tmp_path):
    """The bundled model (archive format) answers differently through plain transformers; the same
    model without the JPEG step answers identically, so the difference is that step."""
    import shutil

    films = tmp_path / "films"
    for i, path in enumerate(sorted(p for p in shared_data.rglob("*.*") if p.is_file())[::25][:10]):
        (films / path.parent.name).mkdir(parents=True, exist_ok=True)
        (films / path.parent.name / f"{i}{path.suffix}").symlink_to(path)
    model = tmp_path / "model"
    shutil.copytree(bundled_model_dir, model)
    out = _run_plain_pipeline(model, films, tmp_path / "archive.json", "--attach")
    assert out["hfxray_processor"] == "ChestFilmImageProcessor"
    for side in ("plain", "plain_pil"):
        assert out[side]["n"] == 10 and 0 <= out[side]["class_changed"] <= 10
        assert out[side]["processor"] != "ChestFilmImageProcessor"
        assert out[side]["max_probability_change_median"] > 1e-4  # every film's pixels differ by the JPEG step
    card = (model / "README.md").read_text()
    larger = out["plain"]["films_larger_than_224px"]  # the seed films are all larger than 224 px
    assert larger["n"] == 10 and f"changes on {larger['class_changed']} of 10 films larger than 224 px" in card

    config = json.loads((model / "preprocessor_config.json").read_text())
    config.pop("jpeg_quality")
    (model / "preprocessor_config.json").write_text(json.dumps(config))
    same = _run_plain_pipeline(model, films, tmp_path / "plain.json")
    assert same["plain_pil"]["class_changed"] == 0 and same["plain_pil"]["max_probability_change_p95"] < 1e-5
