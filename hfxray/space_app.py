"""The Gradio Space: upload chest X-rays, get probabilities, a Grad-CAM heatmap and input warnings.

All logic lives here; ``space/app.py`` only calls :func:`main`. Design choices:

* The probabilities and the input gate come from the same :class:`hfxray.inference.Predictor` as
  ``scripts/predict.py`` - ONNX Runtime when the model directory has ``model.onnx`` - on the same
  decoder (``load_image`` with ``draft_size``) and preprocessing, so both show the same numbers.
  The Grad-CAM heatmap needs gradients, so PyTorch computes it, for the class ONNX Runtime chose,
  from the very pixel values the predictor used.
* The input gate (:mod:`hfxray.gate`) runs before an answer is shown and answers two questions
  apart: an input that is not a frontal chest radiograph is *refused* (the result says "Not a
  frontal chest radiograph" with the reason, no class probabilities); a film unlike the training
  films is *answered* with a warning (the result names it "unfamiliar", the reason is under
  Warnings). Refusals never appear under Warnings, and warnings never replace an answer.
* Offline: analytics off (``GRADIO_ANALYTICS_ENABLED=False`` and ``analytics_enabled=False``), a
  theme with system fonts only, no SSR/node server, no share link, no examples from patient data.
* Privacy: uploads are read once and deleted from Gradio's cache right after; outputs are purged
  by ``delete_cache``; logs carry counts and timings only, never file names or DICOM fields.
* Limits: ``queue(default_concurrency_limit=2, max_size=64)`` so bursts wait instead of
  exhausting memory; at most :data:`MAX_FILES` files per batch; Gradio refuses uploads above
  ``images.MAX_BYTES``; ``load_image`` refuses bombs, truncated, empty and non-image files with a
  one-line reason that the user sees instead of a stack trace.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from hfxray import DISCLAIMER, __version__
from hfxray.gate import NOT_UPRIGHT_TEXT
from hfxray.images import MAX_BYTES, ImageReadError, load_image
from hfxray.inference import Predictor
from hfxray.prediction_csv import csv_columns, csv_record

logger = logging.getLogger(__name__)

MAX_FILES = 32
DISPLAY_SIZE = 512
NO_HEATMAP_NOTE = (
    "Grad-CAM heatmaps are off: PyTorch is not installed (inference-only install). The probabilities "
    "come from ONNX Runtime as usual; install torch to see where the model looked."
)
REFUSED_TEXT = "Not a frontal chest radiograph"
TURNED_TEXT = "Film turned on its side or upside down"  # refused by the gate's orientation check
ABSTAIN_TEXT = REFUSED_TEXT  # the earlier name
UNFAMILIAR_TEXT = "Unfamiliar film"
NO_FILE_TEXT = "No file"  # the result headline when Analyse is pressed with nothing uploaded
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CSV_KEEP_SECONDS = 600  # our CSV/PNG outputs; Gradio serves its own copies
RECENT_RESULTS, RECENT_SECONDS = 64, 600  # identical uploads in flight at once (see analyse_one)
STATE_TTL_SECONDS = 900  # per-session results (display-size images) are dropped after this
ENV_MODEL, ENV_HOST, ENV_PORT, ENV_AUTH = "HFXRAY_MODEL", "HFXRAY_HOST", "HFXRAY_PORT", "HFXRAY_AUTH"


@dataclass
class FileResult:
    """What the Space shows for one uploaded file."""

    name: str
    probs: dict[str, float] = field(default_factory=dict)
    predicted: str | None = None  # a class name; None when abstained or unreadable
    warnings: list[str] = field(default_factory=list)  # shown with an answer (never the refusal)
    abstained: bool = False  # refused by the input gate: no class
    refused: str | None = None  # why (one line), when abstained
    unfamiliar: bool = False  # answered, but unlike the training films
    error: str | None = None
    distance: float | None = None
    image: Image.Image | None = None  # display-size original
    heatmap: Image.Image | None = None  # display-size Grad-CAM overlay

    @property
    def headline(self) -> str:
        if self.error:
            return "No result: the file could not be read"
        if self.abstained:
            return self._refusal_title()
        return f"{self.predicted} ({self.probs[self.predicted]:.0%})"

    def _refusal_title(self) -> str:
        """Why no class, in a few words: a chest film that is only turned is told so, not "not a chest film"."""
        return TURNED_TEXT if (self.refused or "").startswith(NOT_UPRIGHT_TEXT) else REFUSED_TEXT

    def label_value(self) -> dict[str, float] | str | None:
        """gr.Label value: probabilities only when the model answers."""
        if self.error:
            return None
        return self._refusal_title() if self.abstained else dict(self.probs)

    def markdown(self) -> str:
        text = f"### {self.headline}\n"
        if self.error:
            text += f"\n{self.error}\n"
        elif self.abstained:
            text += f"\nNo class is given for this input: {self.refused or 'refused by the input gate'}.\n"
        elif self.unfamiliar:
            text += (
                f"\n**{UNFAMILIAR_TEXT}:** the model was not validated on films like this one; "
                "treat the answer with extra caution (details under Warnings).\n"
            )
        text += f"\n*{DISCLAIMER}*"
        return text

    def warnings_text(self) -> str:
        lines = ([self.error] if self.error else []) + self.warnings
        return "\n".join(f"- {w}" for w in lines) if lines else "None"


def _display(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR)
    return image


class XrayService:
    """The model, its gate and Grad-CAM layer, loaded once and shared by all requests.

    Grad-CAM hooks the model for the duration of a pass, so passes are serialised with a lock
    (decoding and drawing of other requests still run in parallel).
    """

    def __init__(self, model: str | os.PathLike | None = None) -> None:
        source = model if model is not None else os.environ.get(ENV_MODEL) or None
        self.predictor = Predictor.from_pretrained(source)  # ONNX Runtime when the directory has model.onnx
        self.classes = list(self.predictor.classes)
        self.image_size = int(self.predictor.image_size)
        # None when PyTorch is not installed (the inference-only install): probabilities, no heatmap
        self.model, self.layer = _gradcam_model(self.predictor)
        self._lock = threading.Lock()
        self._csv_dir = Path(tempfile.mkdtemp(prefix="hfxray-space-csv-"))
        self._recent: OrderedDict[str, tuple[float, FileResult]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._last_purge = 0.0

    def remember(self, upload_path: str, result: FileResult) -> None:
        """Keep a result briefly (in memory only) under its upload path, which names the content."""
        with self._recent_lock:
            self._recent[upload_path] = (time.monotonic(), result)
            self._recent.move_to_end(upload_path)
            while len(self._recent) > RECENT_RESULTS:
                self._recent.popitem(last=False)

    def recall(self, upload_path: str) -> FileResult | None:
        """A copy of a result remembered under ``upload_path`` in the last RECENT_SECONDS."""
        with self._recent_lock:
            entry = self._recent.get(upload_path)
        if entry is None or time.monotonic() - entry[0] > RECENT_SECONDS:
            return None
        return dataclasses.replace(entry[1], warnings=list(entry[1].warnings))

    @property
    def model_name(self) -> str:
        return self.predictor.model_dir.name

    @property
    def heatmaps(self) -> bool:
        """Whether Grad-CAM heatmaps can be drawn (they need PyTorch; ONNX Runtime gives the numbers)."""
        return self.model is not None

    def _heatmap(self, shown: Image.Image, pixel_values: Any, target_class: int) -> Image.Image | None:
        """The Grad-CAM overlay on the display image, for ``target_class``; None without PyTorch."""
        if self.model is None:
            return None
        import torch

        from hfxray.gradcam import explain, overlay

        with self._lock:
            out = explain(
                self.model, torch.from_numpy(pixel_values[None]), target_class=target_class, layer=self.layer
            )
        return overlay(shown, out.cams[0])

    def analyse_image(self, image: Image.Image, name: str) -> FileResult:
        analysis = self.predictor.analyse_image(image)
        probs = {c: float(p) for c, p in zip(self.classes, analysis.probs, strict=True)}
        gate = analysis.gate
        shown = _display(image)
        result = FileResult(
            name=name,
            warnings=list(gate.notes),
            abstained=not gate.ok,
            refused=gate.refused,
            unfamiliar=gate.unfamiliar,
            distance=gate.distance,
            image=shown,
            heatmap=self._heatmap(shown, analysis.pixel_values, analysis.predicted_index),
        )
        if gate.ok:
            result.probs = probs
            result.predicted = max(probs, key=probs.get)
        return result

    def analyse_path(self, path: str | os.PathLike, name: str | None = None) -> FileResult:
        """Decode, analyse; errors become a result with a one-line reason, never an exception."""
        path = os.fspath(path)
        name = name or Path(path).name
        try:
            image = load_image(path, draft_size=self.image_size)
        except ImageReadError as e:
            message = str(e).replace(repr(path), repr(name)).replace(path, name)
            return FileResult(name=name, error=message)
        except OSError as e:
            return FileResult(name=name, error=f"cannot read {name!r}: {e.strerror or type(e).__name__}")
        try:
            return self.analyse_image(image, name)
        except Exception:  # a model failure must not show a stack trace to the user
            logger.exception("analysis failed")  # the traceback has no file name or DICOM field
            return FileResult(name=name, error=f"{name!r}: the model could not process this image")

    def write_csv(self, results: Sequence[FileResult]) -> Path:
        """The batch as CSV, in ``predict.py``'s schema (:func:`hfxray.prediction_csv.csv_columns`:
        path, predicted, prob_<class>..., refused, warning, error), cells safe for spreadsheets."""
        self._purge_old_csv()
        folder = self._csv_dir / uuid.uuid4().hex
        folder.mkdir()
        path = folder / "hfxray_predictions.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(csv_columns(self.classes))
            for r in results:
                warning = "; ".join(r.warnings) or None
                writer.writerow(
                    csv_record(
                        r.name,
                        r.predicted,
                        r.probs,
                        self.classes,
                        refused=r.refused,
                        warning=warning,
                        error=r.error,
                    )
                )
        return path

    def image_file(self, image: Image.Image | None) -> str | None:
        """Write a display image to a uniquely named PNG and return its path.

        Returning PIL images would make Gradio write them to cache/<content hash>/image.png in
        place, so two identical answers at once (two users, one film) could serve a half-written
        file; a file path is copied into the cache atomically instead.
        """
        if image is None:
            return None
        self._purge_old_csv()
        folder = self._csv_dir / uuid.uuid4().hex
        folder.mkdir()
        path = folder / "image.png"
        image.save(path, format="PNG")
        return str(path)

    def _purge_old_csv(self) -> None:
        now = time.time()
        if now - self._last_purge < 30:  # at most twice a minute
            return
        self._last_purge = now
        cutoff = now - CSV_KEEP_SECONDS
        for folder in self._csv_dir.iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _gradcam_model(predictor: Predictor) -> tuple[Any, Any]:
    """(PyTorch model, Grad-CAM layer) for the heatmaps, or (None, None) when torch is not installed:
    the inference-only install answers with ONNX Runtime and says that heatmaps are off."""
    try:
        import torch
    except ImportError:
        logger.warning("PyTorch is not installed: the Space answers without Grad-CAM heatmaps")
        return None, None
    from hfxray.gradcam import find_target_layer
    from hfxray.modeling import load_model

    model = predictor.model
    if model is None:  # ONNX Runtime gives the probabilities: the same weights in PyTorch for the heatmap
        model, _ = load_model(predictor.model_dir)
        model.eval()
    size = int(predictor.image_size)
    return model, find_target_layer(model, torch.zeros(1, 3, size, size))


def _uploaded_paths(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [os.fspath(getattr(f, "name", f)) for f in files]


def _forget_upload(path: str, cache_dir: str) -> None:
    """Delete an uploaded file (and its per-upload folder) from Gradio's cache once it is read.

    Only files inside the cache are touched: a path given by a Python caller is never deleted.
    """
    p, cache = Path(path).resolve(), Path(cache_dir).resolve()
    if cache not in p.parents:
        return
    try:
        p.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not delete an uploaded file from the cache")
    with contextlib.suppress(OSError):  # not empty or gone: another upload of the same content
        if p.parent != cache:
            p.parent.rmdir()


def _result_widgets(prefix: str, n_classes: int) -> tuple[gr.Label, gr.Markdown, gr.Textbox]:
    """Class probabilities, result text and warnings of one film: the same in both tabs (element ids
    ``<prefix>-label``, ``-result``, ``-warnings``, which the browser test finds them by)."""
    label = gr.Label(label="Class probabilities", num_top_classes=n_classes, elem_id=f"{prefix}-label")
    text = gr.Markdown(label="Result", elem_id=f"{prefix}-result")
    warnings = gr.Textbox(label="Warnings", interactive=False, lines=2, elem_id=f"{prefix}-warnings")
    return label, text, warnings


@dataclass(frozen=True)
class _SingleTab:
    """The "One image" tab's components, handed from the layout step to the wiring step."""

    file: gr.File
    button: gr.Button
    heat: gr.Checkbox
    image: gr.Image
    label: gr.Label
    text: gr.Markdown
    warn: gr.Textbox
    state: gr.State


@dataclass(frozen=True)
class _BatchTab:
    """The "Several images" tab's components, handed from the layout step to the wiring step."""

    files: gr.File
    button: gr.Button
    heat: gr.Checkbox
    csv: gr.File
    gallery: gr.Gallery
    label: gr.Label
    text: gr.Markdown
    warn: gr.Textbox
    table: gr.Dataframe
    state: gr.State


def build_demo(model: str | os.PathLike | XrayService | None = None):
    """The Space as a ``gr.Blocks`` (queue already configured). ``model``: a model directory or Hub
    id, an ``XrayService``, or None for ``$HFXRAY_MODEL`` / the bundled default model."""
    service = model if isinstance(model, XrayService) else XrayService(model)
    with gr.Blocks(
        analytics_enabled=False,
        title="hfxray - chest X-ray research demo",
        delete_cache=(300, 900),  # every 5 min, drop outputs older than 15 min
    ) as demo:
        cache_dir = demo.GRADIO_CACHE
        analyse_one = _upload_analyser(service, cache_dir)
        heat_label = _page_header(service)
        single = _single_tab(service, heat_label)
        batch = _batch_tab(service, heat_label)
        _wire_single(single, service, analyse_one)
        _wire_batch(batch, service, analyse_one, cache_dir)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def _upload_analyser(service: XrayService, cache_dir: str) -> Callable[[str], FileResult]:
    """``analyse_one`` for both tabs: uploads must leave Gradio's cache as soon as they are read."""

    def analyse_one(path: str) -> FileResult:
        """Analyse an upload, then delete it. Gradio stores uploads at cache/<sha256 of the
        content>/<name>, so two users sending the same file share one path, and the first to
        finish deletes it; the second then gets the first one's result for those same bytes."""
        try:
            result = service.analyse_path(path)
            if result.error is None:
                service.remember(path, result)
            elif not os.path.exists(path):
                result = service.recall(path) or result
            return result
        finally:
            _forget_upload(path, cache_dir)

    return analyse_one


def _page_header(service: XrayService) -> str:
    """Title, model and the medical disclaimer above both tabs, plus the note that heatmaps are off
    when PyTorch is missing. Returns the heatmap switch's label, which then says so too."""
    gr.Markdown(
        "# hfxray: chest X-ray classifier (Covid / Normal / Viral Pneumonia)\n"
        f"Model: `{service.model_name}` · hfxray {__version__} · files: PNG, JPEG, BMP, TIFF or DICOM."
    )
    gr.Markdown(f"**{DISCLAIMER}**", elem_id="disclaimer")
    if service.heatmaps:
        return "Show Grad-CAM heatmap"
    gr.Markdown(NO_HEATMAP_NOTE, elem_id="no-heatmap")
    return "Grad-CAM heatmap (off: needs PyTorch)"


def _heat_switch(service: XrayService, label: str, prefix: str) -> gr.Checkbox:
    """The heatmap checkbox of one tab: on by default, and disabled when heatmaps cannot be drawn."""
    return gr.Checkbox(
        value=service.heatmaps,
        label=label,
        interactive=service.heatmaps,
        elem_id=f"{prefix}-heat",
    )


def _single_tab(service: XrayService, heat_label: str) -> _SingleTab:
    """Layout of the "One image" tab (elem ids ``single-*``, which the browser test finds)."""
    with gr.Tab("One image", id="single"):
        with gr.Row():
            with gr.Column():
                file = gr.File(
                    label="Chest X-ray (PNG, JPEG, DICOM ...)", file_count="single", elem_id="single-file"
                )
                button = gr.Button("Analyse", variant="primary", elem_id="single-button")
                heat = _heat_switch(service, heat_label, "single")
            with gr.Column():
                image = gr.Image(
                    label="Image",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="single-image",
                    buttons=["download", "fullscreen"],
                )
                label, text, warn = _result_widgets("single", len(service.classes))
        state = gr.State(time_to_live=STATE_TTL_SECONDS)
    return _SingleTab(file, button, heat, image, label, text, warn, state)


def _batch_tab(service: XrayService, heat_label: str) -> _BatchTab:
    """Layout of the "Several images" tab (elem ids ``batch-*``, which the browser test finds)."""
    with gr.Tab("Several images", id="batch"):
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    label=f"Chest X-rays (up to {MAX_FILES})",
                    file_count="multiple",
                    elem_id="batch-files",
                )
                button = gr.Button("Analyse all", variant="primary", elem_id="batch-button")
                heat = _heat_switch(service, heat_label, "batch")
                csv_file = gr.File(label="Download results (CSV)", interactive=False, elem_id="batch-csv")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="Images (select one for details)",
                    columns=3,
                    format="png",
                    interactive=False,
                    elem_id="batch-gallery",
                    buttons=["download", "fullscreen"],
                )
                label, text, warn = _result_widgets("batch", len(service.classes))
        table = gr.Dataframe(
            headers=["file", "result", *service.classes, "refused", "warnings"],
            label="All files",
            interactive=False,
            elem_id="batch-table",
        )
        state = gr.State([], time_to_live=STATE_TTL_SECONDS)
    return _BatchTab(files, button, heat, csv_file, gallery, label, text, warn, table, state)


def _no_file_markdown() -> str:
    """The result text when Analyse is pressed with nothing uploaded: still with the disclaimer."""
    return f"### {NO_FILE_TEXT}\n\n*{DISCLAIMER}*"


def _film_file(service: XrayService, result: FileResult, show_heat: bool) -> str | None:
    """The PNG to show for one film: its heatmap when asked for and drawn, else the film itself."""
    return service.image_file(result.heatmap if show_heat and result.heatmap else result.image)


def _wire_single(tab: _SingleTab, service: XrayService, analyse_one: Callable[[str], FileResult]) -> None:
    """Events of the "One image" tab: Analyse (the public ``/predict`` API) and the heatmap switch."""

    def predict(file: str | None) -> tuple[Any, Any, str, str, Any]:
        """One file in; label confidences, heatmap image, result text and warnings out."""
        paths = _uploaded_paths(file)
        if not paths:
            return (None, None, _no_file_markdown(), "Upload a chest X-ray first.", None)
        result = analyse_one(paths[0])
        logger.info(
            "single: %s", "error" if result.error else "abstained" if result.abstained else "answered"
        )
        return (
            result.label_value(),
            service.image_file(result.heatmap or result.image),
            result.markdown(),
            result.warnings_text(),
            result,
        )

    def toggle_single(show_heat: bool, result: FileResult | None) -> Any:
        if result is None or result.image is None:
            return None
        return _film_file(service, result, show_heat)

    tab.button.click(
        predict,
        inputs=tab.file,
        outputs=[tab.label, tab.image, tab.text, tab.warn, tab.state],
        api_name="predict",
    ).then(toggle_single, [tab.heat, tab.state], tab.image, api_visibility="private")
    tab.heat.change(toggle_single, [tab.heat, tab.state], tab.image, api_visibility="private")


def _details(results: list[FileResult], index: int) -> tuple[Any, str, str]:
    """Label, result text and warnings of one film of a batch: the tab shows one film at a time."""
    if not results:
        return None, "", ""
    r = results[min(max(index, 0), len(results) - 1)]
    return r.label_value(), f"**{r.name}**\n\n" + r.markdown(), r.warnings_text()


def _analyse_batch(
    paths: list[str], analyse_one: Callable[[str], FileResult], cache_dir: str
) -> list[FileResult]:
    """The first MAX_FILES uploads analysed; the rest are deleted unread and the first result says so."""
    skipped = paths[MAX_FILES:]
    for extra in skipped:
        _forget_upload(extra, cache_dir)
    start = time.perf_counter()
    results = [analyse_one(p) for p in paths[:MAX_FILES]]
    if skipped:
        results[0].warnings.append(
            f"only the first {MAX_FILES} files were analysed; {len(skipped)} more were not "
            "(upload them as another batch)"
        )
    logger.info(
        "batch: %d files in %.1fs (%d abstained, %d unreadable)",
        len(results),
        time.perf_counter() - start,
        sum(r.abstained for r in results),
        sum(r.error is not None for r in results),
    )
    return results


def _batch_rows(results: list[FileResult], classes: list[str]) -> list[list[Any]]:
    """The "All files" table: every file, including those that could not be read."""
    return [
        [
            r.name,
            r.headline,
            *[round(r.probs[c], 4) if r.probs else None for c in classes],
            r.refused or "",
            "; ".join(([r.error] if r.error else []) + r.warnings),
        ]
        for r in results
    ]


def _wire_batch(
    tab: _BatchTab, service: XrayService, analyse_one: Callable[[str], FileResult], cache_dir: str
) -> None:
    """Events of the "Several images" tab: Analyse all (the public ``/predict_batch`` API), the
    heatmap switch and picking a film in the gallery; the results live in the session's gr.State."""

    def gallery_items(results: list[FileResult], show_heat: bool) -> list[tuple[str | None, str]]:
        return [
            (_film_file(service, r, show_heat), f"{r.name}: {r.headline}")
            for r in results
            if r.image is not None
        ]

    def predict_batch(files: Any, show_heat: bool):
        """Several files in; gallery, details of the first, a table and a CSV out."""
        paths = _uploaded_paths(files)
        if not paths:
            return ([], None, _no_file_markdown(), "Upload chest X-rays first.", [], None, [])
        results = _analyse_batch(paths, analyse_one, cache_dir)
        table = _batch_rows(results, service.classes)
        label, text, warn = _details(results, 0)
        # the list of results is in gr.State; the gallery shows only files that decoded
        return (
            gallery_items(results, show_heat),
            label,
            text,
            warn,
            table,
            str(service.write_csv(results)),
            results,
        )

    def on_select(results: list[FileResult], evt: gr.SelectData):
        shown = [r for r in results or [] if r.image is not None]
        if not shown:
            return None, "", ""
        picked = shown[min(evt.index, len(shown) - 1)]
        return _details(results, results.index(picked))

    tab.button.click(
        predict_batch,
        inputs=[tab.files, tab.heat],
        outputs=[tab.gallery, tab.label, tab.text, tab.warn, tab.table, tab.csv, tab.state],
        api_name="predict_batch",
    )
    tab.heat.change(
        lambda results, show: gallery_items(results or [], show),
        [tab.state, tab.heat],
        tab.gallery,
        api_visibility="private",
    )
    tab.gallery.select(on_select, tab.state, [tab.label, tab.text, tab.warn], api_visibility="private")


def _theme():
    # system fonts only: the default theme is local too, but this leaves nothing to fetch at all
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``"user:pass"`` or ``"u1:p1,u2:p2"`` -> Gradio ``auth`` list; empty/None -> no login."""
    if not value:
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{ENV_AUTH} must look like 'user:password[,user2:password2]'")
        pairs.append((user, password))
    return pairs


def launch_kwargs(host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """Arguments for ``demo.launch``: loopback unless told otherwise, offline, bounded uploads."""
    host = host or os.environ.get(ENV_HOST) or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = port or int(os.environ.get(ENV_PORT) or os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT)
    return {
        "server_name": host,
        "server_port": port,
        "auth": parse_auth(os.environ.get(ENV_AUTH)),
        "auth_message": "hfxray research demo: log in with the credentials from HFXRAY_AUTH",
        "share": False,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "show_error": False,  # errors are shown as our own one-line messages, never tracebacks
        "max_file_size": MAX_BYTES,
        "theme": _theme(),
        "footer_links": ["api"],
        "state_session_capacity": 256,  # bounds the memory that per-session results can hold
    }


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn_server(
    model: str | os.PathLike | None = None,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    log_path: str | os.PathLike | None = None,
    timeout: float = 180.0,
) -> tuple[subprocess.Popen, str]:
    """Start ``space/app.py``'s :func:`main` in a child process on loopback and wait until it serves.

    For tests and the load benchmark: the real app, real HTTP. Returns (process, url); the caller
    terminates the process. Its output goes to ``log_path`` (or is discarded).
    """
    port = port or free_port()
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    args = [sys.executable, "-c", "from hfxray.space_app import main; main()", "--host", DEFAULT_HOST]
    args += ["--port", str(port)] + (["--model", os.fspath(model)] if model is not None else [])
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(args, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            log.close()
    url = f"http://{DEFAULT_HOST}:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the Space exited with code {proc.returncode} before serving (see {log_path})"
            )
        try:
            with urllib.request.urlopen(f"{url}gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except urllib.error.HTTPError:  # e.g. 401 with HFXRAY_AUTH set: it is serving
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"the Space did not answer on {url} within {timeout:.0f}s")


def main(argv: Sequence[str] | None = None) -> None:
    """``python space/app.py [--model DIR_OR_HUB_ID] [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(
        description="hfxray Gradio Space (research software, not a diagnostic device)"
    )
    parser.add_argument(
        "--model", default=None, help=f"model dir or Hub id (default: ${ENV_MODEL} or the bundled model)"
    )
    parser.add_argument("--host", default=None, help=f"bind address (default: ${ENV_HOST} or {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=None, help=f"port (default: ${ENV_PORT} or {DEFAULT_PORT})"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio.analytics reads it per call
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(args.model)
    except ValueError as e:  # missing model dir, unknown Hub id offline: one line, no traceback
        parser.exit(2, f"hfxray space: {e}\n")
    demo.launch(**launch_kwargs(args.host, args.port))
