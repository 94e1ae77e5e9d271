#!/usr/bin/env python
"""Benchmarks: hfxray against what a user would pick instead, side by side on one machine.

    HF_HUB_OFFLINE=1 python benchmarks/run.py [--quick] [--model DIR] [--output PATH] [--fastai_python PY]

Compares (each side in its own process, so peak memory is its own):
  * single-image latency, file -> probabilities, on a 1024 px PNG made from a real radiograph;
  * batch throughput on a folder of real radiographs;
  * training wall time and validation accuracy (scripts/train.py defaults vs fastai fine_tune);
  * peak RSS, measured fp32 matmul GFLOP/s, model FLOPs and the share of the matmul limit reached.
The contenders are hfxray (ONNX Runtime default, PyTorch), a plain ``transformers`` pipeline, and the
original recipe: fastai ``vision_learner(resnet50)`` (skipped, and said so, when fastai is missing), run
by ``--fastai_python`` (default: this interpreter; ``make bench`` uses its own ``.venv-bench``, so the
project venv's exact packages stay as they are).
Shared machines are noisy, so the ratios are the headline, not the absolute numbers.
``--quick`` (CI) uses a few iterations and tiny subsets. Research software, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "covid19-xray" / "train"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
SIDES_SCRIPT = Path(__file__).resolve().parent / "sides.py"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TEST_IMAGE_SIDE = 1024

INFERENCE_SIDES = {
    "hfxray_default": "hfxray default (Predictor, ONNX Runtime if model.onnx)",
    "hfxray_torch": "hfxray PyTorch (Predictor backend=torch)",
    "transformers_pipeline": "transformers pipeline (same model dir)",
    "fastai": "fastai recipe: vision_learner(resnet50)",
}
TRAINING_SIDES = {
    "hfxray": "hfxray scripts/train.py defaults",
    "fastai": "fastai recipe: resnet50 fine_tune (no ImageNet weights offline)",
}


@dataclasses.dataclass(frozen=True)
class Mode:
    """Iteration counts and subset sizes; ``quick`` keeps a CI run under ~2 minutes on 2 busy cores."""

    name: str
    warmup: int
    iters: int
    repeats: int
    batch_per_class: int | None  # None: every image
    train_per_class: int | None
    matmul_reps: int
    side_timeout_s: int


QUICK = Mode("quick", warmup=1, iters=3, repeats=1, batch_per_class=2, train_per_class=8, matmul_reps=3,
             side_timeout_s=600)
FULL = Mode("full", warmup=3, iters=30, repeats=2, batch_per_class=None, train_per_class=None, matmul_reps=10,
            side_timeout_s=3600)


# ------------------------------------------------------------------------------------------ inputs
def image_files(data_dir: Path) -> dict[str, list[Path]]:
    """{class folder: sorted image paths} of an ImageFolder-style directory."""
    classes = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS) for c in classes}
    if not any(out.values()):
        raise SystemExit(f"error: no images in class sub-folders of {data_dir}")
    return out


def pick(files: dict[str, list[Path]], per_class: int | None, *, smallest: bool = False) -> dict[str, list[Path]]:
    """The first ``per_class`` files of each class (smallest files first when asked: quick mode)."""
    if per_class is None:
        return files
    key = (lambda p: (p.stat().st_size, p.name)) if smallest else (lambda p: p.name)
    return {c: sorted(fs, key=key)[:per_class] for c, fs in files.items()}


def make_test_png(files: dict[str, list[Path]], out: Path) -> dict[str, Any]:
    """A 1024 px (longest side) grayscale PNG from the first real radiograph at least that large."""
    from PIL import Image

    candidates = [p for fs in files.values() for p in fs]
    for path in candidates:
        with Image.open(path) as im:
            if min(im.size) >= TEST_IMAGE_SIDE:
                source = path
                break
    else:
        source = max(candidates, key=lambda p: p.stat().st_size)
    with Image.open(source) as im:
        im = im.convert("L")
        scale = TEST_IMAGE_SIDE / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        im.save(out, format="PNG")
        size = im.size
    return {"path": str(out), "source": str(source), "size": list(size), "bytes": out.stat().st_size}


def link_subset(files: dict[str, list[Path]], out: Path) -> Path:
    """An ImageFolder of symlinks, so every trainer reads the same subset without copying images."""
    for cls, fs in files.items():
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in fs:
            (out / cls / f.name).symlink_to(f.resolve())
    return out


def build_tiny_model(out: Path, classes: list[str]) -> Path:
    """A random-init tf_efficientnet_lite0 model dir (timing only) when no trained model is at hand."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    id2label = dict(enumerate(classes))
    config = TimmWrapperConfig(
        architecture="tf_efficientnet_lite0",
        num_labels=len(classes),
        id2label=id2label,
        label2id={c: i for i, c in id2label.items()},
    )
    TimmWrapperForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)
    (out / "hfxray.json").write_text(json.dumps({"classes": classes, "image_size": 224}))
    if importlib.util.find_spec("hfxray.onnx_export") is not None:
        from hfxray.onnx_export import export_onnx

        export_onnx(out)
    return out


def resolve_model(arg: str | None, work: Path, classes: list[str]) -> tuple[Path, str]:
    if arg:
        return Path(arg).resolve(), "given (--model)"
    from hfxray.modeling import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR, "bundled default model"
    return build_tiny_model(work / "tiny-model", classes), "tiny random-init tf_efficientnet_lite0 (no bundled model)"


def model_image_size(model_dir: Path) -> int:
    meta = model_dir / "hfxray.json"
    if meta.is_file():
        size = json.loads(meta.read_text()).get("image_size")
        if size:
            return int(size)
    proc = json.loads((model_dir / "preprocessor_config.json").read_text())
    size = proc.get("size", 224)
    return int(size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else int(size)


def hfxray_training_defaults() -> dict[str, Any]:
    """Epochs, batch size and image size of a default ``scripts/train.py`` run, read from the code."""
    from hfxray.training import DataArguments, FinetuneArguments, default_training_arguments

    args = default_training_arguments("unused")
    image_size = next(f.default for f in dataclasses.fields(DataArguments) if f.name == "image_size")
    return {
        "head_epochs": float(FinetuneArguments().head_epochs),
        "unfrozen_epochs": float(args.num_train_epochs),
        "batch_size": int(args.per_device_train_batch_size),
        "image_size": int(image_size),
    }


# ------------------------------------------------------------------------------------------ machine
def matmul_gflops(reps: int, n: int = 2048) -> dict[str, float]:
    """Measured fp32 GFLOP/s of torch.matmul n x n (the practical compute limit of this CPU)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return {"matmul_gflops": max(rates), "matmul_gflops_median": statistics.median(rates), "matmul_size": n,
            "torch_threads": torch.get_num_threads()}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "onnxruntime", "timm", "fastai"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
        "versions": versions,
    }


# ------------------------------------------------------------------------------------------ running
def has_fastai(python: str) -> bool:
    """Whether ``python`` can import fastai: it lives in a venv of its own (make bench-venv), so ask it."""
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('fastai') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def run_side(
    side: str, spec: dict[str, Any], work: Path, timeout_s: int, python: str = sys.executable
) -> dict[str, Any]:
    """Run one side in a fresh ``python``; its failure becomes an ``error`` entry, not a crash."""
    spec_path, result_path = work / f"{side}.spec.json", work / f"{side}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    print(f"  running {side} ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            [python, str(SIDES_SCRIPT), side, str(spec_path), str(result_path)],
            capture_output=True, text=True, env=env, timeout=timeout_s, cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.is_file():
        tail = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:]
        return {"error": f"{side} exited {proc.returncode}: " + " ".join(tail)}
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = wall
    print(f"  {side} done in {wall:.1f} s", file=sys.stderr, flush=True)
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b and math.isfinite(a) and math.isfinite(b) and b > 0 else None


def summarise(results: dict[str, Any]) -> None:
    """Fill in matmul shares, ratios and headline sentences."""
    limit = results["system"]["matmul_gflops"]
    batch, latency, training = results["batch"], results["latency"], results["training"]
    torch_flops = batch.get("hfxray_torch", {}).get("flops_per_image")
    for entry in batch.values():
        if "images_per_s" not in entry:
            continue
        if "flops_per_image" not in entry and torch_flops:  # ONNX runs the same weights as the torch side
            entry["flops_per_image"] = torch_flops
        if entry.get("flops_per_image"):
            entry["achieved_gflops"] = entry["flops_per_image"] * entry["images_per_s"] / 1e9
            entry["matmul_share"] = entry["achieved_gflops"] / limit

    def p50(side: str) -> float | None:
        return latency.get(side, {}).get("p50_ms")

    def ips(side: str) -> float | None:
        return batch.get(side, {}).get("images_per_s")

    def train_wall(side: str) -> float | None:
        return training.get(side, {}).get("train_wall_s")

    ratios = {
        "latency_p50_fastai_over_hfxray": ratio(p50("fastai"), p50("hfxray_default")),
        "latency_p50_pipeline_over_hfxray": ratio(p50("transformers_pipeline"), p50("hfxray_default")),
        "latency_p50_torch_over_hfxray": ratio(p50("hfxray_torch"), p50("hfxray_default")),
        "batch_hfxray_over_fastai": ratio(ips("hfxray_default"), ips("fastai")),
        "batch_hfxray_over_pipeline": ratio(ips("hfxray_default"), ips("transformers_pipeline")),
        "batch_hfxray_over_torch": ratio(ips("hfxray_default"), ips("hfxray_torch")),
        "training_wall_fastai_over_hfxray": ratio(train_wall("fastai"), train_wall("hfxray")),
    }
    results["ratios"] = ratios
    headline = []
    for key, what in (
        ("latency_p50_fastai_over_hfxray", "single-image latency (p50)"),
        ("batch_hfxray_over_fastai", "batch throughput"),
        ("training_wall_fastai_over_hfxray", "training wall time"),
    ):
        if ratios[key] is not None:
            headline.append(f"hfxray is {_times(ratios[key])} than the fastai recipe: {what}")
    if not results["fastai_available"]:
        headline.append("fastai not installed: skipped (make bench-venv; --fastai_python .venv-bench/bin/python)")
    for key, what in (
        ("latency_p50_pipeline_over_hfxray", "single-image latency (p50)"),
        ("batch_hfxray_over_pipeline", "batch throughput"),
    ):
        if ratios[key] is not None:
            headline.append(f"hfxray is {_times(ratios[key])} than a plain transformers pipeline: {what}")
    acc_h = training.get("hfxray", {}).get("val_accuracy")
    acc_f = training.get("fastai", {}).get("val_accuracy")
    if acc_h is not None and acc_f is not None:
        headline.append(f"validation accuracy: hfxray {acc_h:.3f} vs fastai recipe {acc_f:.3f}")
    results["headline"] = headline
    results["targets"] = {  # issue 5 req 5; meaningful in full mode on the bundled model
        "single_image_p50_le_25ms": _le(p50("hfxray_default"), 25.0),
        "batch_ge_100_images_per_s": _le(100.0, ips("hfxray_default")),
        "latency_ge_5x_fastai": _le(5.0, ratios["latency_p50_fastai_over_hfxray"]),
        "batch_ge_5x_fastai": _le(5.0, ratios["batch_hfxray_over_fastai"]),
        "training_le_180s": _le(train_wall("hfxray"), 180.0),
    }


def _times(speedup: float) -> str:
    """'3.2x faster' or, honestly, '2.0x slower'."""
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def _le(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a <= b


# ------------------------------------------------------------------------------------------ table
def _fmt(v: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def table_lines(results: dict[str, Any]) -> list[str]:
    """The markdown table of the run (also pasted into docs/benchmarks.md)."""
    lines = ["| comparison | side | result | peak RSS | notes |", "| --- | --- | --- | --- | --- |"]

    def status(entry: dict[str, Any]) -> str | None:
        return entry.get("skipped") or (f"error: {entry['error']}" if "error" in entry else None)

    for side, label in INFERENCE_SIDES.items():
        e = results["latency"].get(side, {})
        text = status(e) or f"p50 {_fmt(e['p50_ms'])} ms, p95 {_fmt(e['p95_ms'])} ms"
        note = e.get("backend", "") + (f", {e['iterations']} runs" if "iterations" in e else "")
        lines.append(f"| single image, 1024 px PNG | {label} | {text} | {_fmt(e.get('peak_rss_mib'), '.0f', ' MiB')} | {note} |")
    for side, label in INFERENCE_SIDES.items():
        e = results["batch"].get(side, {})
        text = status(e) or f"{_fmt(e['images_per_s'])} images/s ({e['n_images']} files)"
        note = ""
        if e.get("flops_per_image"):
            note = (f"{e['flops_per_image'] / 1e9:.2f} GFLOP/image, {_fmt(e.get('achieved_gflops'))} GFLOP/s = "
                    f"{_fmt(100 * e['matmul_share'], '.1f', '%')} of matmul")
        lines.append(f"| batch, real radiographs | {label} | {text} | {_fmt(e.get('peak_rss_mib'), '.0f', ' MiB')} | {note} |")
        if "profile" in e:
            pr = e["profile"]
            lines.append(
                f"| batch path profile | {label} | decode {pr['decode_ms']:.1f} ms + prepare {pr['prepare_ms']:.1f} ms "
                f"(1 thread) + model {pr['model_ms']:.1f} ms x {pr['model_threads']} threads = "
                f"{pr['core_ms_per_image']:.1f} core-ms per image | | ceiling {pr['ceiling_images_per_s']:.0f} images/s "
                f"on these cores; model alone {pr['model_alone_images_per_s']:.0f} images/s |"
            )
    for side, label in TRAINING_SIDES.items():
        e = results["training"].get(side, {})
        text = status(e) or (
            f"{_fmt(e['train_wall_s'], '.0f')} s wall, val acc {e['val_accuracy']:.3f} "
            f"(n_val={e['n_validation']})"
        )
        note = ""
        if "epochs" in e:
            note = f"{e['epochs']:g} epochs, n_train={e['n_train']}, {e.get('base_model')}"
        lines.append(f"| training | {label} | {text} | {_fmt(e.get('peak_rss_mib'), '.0f', ' MiB')} | {note} |")
    s = results["system"]
    lines.append(f"| machine | fp32 matmul {s['matmul_size']}x{s['matmul_size']} | {s['matmul_gflops']:.0f} GFLOP/s "
                 f"(median {s['matmul_gflops_median']:.0f}) | | {results['machine']['cpu']}, "
                 f"{results['machine']['cores_usable']} cores, {s['torch_threads']} torch threads |")
    return lines


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI mode: few iterations, tiny subsets, 1 training epoch.")
    p.add_argument("--model", help="Saved model directory (default: the bundled model, else a tiny random one).")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="Folder of class sub-folders.")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Where results.json goes.")
    p.add_argument("--no_fastai", action="store_true", help="Skip the fastai sides even if fastai is installed.")
    p.add_argument("--fastai_python", default=sys.executable,
                   help="Interpreter with fastai for the fastai sides (e.g. .venv-bench/bin/python).")  # fmt: skip
    p.add_argument("--no_training", action="store_true", help="Skip the training comparison.")
    args = p.parse_args(argv)
    if os.sep in args.fastai_python:  # the sides run in REPO_ROOT: a relative path must keep its meaning
        args.fastai_python = os.path.abspath(args.fastai_python)  # abspath, not resolve: keep the venv's link
    return args


def run_inference_sides(
    results: dict[str, Any], spec: dict[str, Any], work: Path, mode: Mode, fastai_python: str,
    fastai_skip: dict[str, str] | None,
) -> None:
    """Latency and batch throughput of every inference side, each in its own process (so one side's
    imports and threads cannot slow another), into ``results["latency"]`` and ``results["batch"]``.
    ``fastai_skip``: why the fastai side is skipped, None when it runs."""
    for side in INFERENCE_SIDES:
        if side == "fastai" and fastai_skip:
            results["latency"][side] = results["batch"][side] = dict(fastai_skip)
            continue
        python = fastai_python if side == "fastai" else sys.executable
        out = run_side(side, spec, work, mode.side_timeout_s, python)
        if "error" in out:
            results["latency"][side] = results["batch"][side] = out
            continue
        common = {k: out[k] for k in ("backend", "peak_rss_mib", "process_wall_s") if k in out}
        results["latency"][side] = {**out["latency"], **common}
        results["batch"][side] = {**out["batch"], **common}
        if "flops_per_image" in out:
            results["batch"][side]["flops_per_image"] = out["flops_per_image"]


def run_training_sides(
    results: dict[str, Any], train_spec: dict[str, Any], work: Path, mode: Mode, fastai_python: str,
    fastai_skip: dict[str, str] | None,
) -> None:
    """hfxray's train.py and (unless ``fastai_skip`` says why not) the fastai recipe on the same films
    and settings."""
    results["training"]["hfxray"] = run_side("train_hfxray", train_spec, work, mode.side_timeout_s)
    if fastai_skip:
        results["training"]["fastai"] = dict(fastai_skip)
        return
    out = run_side("train_fastai", train_spec, work, mode.side_timeout_s, fastai_python)
    if "process_wall_s" in out:  # what a user waits for, imports included, as for train.py
        out["train_wall_s"] = out["process_wall_s"]
    results["training"]["fastai"] = out


def write_results(results: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(output.name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(output)  # never leave a half-written results file


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(REPO_ROOT) not in sys.path:  # a plain checkout (no `pip install -e .`) works too
        sys.path.insert(0, str(REPO_ROOT))
    mode = QUICK if args.quick else FULL
    data_dir = args.data_dir.resolve()
    if not data_dir.is_dir():
        print(f"error: data directory not found: {data_dir}", file=sys.stderr)
        return 1
    fastai_available = not args.no_fastai and has_fastai(args.fastai_python)
    fastai_skip = None if fastai_available else {
        "skipped": "fastai not installed: skipped" if not args.no_fastai else "skipped (--no_fastai)"
    }
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="hfxray-bench-") as tmp:
        work = Path(tmp)
        files = image_files(data_dir)
        classes = list(files)
        image = make_test_png(files, work / "radiograph-1024.png")
        batch_files = [str(p) for fs in pick(files, mode.batch_per_class).values() for p in fs]
        train_dir = data_dir if mode.train_per_class is None else link_subset(
            pick(files, mode.train_per_class, smallest=True), work / "train-subset"
        )
        model_dir, model_source = resolve_model(args.model, work, classes)
        image_size = model_image_size(model_dir)
        train_defaults = hfxray_training_defaults()
        if mode.name == "quick":  # 1 epoch, all layers, no LR range test: the code path, not the result
            train_defaults.update(head_epochs=0.0, unfrozen_epochs=1.0)
            hfxray_train_args = ["--num_train_epochs", "1", "--head_epochs", "0", "--learning_rate_find", "False"]
        else:
            hfxray_train_args = []

        results: dict[str, Any] = {
            "schema_version": 1,
            "mode": mode.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "setup": {
                "model_dir": str(model_dir),
                "model_source": model_source,
                "image_size": image_size,
                "test_image": {k: v for k, v in image.items() if k != "path"},
                "batch_files": len(batch_files),
                "train_dir": str(data_dir),
                "train_files": sum(1 for _ in train_dir.rglob("*") if _.suffix.lower() in IMAGE_EXTENSIONS),
                "training": train_defaults,
                "iterations": dataclasses.asdict(mode),
            },
            "fastai_available": fastai_available,
            "fastai_python": args.fastai_python,
            "system": matmul_gflops(mode.matmul_reps),
            "latency": {},
            "batch": {},
            "training": {},
        }
        spec = {
            "model_dir": str(model_dir), "image": image["path"], "batch_files": batch_files,
            "data_dir": str(data_dir), "image_size": image_size, "warmup": mode.warmup, "iters": mode.iters,
            "repeats": mode.repeats, "work_dir": str(work),
        }
        run_inference_sides(results, spec, work, mode, args.fastai_python, fastai_skip)
        if args.no_training:
            results["training"] = {side: {"skipped": "skipped (--no_training)"} for side in TRAINING_SIDES}
        else:
            train_spec = {**spec, **train_defaults, "train_dir": str(train_dir),
                          "hfxray_train_args": hfxray_train_args}
            run_training_sides(results, train_spec, work, mode, args.fastai_python, fastai_skip)

    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - started
    summarise(results)
    results["table"] = table_lines(results)
    print("\n".join(results["table"]))
    print()
    for line in results["headline"]:
        print(line)
    write_results(results, args.output)
    print(f"\nwrote {args.output} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
