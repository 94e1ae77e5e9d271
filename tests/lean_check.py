"""Proves the inference-only install (`make test-lean`): run by the small venv's Python, not by pytest.

That venv holds requirements-space-lean.txt (ONNX Runtime, NumPy, Pillow, pydicom, tqdm, Gradio) and
hfxray installed with --no-deps. Checked here: torch, transformers and datasets are not importable;
scripts/predict.py predicts real films with the bundled model.onnx; the Space answers a film with
probabilities and says that the Grad-CAM heatmap is off. Exits non-zero with one line on failure.

    .venv-lean/bin/python tests/lean_check.py [FILM_DIR]
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILMS = REPO.parent / "shared" / "data" / "covid19-xray" / "train"
HEAVY = ("torch", "transformers", "datasets", "accelerate", "timm")


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"lean check FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    films_root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FILMS
    for name in HEAVY:
        check(importlib.util.find_spec(name) is None, f"{name} is importable in the inference-only venv")
    films = [sorted(d.iterdir())[0] for d in sorted(films_root.iterdir()) if d.is_dir()]
    check(len(films) >= 3, f"no class folders with films under {films_root}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lean.csv"
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "predict.py"), *map(str, films), "--output", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        check(result.returncode == 0, f"predict.py exited {result.returncode}: {result.stderr.strip()[-500:]}")
        with out.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        check([r["path"] for r in rows] == [str(p) for p in films], "predict.py CSV rows != films given")
        for r in rows:
            probs = [float(v) for k, v in r.items() if k.startswith("prob_")]
            check(abs(sum(probs) - 1) < 1e-6 and not r["error"], f"bad row for {r['path']}: {r}")
        print(f"predict.py without torch: {len(rows)} films, backend onnx")

    from hfxray.space_app import NO_HEATMAP_NOTE, XrayService, build_demo

    service = XrayService()
    check(service.predictor.backend == "onnx" and not service.heatmaps, "the Space wants torch for heatmaps")
    result = service.analyse_path(films[0])
    check(result.error is None and result.heatmap is None and result.image is not None, f"Space result {result}")
    check(result.abstained or abs(sum(result.probs.values()) - 1) < 1e-6, "Space gave no probabilities")
    build_demo(service)  # the page builds, with the note instead of the heatmap switch
    print(f"Space without torch: {result.headline}; note shown: {NO_HEATMAP_NOTE[:40]}...")
    leaked = [m for m in HEAVY if m in sys.modules]
    check(not leaked, f"imported {leaked}")
    print("inference-only install OK")


if __name__ == "__main__":
    main()
