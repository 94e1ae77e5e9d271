#!/usr/bin/env python
"""One side of a benchmark comparison, run in its own process by ``benchmarks/run.py``.

    python benchmarks/sides.py SIDE SPEC.json RESULT.json

Each side runs in a fresh interpreter so that its peak memory (``ru_maxrss``) is its own and one
side's warm caches or thread pools cannot help or hurt another. The spec says which files to use;
the result is a JSON dict. Research software, not a diagnostic device.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ measuring
def peak_rss_mib() -> float:
    """Peak resident memory of this process, or of a child it waited for (train.py), in MiB.

    ``VmHWM`` rather than ``ru_maxrss`` for the process itself: Linux carries ``ru_maxrss`` across
    ``exec``, so a side would inherit the parent's peak from before the fork.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # KiB on Linux
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) / 1024.0, children)
    except OSError:
        pass
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, children)


def time_latency(fn: Callable[[], Any], *, warmup: int, iters: int) -> dict[str, float]:
    """p50/p95 of ``fn`` in ms after ``warmup`` untimed calls (first calls pay for lazy initialisation)."""
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    t = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p95_ms": float(np.percentile(t, 95)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "iterations": len(times),
    }


def time_batch(fn: Callable[[Sequence[str]], Any], files: Sequence[str], *, repeats: int) -> dict[str, float]:
    """Images/s over all ``files``, best of ``repeats`` passes after a short warm-up on a few files.

    Best-of rather than mean: on a shared machine the slowest pass measures the neighbours, not us.
    """
    fn(files[: min(4, len(files))])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(files)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"images_per_s": len(files) / best, "seconds": best, "n_images": len(files), "repeats": repeats}


def forward_flops(model: Any, image_size: int, *, hf: bool) -> float:
    """FLOPs of one forward pass on a 1 x 3 x S x S input, counted by PyTorch's FlopCounterMode.

    Counts matmul/conv FLOPs (2 per multiply-add); elementwise work is not counted, so this is the
    part of the work that the matmul roofline applies to.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(pixel_values=x) if hf else model(x)
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ sides
def batch_profile(predictor: Any, files: Sequence[str]) -> dict[str, float]:
    """Where the batch path's CPU time goes, per image, each stage alone on the same files.

    decode and prepare (resize, normalise, the gate's image checks) run on one thread each in the
    real pipeline, the model on all the session's threads; ``ceiling_images_per_s`` is what the
    cores could do if the pipeline overlapped the stages perfectly: cores / core-seconds per image.
    """
    import numpy as np

    # The worker threads' own two steps (Predictor._decode_one, then _prepare_image), timed apart.
    decode = prepare = 0.0
    first_batch: list[np.ndarray] = []
    for f in files:  # one file at a time, as the pipeline does: no decoded folder held in memory
        t = time.perf_counter()
        image, error = predictor._decode_one(f)
        decode += time.perf_counter() - t
        if image is None:
            raise RuntimeError(error)
        t = time.perf_counter()
        pixels = predictor._prepare_image(image).pixels
        prepare += time.perf_counter() - t
        if len(first_batch) < 8:
            first_batch.append(pixels)
    decode, prepare = decode / len(files), prepare / len(files)
    batch = np.stack(first_batch)
    predictor.predict_pixel_values(batch)  # warm-up
    passes = max(1, len(files) // len(batch))
    t = time.perf_counter()
    for _ in range(passes):
        predictor.predict_pixel_values(batch, batch_size=8)
    model = (time.perf_counter() - t) / (passes * len(batch))
    threads = predictor.session.get_session_options().intra_op_num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    core_s = decode + prepare + model * threads
    return {
        "decode_ms": 1000 * decode,
        "prepare_ms": 1000 * prepare,
        "model_ms": 1000 * model,
        "model_threads": threads,
        "model_alone_images_per_s": 1 / model,
        "core_ms_per_image": 1000 * core_s,
        "ceiling_images_per_s": cores / core_s,
    }


def _hfxray_predictor(spec: dict[str, Any], backend: str) -> dict[str, Any]:
    """hfxray's own inference path: Predictor (ONNX Runtime when the dir has model.onnx) on files."""
    from hfxray.inference import Predictor

    predictor = Predictor.from_pretrained(spec["model_dir"], backend=backend)
    out: dict[str, Any] = {"backend": predictor.backend, "image_size": predictor.image_size}

    def single() -> None:
        rows = predictor.predict_paths([spec["image"]])
        if not rows[0].ok:
            raise RuntimeError(rows[0].error)

    def batch(files: Sequence[str]) -> None:
        rows = predictor.predict_paths(files)
        bad = [r.error for r in rows if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} files failed, first: {bad[0]}")

    out["latency"] = time_latency(single, warmup=spec["warmup"], iters=spec["iters"])
    out["batch"] = time_batch(batch, spec["batch_files"], repeats=spec["repeats"])
    if predictor.backend == "onnx":
        out["batch"]["profile"] = batch_profile(predictor, spec["batch_files"])
    if predictor.model is not None:
        out["flops_per_image"] = forward_flops(predictor.model, predictor.image_size, hf=True)
    return out


def side_hfxray_default(spec: dict[str, Any]) -> dict[str, Any]:
    return _hfxray_predictor(spec, "auto")


def side_hfxray_torch(spec: dict[str, Any]) -> dict[str, Any]:
    return _hfxray_predictor(spec, "torch")


def side_transformers_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """What a Hugging Face user writes first: a plain pipeline over the same saved directory."""
    from transformers import pipeline

    pipe = pipeline("image-classification", model=spec["model_dir"], device="cpu")
    out: dict[str, Any] = {"backend": "torch (transformers pipeline)"}
    out["latency"] = time_latency(lambda: pipe(spec["image"], top_k=None), warmup=spec["warmup"], iters=spec["iters"])
    out["batch"] = time_batch(
        lambda files: pipe(list(files), top_k=None, batch_size=32), spec["batch_files"], repeats=spec["repeats"]
    )
    out["flops_per_image"] = forward_flops(pipe.model, spec["image_size"], hf=True)
    return out


def _fastai_learner(data_dir: str, image_size: int, batch_size: int = 16):
    """The original recipe: ImageDataLoaders.from_folder (random 8:2 split) + vision_learner(resnet50).

    ``pretrained=False``: offline, torchvision cannot download the ImageNet weights.
    """
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, resnet50, vision_learner

    dls = ImageDataLoaders.from_folder(
        data_dir, valid_pct=0.2, seed=42, item_tfms=Resize(image_size), bs=batch_size
    )
    return vision_learner(dls, resnet50, pretrained=False, metrics=accuracy)


def side_fastai(spec: dict[str, Any]) -> dict[str, Any]:
    """fastai ``learn.predict(path)`` and ``learn.get_preds(dl=learn.dls.test_dl(files))``."""
    import fastai

    learn = _fastai_learner(spec["data_dir"], spec["image_size"])
    out: dict[str, Any] = {"backend": f"fastai {fastai.__version__} (PyTorch)", "pretrained": False}

    def single() -> None:
        with learn.no_bar():
            learn.predict(spec["image"])

    def batch(files: Sequence[str]) -> None:
        with learn.no_bar():
            learn.get_preds(dl=learn.dls.test_dl(list(files)))

    out["latency"] = time_latency(single, warmup=spec["warmup"], iters=spec["iters"])
    out["batch"] = time_batch(batch, spec["batch_files"], repeats=spec["repeats"])
    out["flops_per_image"] = forward_flops(learn.model, spec["image_size"], hf=False)
    return out


def side_train_hfxray(spec: dict[str, Any]) -> dict[str, Any]:
    """``scripts/train.py`` with its defaults (plus the quick-mode overrides in ``spec``)."""
    out_dir = Path(spec["work_dir"]) / "hfxray-trained"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "train.py"),
        "--data_dir", spec["train_dir"],
        "--output_dir", str(out_dir),
        "--overwrite_output_dir", "True",
        *spec.get("hfxray_train_args", []),
    ]
    log = Path(spec["work_dir"]) / "train_hfxray.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"train.py exited {proc.returncode} (log {log.name}): " + " ".join(tail))
    meta = json.loads((out_dir / "hfxray.json").read_text())
    lr = meta.get("learning_rates", {})
    return {
        "train_wall_s": wall,
        "train_s": float(meta["train_seconds"]),
        "val_accuracy": float(meta["validation"]["accuracy"]),
        "n_train": meta["split"]["n_train"],
        "n_validation": meta["split"]["n_validation"],
        "epochs": float(lr.get("head_epochs", 0)) + float(lr.get("unfrozen_epochs", 0)),
        "base_model": meta.get("base_model"),
        "pretrained": "random init" not in str(meta.get("base_model")),
        "command": " ".join(cmd[1:]),
    }


def side_train_fastai(spec: dict[str, Any]) -> dict[str, Any]:
    """fastai ``fine_tune`` with the same epochs (frozen + unfrozen), image size and batch size."""
    start = time.perf_counter()
    learn = _fastai_learner(spec["train_dir"], spec["image_size"], batch_size=spec["batch_size"])
    frozen, unfrozen = int(round(spec["head_epochs"])), int(round(spec["unfrozen_epochs"]))
    with learn.no_bar(), learn.no_logging():
        if frozen > 0:
            learn.fine_tune(unfrozen, freeze_epochs=frozen)
        else:  # fine_tune cannot run zero frozen epochs (one-cycle over 0 steps)
            learn.unfreeze()
            learn.fit_one_cycle(unfrozen)
        _, acc = learn.validate()
    wall = time.perf_counter() - start
    return {
        "train_s": wall,
        "val_accuracy": float(acc),
        "n_train": len(learn.dls.train_ds),
        "n_validation": len(learn.dls.valid_ds),
        "epochs": frozen + unfrozen,
        "base_model": "torchvision resnet50 (random init: no ImageNet weights offline)",
        "pretrained": False,
    }


SIDES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hfxray_default": side_hfxray_default,
    "hfxray_torch": side_hfxray_torch,
    "transformers_pipeline": side_transformers_pipeline,
    "fastai": side_fastai,
    "train_hfxray": side_train_hfxray,
    "train_fastai": side_train_fastai,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SIDES:
        print(f"usage: sides.py {{{','.join(SIDES)}}} SPEC.json RESULT.json", file=sys.stderr)
        return 2
    side, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = SIDES[side](spec)
    result["peak_rss_mib"] = peak_rss_mib()
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise RuntimeError(f"non-finite measurements: {bad}")
    Path(result_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
