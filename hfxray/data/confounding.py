"""Confounding report: how much of a folder's labels can be told from where its films come from.

Two parts, both cheap enough to run before any training:

* **Tables** class x source and class x population (counts from the dataset's metadata columns):
  a source that holds one class only makes "which hospital" and "which diagnosis" the same question.
* **Metadata-only baseline**: a small scikit-learn classifier (random forest in a `Pipeline`) that
  sees only *file properties* - width, height, aspect, bit depth and mode, format, JPEG quality
  (estimated from the quantisation tables), chroma subsampling, file size, EXIF/ICC/DPI presence,
  and mean/std of the outer border strips and corners of a small grey thumbnail, plus colour -
  never the lung fields. Its cross-validated accuracy (stratified, group-aware when patient or
  duplicate groups exist; Wilson interval over the out-of-fold predictions) against chance (the
  majority class share) says in plain words whether the labels can be learned from the source.

A film's provenance travels as `datasets` columns (``source``, ``population``, ``patient_id``);
this module reads those columns, never a second table keyed by file name.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hfxray.images import load_image
from hfxray.metrics import wilson_interval

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE_FEATURES",
    "THUMB_SIZE",
    "confounding_report",
    "confounding_sections",
    "crosstab",
    "feature_matrix",
    "file_features",
    "format_confounding",
    "jpeg_quality",
    "metadata_baseline",
]

THUMB_SIZE = 64
"""Side of the grey thumbnail the border statistics are measured on (squash resize)."""

BORDER_FRACTION = 0.125
"""Width of the outer strips and corners, as a fraction of the side: the film's edge, not the lungs."""

_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "DICOM")
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I": 32, "F": 32}

# IJG (libjpeg) standard luminance table, Annex K of ITU T.81: what "quality" scales.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip


def _ijg_tables() -> np.ndarray:
    """(100, 64) sorted luminance tables that libjpeg writes at quality 1..100."""
    out = np.empty((100, 64))
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        out[q - 1] = np.sort(np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255))
    return out


_IJG_SORTED = _ijg_tables()


def jpeg_quality(quantization: Mapping[int, Sequence[int]] | None) -> float:
    """libjpeg-equivalent quality (1-100) whose luminance table is closest to the file's; nan if none.

    Compared as sorted values, so the table's storage order (zigzag or natural) does not matter.
    Encoders with their own tables (cameras, PACS exports) get the nearest IJG quality: still a
    fingerprint of the encoder, which is what the baseline needs.
    """
    if not quantization or 0 not in quantization:
        return float("nan")
    table = np.sort(np.asarray(list(quantization[0]), dtype=np.float64))
    if table.size != 64:
        return float("nan")
    return float(np.argmin(np.abs(_IJG_SORTED - table).sum(axis=1)) + 1)


def _header_features(path: Path) -> dict[str, float]:
    """What the file says about itself before decoding: size, mode, format, encoder settings."""
    f: dict[str, float] = {"file_kbytes": path.stat().st_size / 1024.0}
    fmt = "DICOM"
    try:
        with Image.open(path) as im:
            fmt = im.format or "?"
            f["width"], f["height"] = float(im.size[0]), float(im.size[1])
            f["bits"] = float(_MODE_BITS.get(im.mode, 16 if im.mode.startswith("I;16") else 8))
            f["bands"] = float(len(im.getbands()))
            f["palette"] = float(im.mode == "P")
            f["alpha"] = float("A" in im.getbands() or "transparency" in im.info)
            f["has_exif"] = float(bool(im.info.get("exif")))
            f["has_icc"] = float(bool(im.info.get("icc_profile")))
            dpi = im.info.get("dpi")
            f["dpi"] = float(dpi[0]) if dpi else float("nan")
            f["progressive"] = float(bool(im.info.get("progressive") or im.info.get("progression")))
            f["interlaced"] = float(bool(im.info.get("interlace")))
            if fmt == "JPEG":
                from PIL import JpegImagePlugin

                q = getattr(im, "quantization", None)
                f["jpeg_quality"] = jpeg_quality(q)
                f["jpeg_tables"] = float(len(q or {}))
                f["jpeg_luma_q_mean"] = float(np.mean(list(q[0]))) if q and 0 in q else float("nan")
                f["jpeg_subsampling"] = float(JpegImagePlugin.get_sampling(im))
    except (OSError, ValueError, SyntaxError):  # DICOM and anything PIL cannot open lazily
        pass
    for name in _FORMATS:
        f[f"format_{name.lower()}"] = float(fmt == name)
    return f


def _ring_features(grey: np.ndarray, rgb: np.ndarray) -> dict[str, float]:
    """Mean/std of the four outer strips and four corners, dark/bright border share, colour."""
    s = grey.shape[0]
    k = max(1, int(round(BORDER_FRACTION * s)))
    regions = {
        "top": grey[:k, :],
        "bottom": grey[-k:, :],
        "left": grey[:, :k],
        "right": grey[:, -k:],
        "corner_tl": grey[:k, :k],
        "corner_tr": grey[:k, -k:],
        "corner_bl": grey[-k:, :k],
        "corner_br": grey[-k:, -k:],
    }
    f: dict[str, float] = {}
    for name, r in regions.items():
        f[f"{name}_mean"] = float(r.mean())
        f[f"{name}_std"] = float(r.std())
    ring = np.concatenate([regions[n].reshape(-1) for n in ("top", "bottom", "left", "right")])
    f["border_black"] = float((ring <= 8).mean())
    f["border_white"] = float((ring >= 247).mean())
    # Colour: per-pixel channel spread. A tinted or colour-scanned film is a property of the
    # scanner or export path, not of the lungs.
    spread = rgb.max(axis=2).astype(np.float64) - rgb.min(axis=2)
    f["colour_mean"] = float(spread.mean())
    f["colour_max"] = float(spread.max())
    return f


def file_features(path: str | os.PathLike, *, thumb_size: int = THUMB_SIZE) -> dict[str, float]:
    """File-property features of one film (header + border of a small thumbnail); never the lungs.

    The thumbnail comes from `hfxray.images.load_image` with ``draft_size`` (JPEGs decode at a
    reduced DCT scale), squash-resized to ``thumb_size`` x ``thumb_size``. Missing values
    (e.g. JPEG quality of a PNG) are nan. Raises `ImageReadError` for unreadable files.
    """
    p = Path(path)
    f = _header_features(p)
    image = load_image(p, draft_size=thumb_size // 2)
    if "width" not in f:  # DICOM: the header PIL could not read
        f["width"], f["height"] = float(image.size[0]), float(image.size[1])
    thumb = image.resize((thumb_size, thumb_size), Image.Resampling.BILINEAR)
    rgb = np.asarray(thumb)
    grey = np.asarray(thumb.convert("L"), dtype=np.float64)
    f.update(_ring_features(grey, rgb))
    w, h = f["width"], f["height"]
    f["aspect"] = w / h
    f["megapixels"] = w * h / 1e6
    f["bytes_per_pixel"] = f["file_kbytes"] * 1024.0 / (w * h)
    return f


def _feature_names() -> list[str]:
    header = ["file_kbytes", "width", "height", "aspect", "megapixels", "bytes_per_pixel", "bits", "bands"]
    header += ["palette", "alpha", "has_exif", "has_icc", "dpi", "progressive", "interlaced"]
    header += ["jpeg_quality", "jpeg_tables", "jpeg_luma_q_mean", "jpeg_subsampling"]
    header += [f"format_{n.lower()}" for n in _FORMATS]
    ring = [f"{r}_{s}" for r in ("top", "bottom", "left", "right") for s in ("mean", "std")]
    ring += [f"corner_{c}_{s}" for c in ("tl", "tr", "bl", "br") for s in ("mean", "std")]
    return header + ring + ["border_black", "border_white", "colour_mean", "colour_max"]


BASELINE_FEATURES: tuple[str, ...] = tuple(_feature_names())
"""Column order of `feature_matrix`: file properties only, nothing from the lung fields."""


def feature_matrix(
    paths: Sequence[str | os.PathLike],
    *,
    thumb_size: int = THUMB_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """(n_ok, len(BASELINE_FEATURES)) float matrix and the indices of the files it covers.

    Unreadable files are left out (logged), so the caller can drop their labels too.
    """
    rows: list[list[float]] = []
    ok: list[int] = []
    for i, p in enumerate(paths):
        try:
            f = file_features(p, thumb_size=thumb_size)
        except (OSError, ValueError) as e:
            logger.warning("no file features for %s: %s", p, e)
            continue
        rows.append([f.get(name, float("nan")) for name in BASELINE_FEATURES])
        ok.append(i)
        if progress is not None:
            progress(i + 1, len(paths))
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(BASELINE_FEATURES))
    return x, ok


# --------------------------------------------------------------------------------------------
# the baseline
# --------------------------------------------------------------------------------------------
def _make_classifier(seed: int) -> Any:
    """Imputer + random forest: handles mixed scales and missing values, no tuning needed.

    A forest rather than a linear model because sources differ by combinations (224 px *and*
    JPEG quality 92 *and* a black border), and its impurity importances name the cues.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True)),
            (
                "forest",
                RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1),
            ),
        ]
    )


def _cv_splitter(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> tuple[Any, int]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is not None:
        per_class = min(len(set(groups[y == c])) for c in np.unique(y))
    else:
        per_class = int(np.bincount(y).min())
    k = max(2, min(n_splits, per_class))
    if groups is not None:
        return StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed), k
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), k


def _level(accuracy: float, lo: float, chance: float) -> str:
    """high / moderate / low: how far above chance the out-of-fold accuracy is (kappa-like)."""
    excess = (accuracy - chance) / (1.0 - chance) if chance < 1 else 0.0
    if lo > chance and excess >= 0.5:
        return "high"
    if lo > chance and excess >= 0.2:
        return "moderate"
    return "low"


def _verdict(level: str, accuracy: float, chance: float, top: Sequence[str]) -> str:
    cues = ", ".join(top[:3])
    head = (
        f"A classifier that never sees the lungs - only file size, resolution, format, compression "
        f"and the film's border - gets {accuracy:.0%} of the films' classes right (chance {chance:.0%})."
    )
    if level == "high":
        return (
            f"HIGH confounding. {head} The labels can be learned from where the films come from "
            f"(strongest cues: {cues}); a model's accuracy on this data says little about the lungs. "
            "Evaluate on held-out sources, balance class x source, and treat in-source accuracy as an upper bound."
        )
    if level == "moderate":
        return (
            f"MODERATE confounding. {head} Part of the labels can be learned from file properties "
            f"(strongest cues: {cues}); check per-source results before trusting accuracy."
        )
    return f"LOW confounding. {head} File properties alone do not predict the class much better than chance."


def metadata_baseline(
    x: np.ndarray,
    y: Sequence[int],
    classes: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    n_splits: int = 5,
    seed: int = 0,
    feature_names: Sequence[str] = BASELINE_FEATURES,
    by: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Cross-validated accuracy of the file-properties classifier, with a plain-words verdict.

    ``groups`` (e.g. patient or duplicate group ids; one id per film) keep related films in one
    fold (`StratifiedGroupKFold`); without them the folds are `StratifiedKFold`. Not grouped by
    source on purpose: the question is whether the class can be read off the source's files.
    Returns ``n``, ``accuracy`` (out-of-fold), ``accuracy_ci95`` (Wilson), ``fold_accuracy_mean``/
    ``_std``, ``chance`` (majority share), ``balanced_accuracy``, ``per_class_recall``,
    ``top_features`` (forest importances refitted on all films), ``level`` and ``verdict``.
    ``by`` (e.g. ``{"source": [...]}``, one value per film) adds ``by_<name>``: out-of-fold
    accuracy and chance within each value, e.g. whether two classes of one archive still differ
    in their files.
    """
    from sklearn.model_selection import cross_val_predict

    y_arr = np.asarray(y, dtype=np.int64)
    if x.shape[0] != y_arr.size or y_arr.size == 0:
        raise ValueError(f"need one label per feature row, got {x.shape[0]} rows and {y_arr.size} labels")
    present = np.unique(y_arr)
    if present.size < 2:
        raise ValueError("the metadata baseline needs at least two classes")
    g = np.asarray([str(v) for v in groups]) if groups is not None else None
    cv, k = _cv_splitter(y_arr, g, n_splits, seed)
    folds = list(cv.split(x, y_arr, g))
    pred = cross_val_predict(_make_classifier(seed), x, y_arr, cv=folds)
    n = int(y_arr.size)
    correct = int((pred == y_arr).sum())
    acc = correct / n
    lo, hi = wilson_interval(correct, n)
    fold_acc = [float((pred[test] == y_arr[test]).mean()) for _, test in folds]
    counts = np.bincount(y_arr, minlength=len(classes))
    chance = float(counts.max() / n)
    recall = {classes[c]: float((pred[y_arr == c] == c).mean()) for c in range(len(classes)) if counts[c] > 0}
    model = _make_classifier(seed).fit(x, y_arr)
    importances = model.named_steps["forest"].feature_importances_
    order = np.argsort(-importances)
    top = [str(feature_names[i]) for i in order[:8]]
    level = _level(acc, lo, chance)
    result: dict[str, Any] = {
        "n": n,
        "classifier": "SimpleImputer + RandomForestClassifier(100 trees) on file properties only",
        "features": list(feature_names),
        "cv": f"{type(cv).__name__}(n_splits={k})"
        + (" grouped by patient/duplicate group" if g is not None else ""),
        "accuracy": acc,
        "accuracy_ci95": [lo, hi],
        "fold_accuracy_mean": float(np.mean(fold_acc)),
        "fold_accuracy_std": float(np.std(fold_acc)),
        "chance": chance,
        "chance_class": classes[int(counts.argmax())],
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "per_class_recall": recall,
        "top_features": {top_name: float(importances[i]) for top_name, i in zip(top, order[:8], strict=True)},
        "level": level,
        "verdict": _verdict(level, acc, chance, top),
    }
    for name, values in (by or {}).items():
        vals = np.asarray([str(v) for v in values])
        if vals.size != n:
            raise ValueError(f"by[{name!r}] has {vals.size} values for {n} films")
        result[f"by_{name}"] = {
            v: _subset_accuracy(pred, y_arr, vals == v, classes) for v in sorted(set(vals))
        }
    return result


def _subset_accuracy(
    pred: np.ndarray, y: np.ndarray, mask: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Out-of-fold accuracy, Wilson interval and majority-share chance within one subset."""
    k, n = int((pred[mask] == y[mask]).sum()), int(mask.sum())
    counts = np.bincount(y[mask], minlength=len(classes))
    return {
        "n": n,
        "classes": {classes[c]: int(counts[c]) for c in range(len(classes)) if counts[c]},
        "accuracy": k / n,
        "accuracy_ci95": list(wilson_interval(k, n)),
        "chance": float(counts.max() / n),
    }


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def crosstab(labels: Sequence[int], values: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Class x value counts (``{"columns": classes, "rows": {value: [count per class]}}``) + findings.

    ``single_class`` lists values (sources) that hold one class only; ``cramers_v`` (0: the value
    says nothing about the class, 1: it decides it) summarises the table in one number.
    """
    y = np.asarray(labels, dtype=np.int64)
    vals = [str(v) for v in values]
    names = sorted(set(vals))
    table = np.zeros((len(names), len(classes)), dtype=np.int64)
    index = {v: i for i, v in enumerate(names)}
    for v, c in zip(vals, y, strict=True):
        table[index[v], c] += 1
    rows = {v: table[i].tolist() for i, v in enumerate(names)}
    single = {v: classes[int(np.argmax(r))] for v, r in rows.items() if sum(1 for c in r if c) == 1}
    return {
        "columns": list(classes),
        "rows": rows,
        "totals": table.sum(axis=0).tolist(),
        "n": int(table.sum()),
        "single_class": single,
        "cramers_v": _cramers_v(table),
    }


def _cramers_v(table: np.ndarray) -> float | None:
    """Cramér's V of a contingency table; None when it is undefined (one row or one column)."""
    t = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0].astype(np.float64)
    r, c = t.shape
    if r < 2 or c < 2:
        return None
    n = t.sum()
    expected = t.sum(axis=1, keepdims=True) * t.sum(axis=0, keepdims=True) / n
    chi2 = float(((t - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (min(r, c) - 1)))


def _duplicate_and_patient_groups(ds: Any) -> list[str] | None:
    """One group id per row (`splits.split_groups`: a patient's films and copies of one picture
    share it), or None when every film is its own group."""
    from hfxray.data.splits import split_groups

    groups = split_groups(ds) if "sha256" in ds.column_names else list(range(len(ds)))
    return [f"g{g}" for g in groups] if len(set(groups)) < len(groups) else None


def confounding_report(
    ds: Any,
    *,
    columns: Sequence[str] = ("source", "population"),
    baseline: bool = True,
    n_splits: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Class x column tables and the metadata-only baseline for a Dataset from `load_image_folder`.

    Reads the ``label``, ``path`` and metadata columns (those of ``columns`` that exist) and,
    for the baseline, each file's header and thumbnail. Patient and duplicate groups stay in one
    cross-validation fold.
    """
    classes = list(ds.features["label"].names)
    labels = list(ds["label"])
    out: dict[str, Any] = {"n": len(labels), "classes": classes, "tables": {}}
    for col in columns:
        if col in ds.column_names:
            out["tables"][col] = crosstab(labels, list(ds[col]), classes)
    if baseline:
        paths = list(ds["path"])
        x, ok = feature_matrix(paths, progress=progress)
        groups = _duplicate_and_patient_groups(ds)
        y = [labels[i] for i in ok]
        g = [groups[i] for i in ok] if groups is not None else None
        by: dict[str, list[str]] = {}
        for col in columns[:1]:  # the first column (source) is broken down; population follows it
            if col in ds.column_names:
                values = list(ds[col])
                by[col] = [values[i] for i in ok]
        out["baseline"] = metadata_baseline(x, y, classes, groups=g, n_splits=n_splits, seed=seed, by=by)
        out["baseline"]["n_unreadable"] = len(paths) - len(ok)
    return out


def _format_table(title: str, t: Mapping[str, Any]) -> list[str]:
    cols = list(t["columns"])
    width = max([len(title)] + [len(r) for r in t["rows"]]) + 2
    cw = [max(len(c), 5) + 2 for c in cols]
    lines = [
        title.ljust(width) + "".join(c.rjust(w) for c, w in zip(cols, cw, strict=True)) + "  total".rjust(8)
    ]
    for name, counts in t["rows"].items():
        cells = "".join(str(v).rjust(w) for v, w in zip(counts, cw, strict=True))
        lines.append(f"  {name}".ljust(width) + cells + str(sum(counts)).rjust(8))
    lines.append(
        "  total".ljust(width)
        + "".join(str(v).rjust(w) for v, w in zip(t["totals"], cw, strict=True))
        + str(t["n"]).rjust(8)
    )
    v = t.get("cramers_v")
    if v is not None:
        lines.append(f"  Cramér's V {v:.2f} (0: independent of the class, 1: decides it)")
    if t.get("single_class"):
        lines.append("  one class only: " + ", ".join(f"{k} ({c})" for k, c in t["single_class"].items()))
    return lines


def format_confounding(report: Mapping[str, Any]) -> str:
    """The report as plain text for the terminal (tables, then the baseline and its verdict)."""
    lines = ["Confounding:"]
    for col, t in report.get("tables", {}).items():
        lines += _format_table(f"class x {col}", t)
    b = report.get("baseline")
    if b:
        lo, hi = b["accuracy_ci95"]
        lines.append(
            f"Metadata-only baseline (n={b['n']}, {b['cv']}): accuracy {b['accuracy']:.3f} "
            f"(95% CI {lo:.3f}-{hi:.3f}; folds {b['fold_accuracy_mean']:.3f} +- {b['fold_accuracy_std']:.3f}), "
            f"chance {b['chance']:.3f} ({b['chance_class']}), balanced accuracy {b['balanced_accuracy']:.3f}"
        )
        lines.append("  strongest cues: " + ", ".join(f"{k} {v:.2f}" for k, v in b["top_features"].items()))
        lines.append("  " + b["verdict"])
        for key, per in b.items():
            if key.startswith("by_") and isinstance(per, dict) and len(per) > 1:
                lines.append(f"  within each {key[3:]} (out-of-fold accuracy vs chance):")
                for value, r in per.items():
                    lo, hi = r["accuracy_ci95"]
                    lines.append(
                        f"    {value}: n={r['n']} accuracy {r['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) chance {r['chance']:.3f}"
                    )
    return "\n".join(lines)


def confounding_sections(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report as `hfxray.report.write_html_report` ``extra_sections`` (tables and the verdict)."""
    from hfxray.report import Table

    sections: dict[str, Any] = {}
    for col, t in report.get("tables", {}).items():
        rows = [[name, *counts, sum(counts)] for name, counts in t["rows"].items()]
        rows.append(["total", *t["totals"], t["n"]])
        notes = []
        if t.get("cramers_v") is not None:
            notes.append(f"Cramér's V {t['cramers_v']:.2f} (0: independent of the class, 1: decides it).")
        if t.get("single_class"):
            notes.append(
                "One class only: " + ", ".join(f"{k} ({c})" for k, c in t["single_class"].items()) + "."
            )
        sections[f"Class x {col}"] = Table([col, *t["columns"], "total"], rows, note=" ".join(notes))
    b = report.get("baseline")
    if b:
        sections["Metadata-only baseline"] = (
            f"{b['verdict']}\n\nClassifier: {b['classifier']}; cross-validation: {b['cv']}; "
            f"films: {b['n']}. Strongest cues: "
            + ", ".join(f"{k} ({v:.2f})" for k, v in b["top_features"].items())
            + "."
        )
        rows: list[list[Any]] = [
            ["all films", b["n"], (b["accuracy"], b["accuracy_ci95"]), b["chance"], b["balanced_accuracy"]]
        ]
        for key, per in b.items():
            if key.startswith("by_") and isinstance(per, dict) and len(per) > 1:
                rows += [
                    [f"{key[3:]} = {v}", r["n"], (r["accuracy"], r["accuracy_ci95"]), r["chance"], None]
                    for v, r in per.items()
                ]
        sections["Metadata-only baseline: out-of-fold accuracy"] = Table(
            ["films", "n", "accuracy [95% CI]", "chance (majority share)", "balanced accuracy"],
            rows,
            note="High accuracy from file properties alone means the class can be read off the source.",
        )
    return sections
