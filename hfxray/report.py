"""Evaluation plots and a self-contained HTML report.

Plots use `matplotlib.figure.Figure` with an explicit Agg canvas, never `pyplot`: pyplot keeps a
global registry of open figures (a leak in a long-running Space) and picks a GUI backend from the
environment; a bare Figure is garbage-collected like any object and renders headless.

The HTML report references images by relative path and carries no external CSS, JS or fonts, so
the output folder can be zipped, opened offline or attached to a model repo as is.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from hfxray import DISCLAIMER, __version__
from hfxray.calibration import expected_calibration_error, reliability_bins

logger = logging.getLogger(__name__)

__all__ = [
    "Table",
    "group_table",
    "plot_confusion_matrix",
    "plot_lr_find",
    "plot_most_wrong",
    "plot_reliability",
    "replace_generated_section",
    "write_html_report",
]

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no backend lookup, no pyplot state
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_confusion_matrix(cm: Any, classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Confusion matrix heat map; each cell shows the count and the row percentage.

    Rows are true labels and columns predictions. Colour encodes the row fraction (recall per
    class), so a small class's errors are as visible as a large one's.
    """
    m = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {k} classes")
    row_sums = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row_sums, out=np.zeros(m.shape, dtype=float), where=row_sums > 0)
    size = 1.6 + 1.3 * k
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_xticks(range(k), labels=list(classes), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"Confusion matrix (n = {int(m.sum())})")
    for i in range(k):
        for j in range(k):
            pct = f"{100 * frac[i, j]:.0f}%" if row_sums[i, 0] else "-"
            ax.text(
                j,
                i,
                f"{m[i, j]}\n{pct}",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
                fontsize=10,
            )
    return _save(fig, path)


def _as_pil(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    # Files are decoded only by hfxray.images (limits, DICOM, EXIF orientation all live there).
    from hfxray.images import load_image

    return load_image(item)


def plot_most_wrong(
    items: Sequence[tuple[Any, str, str, float]], path: str | os.PathLike, k: int = 12
) -> Path:
    """Grid of the `k` most confidently wrong predictions.

    `items` are (PIL image or file path, true label, predicted label, probability of the
    prediction), already sorted most confidently wrong first. Each title shows all three so the
    grid can be read without the metrics table.
    """
    shown = list(items)[: max(0, int(k))]
    cols = max(1, min(4, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = _new_figure(3.0 * cols, 3.3 * rows)
    if not shown:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "No misclassified images", ha="center", va="center", fontsize=14)
        return _save(fig, path)
    fig.suptitle(f"Most confidently wrong ({len(shown)} shown)")
    for i, (img, true, pred, prob) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = _as_pil(img)
        image.thumbnail((256, 256))  # keeps the PNG small; the grid cell is ~300 px anyway
        ax.imshow(np.asarray(image))
        ax.set_title(f"true: {true}\npred: {pred} (p={float(prob):.2f})", fontsize=9, color="darkred")
        ax.axis("off")
    return _save(fig, path)


def plot_reliability(probs: Any, y_true: Any, path: str | os.PathLike, n_bins: int = 15) -> Path:
    """Reliability diagram (top-label accuracy vs confidence per bin) with the sample histogram."""
    bins = reliability_bins(probs, y_true, n_bins=n_bins)
    ece = expected_calibration_error(probs, y_true, n_bins=n_bins)
    edges = np.asarray(bins["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in bins["confidence"]])
    fig = _new_figure(5.5, 6.0)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ok = ~np.isnan(acc)
    ax.bar(centers[ok], acc[ok], width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    ax.plot(conf[ok], acc[ok], "o", color="tab:red", ms=4, label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.set_title(f"Reliability (top label), ECE = {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centers, bins["count"], width=width * 0.95, color="grey")
    ax_hist.set_xlabel("Confidence")
    ax_hist.set_ylabel("Images")
    return _save(fig, path)


def plot_lr_find(
    lrs: Sequence[float], losses: Sequence[float], chosen_lr: float | None, path: str | os.PathLike
) -> Path:
    """Learning-rate range test: loss vs learning rate (log x) with the chosen rate marked."""
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"lrs and losses must be non-empty and equal length ({x.size} vs {y.size})")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue")
    if np.all(x > 0):
        ax.set_xscale("log")
    if chosen_lr is not None and math.isfinite(chosen_lr):
        ax.axvline(chosen_lr, color="tab:red", ls="--", label=f"chosen lr = {chosen_lr:.2e}")
        ax.legend()
    finite = y[np.isfinite(y)]
    if finite.size:  # the range test ends in divergence; don't let the blow-up flatten the curve
        lo, hi = float(finite.min()), float(np.percentile(finite, 95))
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Loss")
    ax.set_title("Learning-rate range test")
    return _save(fig, path)


# --- HTML report -------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
.disclaimer{border:2px solid #b00;background:#fff3f3;padding:.8em 1em;font-weight:600}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f2f2f2}
figure{display:inline-block;margin:1em;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
.ci{color:#666;font-size:.9em;white-space:nowrap}
.note{color:#8a5300}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, ci: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        return _e(value)
    if ci and len(ci) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        text += f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'
    return text


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    parts = ["<h2>Summary</h2>", "<table><tbody>"]
    rows = [
        ("Images (n)", _fmt(metrics.get("n"))),
        ("Accuracy [95% CI]", _fmt(metrics.get("accuracy"), metrics.get("accuracy_ci95"))),
        ("Macro F1", _fmt(metrics.get("macro_f1"))),
        ("ECE (top label)", _fmt(metrics.get("ece"))),
    ]
    if metrics.get("macro_f1_over"):
        rows.append(("Macro F1 over", _e(", ".join(map(str, metrics["macro_f1_over"])))))
    parts.extend(f"<tr><th>{_e(label)}</th><td>{val}</td></tr>" for label, val in rows)
    parts.append("</tbody></table>")
    if metrics.get("note"):
        parts.append(f'<p class="note">{_e(metrics["note"])}</p>')
    if metrics.get("intervals"):
        parts.append(f'<p class="ci">{_e(metrics["intervals"])}</p>')

    per_class = metrics.get("per_class") or {}
    if per_class:
        cols = [
            ("Sensitivity", "sensitivity"),
            ("Specificity", "specificity"),
            ("PPV", "ppv"),
            ("NPV", "npv"),
            ("F1", "f1"),
            ("AUROC", "auroc"),
        ]
        parts.append("<h2>Per class (one vs rest, 95% intervals)</h2><table><thead><tr><th>Class</th>")
        parts.append("<th>n</th>" + "".join(f"<th>{_e(h)}</th>" for h, _ in cols) + "</tr></thead><tbody>")
        notes = []
        for name, m in per_class.items():
            cells = "".join(f"<td>{_fmt(m.get(key), m.get(key + '_ci95'))}</td>" for _, key in cols)
            parts.append(f"<tr><td>{_e(name)}</td><td>{_fmt(m.get('n'))}</td>{cells}</tr>")
            if m.get("note"):
                notes.append(f"<li>{_e(name)}: {_e(m['note'])}</li>")
        parts.append("</tbody></table>")
        if notes:
            parts.append('<ul class="note">' + "".join(notes) + "</ul>")

    cm = metrics.get("confusion_matrix")
    classes = metrics.get("classes")
    if cm and classes and len(cm) == len(classes):
        parts.append("<h2>Confusion matrix (rows = true, columns = predicted)</h2><table><thead><tr>")
        parts.append("<th>true \\ predicted</th>" + "".join(f"<th>{_e(c)}</th>" for c in classes))
        parts.append("</tr></thead><tbody>")
        for name, row in zip(classes, cm, strict=True):
            parts.append(f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>")
        parts.append("</tbody></table>")
    return "\n".join(parts)


def _relative_src(out_dir: Path, filename: str | os.PathLike) -> str:
    p = Path(filename)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(out_dir.resolve())
        except ValueError as err:
            raise ValueError(f"image {filename} is outside the report folder {out_dir}") from err
    if ".." in p.parts:
        raise ValueError(f"image path {filename} leaves the report folder")
    if not (out_dir / p).is_file():
        logger.warning("report image %s does not exist in %s", p, out_dir)
    return quote(p.as_posix())


@dataclass(frozen=True)
class Table:
    """A table for `write_html_report`'s ``extra_sections``: a cell is a value or ``(value, (lo, hi))``.

    Numbers get the report's formatting (3 decimals, the interval in grey); text is escaped.
    ``note`` is shown under the table.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


def _cell_html(cell: Any) -> str:
    if isinstance(cell, tuple) and len(cell) == 2 and isinstance(cell[1], (tuple, list)):
        return _fmt(cell[0], cell[1])
    return _fmt(cell)


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{_e(table.note)}</p>' if table.note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def group_table(per_group: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> Table:
    """One row per group of `metrics.classification_report_by_group`: n, accuracy, macro F1, and
    each class's sensitivity and specificity, with 95% intervals (a dash where undefined)."""
    columns = ["group", "n", "accuracy", "macro F1"]
    for c in classes:
        columns += [f"{c} sensitivity", f"{c} specificity"]
    rows = []
    for value, rep in per_group.items():
        row: list[Any] = [
            value,
            rep.get("n"),
            (rep.get("accuracy"), rep.get("accuracy_ci95")),
            rep.get("macro_f1"),
        ]
        for c in classes:
            m = (rep.get("per_class") or {}).get(c, {})
            row += [
                (m.get("sensitivity"), m.get("sensitivity_ci95")),
                (m.get("specificity"), m.get("specificity_ci95")),
            ]
        rows.append(row)
    total = sum(int(rep.get("n") or 0) for rep in per_group.values())
    return Table(
        columns,
        rows,
        note=f"{len(rows)} groups, {total} films in all. Specificity of a class = films of other classes not called it.",
    )


def _section_html(heading: str, body: Any) -> str:
    if isinstance(body, Table):
        return f"<h2>{_e(heading)}</h2>\n{_table_html(body)}"
    if isinstance(body, str):
        content = "".join(f"<p>{_e(par)}</p>" for par in body.split("\n\n") if par.strip())
    else:
        content = f"<pre>{_e(json.dumps(body, indent=2, default=str))}</pre>"
    return f"<h2>{_e(heading)}</h2>\n{content}"


def write_html_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    images: Mapping[str, str | os.PathLike],
    title: str,
    extra_sections: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out_dir/report.html`: disclaimer, metrics tables with intervals and n, then the plots.

    `images` maps a caption to a PNG inside `out_dir` (referenced relatively). `extra_sections`
    maps a heading to plain text (paragraphs split on blank lines), a `Table`, or any JSON-able
    object (shown preformatted). Every piece of text is HTML-escaped. Empty ``metrics`` (a data
    check, not an evaluation) leave out the summary tables. Returns the report path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    disclaimer = f'<p class="disclaimer">{_e(DISCLAIMER)}</p>'
    figures = "\n".join(
        f'<figure><img src="{_e(_relative_src(out, fn))}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for caption, fn in images.items()
    )
    sections = "\n".join(_section_html(h, b) for h, b in (extra_sections or {}).items())
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
{disclaimer}
{_metrics_html(metrics) if metrics else ""}
{"<h2>Figures</h2>" + figures if figures else ""}
{sections}
<hr>
{disclaimer}
<p class="ci">Generated by hfxray {_e(__version__)}.</p>
</body>
</html>
"""
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, path)  # never leave a half-written report behind
    return path


def replace_generated_section(path: str | os.PathLike, begin: str, end: str, content: str, template: str) -> None:
    """Rewrite the text between the ``begin`` and ``end`` markers of a markdown file, atomically.

    Why: benchmark tables live inside hand-written docs (docs/loso.md, the README); only the marked
    section is regenerated and everything around it survives. A file that does not exist starts from
    ``template``; one without the markers gets them at its end.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else template
    if begin not in text or end not in text:
        text = f"{text.rstrip()}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{content}\n{end}{tail}")
    os.replace(tmp, path)
