"""Evaluate a saved model on a labelled folder: metrics.json, plots and report.html.

The folder may hold all of the model's classes or only some (external validation: e.g. only
`Covid/` and `Normal/`); metrics that a subset cannot measure are reported as null with a note.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hfxray import DISCLAIMER, data, metrics, report
from hfxray.inference import Predictor

logger = logging.getLogger(__name__)


def evaluate_folder(
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    model: str | Path | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Predict every image under `data_dir`'s class folders and write the evaluation report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_pretrained(model, backend=backend)
    dataset, bad_files = data.load_image_folder(data_dir, image_size=predictor.image_size)
    folder_classes = dataset.features["label"].names
    unknown = [c for c in folder_classes if c not in predictor.classes]
    if unknown:
        raise ValueError(
            f"class folder(s) {unknown} are not classes of this model ({predictor.classes}); "
            "rename the folders to the model's class names"
        )
    to_model = np.array([predictor.classes.index(c) for c in folder_classes])
    y_true = to_model[np.asarray(dataset["label"])]
    images = list(dataset["image"])
    probs, abstain = predictor.predict_images_gated(images)
    result = metrics.classification_report(y_true, probs, predictor.classes)
    result["model"] = str(predictor.source)
    result["data_dir"] = str(Path(data_dir).resolve())
    result["skipped_files"] = [asdict(b) for b in bad_files]
    if abstain is not None:
        n_abstain = sum(1 for w in abstain if w)
        result["input_gate"] = {"abstained": n_abstain, "n": len(images), "rate": n_abstain / max(len(images), 1)}
    result["disclaimer"] = DISCLAIMER

    paths = list(dataset["path"])
    pred = probs.argmax(axis=1)
    _write_predictions(out / "predictions.csv", paths, y_true, probs, predictor.classes, abstain)
    report.plot_confusion_matrix(np.asarray(result["confusion_matrix"]), predictor.classes, out / "confusion_matrix.png")
    wrong = [i for i in range(len(paths)) if pred[i] != y_true[i]]
    wrong.sort(key=lambda i: -probs[i, pred[i]])
    report.plot_most_wrong(
        [(images[i], predictor.classes[y_true[i]], predictor.classes[pred[i]], float(probs[i, pred[i]])) for i in wrong],
        out / "most_wrong.png",
    )
    report.plot_reliability(probs, y_true, out / "reliability.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    report.write_html_report(
        out,
        result,
        {
            "Confusion matrix": "confusion_matrix.png",
            "Most confidently wrong": "most_wrong.png",
            "Reliability": "reliability.png",
        },
        title=f"hfxray evaluation: {Path(data_dir).name}",
    )
    logger.info("wrote %s", out / "report.html")
    return result


def _write_predictions(path: Path, paths, y_true, probs, classes, warnings) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true", "predicted", *[f"prob_{c}" for c in classes], "warning"])
        for i, p in enumerate(paths):
            warning = warnings[i] if warnings else ""
            writer.writerow(
                [p, classes[y_true[i]], classes[int(probs[i].argmax())], *[f"{x:.6f}" for x in probs[i]], warning]
            )
