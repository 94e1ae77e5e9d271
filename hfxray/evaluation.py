"""Evaluate a saved model on a labelled folder: metrics.json, plots and report.html.

The folder may hold all of the model's classes or only some (external validation: e.g. only
`Covid/` and `Normal/`); metrics that a subset cannot measure are reported as null with a note.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hfxray import DISCLAIMER, data, metrics, report
from hfxray.inference import Predictor

logger = logging.getLogger(__name__)

# Dataset columns that identify a film rather than a group of films.
_NOT_GROUPS = {"image", "label", "path", "sha256", "phash", "phash16"}


def evaluate_folder(
    data_dir: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    model: str | Path | None = None,
    backend: str = "auto",
    group_by: Sequence[str] = (),
) -> dict[str, Any]:
    """Predict every image under the class folders of one or several folders and write the report.

    ``group_by`` names dataset columns (``source``, ``population``, ``view``, any metadata
    column): every metric is then also reported per value of each column, under
    ``groups.<column>.<value>`` in metrics.json and as a table in report.html, because a headline
    accuracy over several sources can hide a source where the model fails.
    """
    out = Path(output_dir)
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    predictor = Predictor.from_pretrained(model, backend=backend)
    dataset, bad_files = data.load_image_folder(
        dirs[0] if len(dirs) == 1 else dirs, **predictor.film_format
    )
    _check_columns(dataset, group_by)
    y_true = _labels_in_model_order(dataset, predictor.classes)
    out.mkdir(parents=True, exist_ok=True)
    images = list(dataset["image"])
    probs, abstain = predictor.predict_images_gated(images)
    result = metrics.classification_report(y_true, probs, predictor.classes)
    result["model"] = str(predictor.source)
    resolved = [str(Path(d).resolve()) for d in dirs]
    result["data_dir"] = resolved[0] if len(resolved) == 1 else resolved
    result["skipped_files"] = [asdict(b) for b in bad_files]
    if abstain is not None:
        result["input_gate"] = _abstained(abstain)
    if group_by:
        result["groups"] = {
            column: _group_reports(
                y_true, probs, predictor.classes, [str(v) for v in dataset[column]], abstain
            )
            for column in group_by
        }
    result["disclaimer"] = DISCLAIMER
    extra = {
        c: [str(v) for v in dataset[c]]
        for c in dict.fromkeys(["source", *group_by])
        if c in dataset.column_names
    }
    _write_predictions(
        out / "predictions.csv", list(dataset["path"]), y_true, probs, predictor.classes, abstain, extra
    )
    _write_report(
        out, result, images, y_true, probs, predictor.classes, title=" + ".join(Path(d).name for d in dirs)
    )
    logger.info("wrote %s", out / "report.html")
    return result


def _check_columns(dataset: Any, group_by: Sequence[str]) -> None:
    """Fail before any prediction when a --group_by column does not exist (a typo costs nothing)."""
    missing = [c for c in group_by if c not in dataset.column_names]
    if missing:
        available = [c for c in dataset.column_names if c not in _NOT_GROUPS]
        raise ValueError(
            f"cannot group by {', '.join(missing)}: no such column (available: {', '.join(available) or 'none'})"
        )


def _labels_in_model_order(dataset: Any, model_classes: Sequence[str]) -> np.ndarray:
    """The folder labels as indices into the model's classes (folders sort alphabetically, the model
    need not); a folder the model does not know is an error, not a silent mislabel."""
    folder_classes = dataset.features["label"].names
    unknown = [c for c in folder_classes if c not in model_classes]
    if unknown:
        raise ValueError(
            f"class folder(s) {unknown} are not classes of this model ({list(model_classes)}); "
            "rename the folders to the model's class names"
        )
    to_model = np.array([list(model_classes).index(c) for c in folder_classes])
    return to_model[np.asarray(dataset["label"])]


def _abstained(abstain: Sequence[Any]) -> dict[str, Any]:
    n_abstain = sum(1 for w in abstain if w)
    return {"abstained": n_abstain, "n": len(abstain), "rate": n_abstain / max(len(abstain), 1)}


def _group_reports(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    values: Sequence[str],
    abstain: Sequence[Any] | None,
) -> dict[str, dict[str, Any]]:
    """Every metric per value of one column, with how often the input gate abstained there."""
    per = metrics.classification_report_by_group(y_true, probs, classes, values)
    if abstain is not None:
        for value, rep in per.items():
            rep["input_gate"] = _abstained([w for v, w in zip(values, abstain, strict=True) if v == value])
    return per


def _write_report(
    out: Path,
    result: dict[str, Any],
    images: Sequence[Any],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    title: str,
) -> None:
    """Plots, metrics.json and report.html: the confusion matrix, the most confidently wrong films
    (the original process's "wrongly predicted images") and the reliability diagram."""
    pred = probs.argmax(axis=1)
    report.plot_confusion_matrix(
        np.asarray(result["confusion_matrix"]), classes, out / "confusion_matrix.png"
    )
    wrong = sorted((i for i in range(len(pred)) if pred[i] != y_true[i]), key=lambda i: -probs[i, pred[i]])
    report.plot_most_wrong(
        [(images[i], classes[y_true[i]], classes[pred[i]], float(probs[i, pred[i]])) for i in wrong],
        out / "most_wrong.png",
    )
    report.plot_reliability(probs, y_true, out / "reliability.png")
    _write_json(out / "metrics.json", result)
    report.write_html_report(
        out,
        result,
        {
            "Confusion matrix": "confusion_matrix.png",
            "Most confidently wrong": "most_wrong.png",
            "Reliability": "reliability.png",
        },
        title=f"hfxray evaluation: {title}",
        extra_sections={
            f"By {column} (95% intervals)": report.group_table(per, classes)
            for column, per in result.get("groups", {}).items()
        },
    )


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees half a metrics.json."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _write_predictions(
    path: Path,
    paths: list[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    warnings: list[str | None] | None,
    extra: dict[str, list[str]],
) -> None:
    """predictions.csv (atomic), with the grouping columns so a reader can slice it the same way."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *extra, "true", "predicted", *[f"prob_{c}" for c in classes], "warning"])
        for i, p in enumerate(paths):
            writer.writerow(
                [
                    p,
                    *[values[i] for values in extra.values()],
                    classes[y_true[i]],
                    classes[int(probs[i].argmax())],
                    *[f"{x:.6f}" for x in probs[i]],
                    (warnings[i] if warnings else "") or "",
                ]
            )
    os.replace(tmp, path)
