"""Report: PNG plots (Figure + Agg, no pyplot) and the self-contained HTML report."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray import DISCLAIMER
from hfxray.metrics import classification_report
from hfxray.report import (
    plot_confusion_matrix,
    plot_lr_find,
    plot_most_wrong,
    plot_reliability,
    write_html_report,
)

CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


def _check_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 2000  # not an empty canvas
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 200 <= w <= 3000 and 200 <= h <= 3000
        # A real plot has more than a couple of colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10
    return w, h


def _synthetic_run(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def _xray_like(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    lungs = np.exp(-(((xx - size * 0.3) ** 2 + (yy - size / 2) ** 2) / (size * 4)))
    lungs += np.exp(-(((xx - size * 0.7) ** 2 + (yy - size / 2) ** 2) / (size * 4)))
    arr = np.clip(255 * (1 - 0.7 * lungs) + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


@pytest.fixture
def plots(tmp_path, shared_data):
    y, probs = _synthetic_run()
    rep = classification_report(y, probs, CLASSES)
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != y)
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]])]
    real = sorted((shared_data / "Covid").iterdir())[:2]  # real files go through hfxray.images
    items = [(real[0], "Covid", "Normal", 0.97), (real[1], "Covid", "Viral Pneumonia", 0.91)]
    items += [(_xray_like(i), CLASSES[y[i]], CLASSES[preds[i]], float(probs[i, preds[i]])) for i in wrong]
    lrs = np.logspace(-6, -1, 40)
    losses = 1.2 - 0.5 * np.tanh(np.log10(lrs) + 4) + np.where(lrs > 3e-2, 5.0, 0.0)
    paths = {
        "Confusion matrix": plot_confusion_matrix(rep["confusion_matrix"], CLASSES, tmp_path / "cm.png"),
        "Most confidently wrong": plot_most_wrong(items, tmp_path / "wrong.png", k=6),
        "Reliability": plot_reliability(probs, y, tmp_path / "reliability.png"),
        "LR range test": plot_lr_find(lrs, losses, 1e-3, tmp_path / "lr_find.png"),
    }
    return tmp_path, rep, paths


def test_plots_are_valid_pngs(plots):
    _, _, paths = plots
    for path in paths.values():
        _check_png(path)
    w, h = _check_png(paths["Most confidently wrong"])
    assert w > h  # 6 items -> 4 columns x 2 rows


def test_most_wrong_edge_cases(tmp_path):
    _check_png(plot_most_wrong([], tmp_path / "none.png"))
    one = plot_most_wrong([(_xray_like(0), "Normal", "Covid", 0.6)], tmp_path / "one.png")
    _check_png(one)
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix([[1, 2], [3, 4]], CLASSES, tmp_path / "bad.png")


def test_html_report_ties_everything_together(plots):
    out, rep, paths = plots
    images = {caption: p.name for caption, p in paths.items()}
    extra = {"Training <data>": "Fingerprint a&b\n\nsecond paragraph", "Learning rates": {"head": 1e-3}}
    report = write_html_report(out, rep, images, title="Validation <b>report</b>", extra_sections=extra)
    assert report == out / "report.html"
    text = report.read_text(encoding="utf-8")
    assert text.count(html.escape(DISCLAIMER)) >= 1
    for caption, name in images.items():
        assert f'src="{name}"' in text
        assert html.escape(caption) in text
    # Every referenced image exists next to the report; nothing external is loaded.
    for src in re.findall(r'src="([^"]+)"', text):
        assert (out / src).is_file()
    assert "<script" not in text and "<link" not in text
    assert "http://" not in text and "https://" not in text
    # Text is escaped, not interpreted.
    assert "<b>report</b>" not in text and "Validation &lt;b&gt;report&lt;/b&gt;" in text
    assert "Training &lt;data&gt;" in text and "Fingerprint a&amp;b" in text
    # Metrics table: intervals and n per class.
    lo, hi = rep["accuracy_ci95"]
    assert f"{rep['accuracy']:.3f}" in text and f"[{lo:.3f}, {hi:.3f}]" in text
    for name in CLASSES:
        entry = rep["per_class"][name]
        lo, hi = entry["sensitivity_ci95"]
        assert f"<td>{html.escape(name)}</td><td>{entry['n']}</td>" in text
        assert f'{entry["sensitivity"]:.3f} <span class="ci">[{lo:.3f}, {hi:.3f}]</span>' in text


def test_html_report_class_subset_and_bad_paths(tmp_path):
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    rep = classification_report(y, probs, CLASSES)
    assert rep["per_class"]["Viral Pneumonia"]["sensitivity"] is None
    text = write_html_report(tmp_path, rep, {}, title="External folder").read_text()
    assert "&ndash;" in text and "absent" in text and html.escape(DISCLAIMER) in text
    with pytest.raises(ValueError, match="outside"):
        write_html_report(tmp_path / "sub", rep, {"x": tmp_path / "elsewhere.png"}, title="t")
    with pytest.raises(ValueError, match="leaves"):
        write_html_report(tmp_path, rep, {"x": "../elsewhere.png"}, title="t")


def test_plotting_never_imports_pyplot(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from hfxray.report import plot_confusion_matrix, plot_reliability\n"
        f"plot_confusion_matrix([[3, 1], [0, 4]], ['a', 'b'], {str(tmp_path / 'cm.png')!r})\n"
        f"plot_reliability(np.array([[0.9, 0.1], [0.3, 0.7]]), [0, 0], {str(tmp_path / 'r.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "cm.png").is_file() and (tmp_path / "r.png").is_file()
