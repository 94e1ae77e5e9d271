"""Prediction on images and files, through PyTorch or ONNX Runtime.

A :class:`Predictor` loads a saved model directory once (model or ONNX Runtime session, image
processor, class list) and is reused for every call: building an ``InferenceSession`` or loading
weights per request would dominate latency on a 2-core CPU. Both backends share one
preprocessing path (the directory's saved ``ViTImageProcessor``), so they see identical inputs.

Lean start: on the ONNX path this module imports neither torch, transformers nor datasets (they
cost seconds of start-up for a one-film run, and an inference-only install has none of them):
the model directory's JSON files are read directly and the processor is rebuilt by
:meth:`FastProcessor.from_config`. The transformers processor is loaded only when something asks
for :attr:`Predictor.processor` (the PyTorch backend, pipelines, unusual processors).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from hfxray.preprocessing import FastProcessor

logger = logging.getLogger(__name__)

ONNX_FILENAME = "model.onnx"
METADATA_FILENAME = "hfxray.json"
PROCESSOR_FILENAME = "preprocessor_config.json"
# = hfxray.modeling.DEFAULT_MODEL_DIR, repeated here so that finding it does not import torch
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
WEIGHTS_FILENAME = "model.safetensors"
# Key of the ONNX metadata_props entry holding the sha256 of the safetensors the graph came from.
ONNX_WEIGHTS_SHA_KEY = "hfxray_weights_sha256"

Backend = Literal["auto", "onnx", "torch"]
# Images per forward pass on the file path: ONNX Runtime's throughput on 2 cores peaks near 8 (the
# activations of a batch still fit the caches), and small batches keep the pipeline full.
DEFAULT_BATCH_SIZE = 8


@dataclass
class PredictionRow:
    """One file's outcome. ``error`` is set (and ``predicted`` is None) when the file could not be used;
    ``predicted`` is also None when the input gate abstained (``probs`` and ``warning`` are then set)."""

    path: str
    predicted: str | None
    probs: dict[str, float]
    error: str | None = None
    warning: str | None = None
    refused: str | None = None  # why the input is not a frontal chest film (then no class)

    @property
    def ok(self) -> bool:
        """The file was read and has probabilities."""
        return self.error is None

    @property
    def abstained(self) -> bool:
        """Read, but the input gate refused to name a class (reasons in ``refused``)."""
        return self.ok and self.predicted is None


@dataclass
class ImageAnalysis:
    """One image's answer with what a caller needs to explain it: the probabilities, the input gate's
    verdict, and the exact (3, S, S) pixel values the model saw (e.g. for a Grad-CAM heatmap)."""

    probs: np.ndarray  # (C,) float64, in Predictor.classes order
    gate: Any  # hfxray.gate.GateResult
    pixel_values: np.ndarray

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probs))


@dataclass
class _Prepared:
    """One file made ready for the model in a worker thread: decoded, resized, normalised."""

    pixels: np.ndarray | None = None  # (3, S, S) float32 pixel values
    checks: Any = None  # the input gate's ImageChecks (blocking, notes, image statistics)
    error: str | None = None


def physical_cores() -> int:
    """Physical cores usable by this process: hyper-threads only add contention to a compute-bound GEMM."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    try:
        import psutil  # optional: only psutil can tell physical from logical cores portably

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(physical, available))


def resolve_model_dir(model_dir_or_id: str | os.PathLike | None = None) -> Path:
    """Local directory for a model: a path as is, ``None`` -> the bundled model, else a Hub repo id
    (from the local cache when offline)."""
    if model_dir_or_id is None:
        model_dir_or_id = DEFAULT_MODEL_DIR
    path = Path(model_dir_or_id).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # the inference-only install: local directories only
        raise ValueError(
            f"model directory not found: {model_dir_or_id} (huggingface_hub is not installed to fetch Hub ids)"
        ) from None

    try:
        validate_repo_id(str(model_dir_or_id))
    except HFValidationError:
        raise ValueError(f"model directory not found: {model_dir_or_id}") from None
    if path.exists() or str(model_dir_or_id).startswith((".", "~")):
        raise ValueError(f"model directory not found: {model_dir_or_id}")

    try:
        return Path(snapshot_download(str(model_dir_or_id)))
    except Exception as e:  # offline + not cached, unknown repo, bad id: all one message for the user
        raise ValueError(
            f"model {model_dir_or_id!r} is not a local directory and could not be fetched from the Hub "
            f"or its cache ({type(e).__name__})"
        ) from e


def read_model_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    """``hfxray.json`` of a model directory, ``{}`` for plain Hugging Face models without one."""
    path = Path(model_dir) / METADATA_FILENAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _classes_from_config(model_dir: Path) -> list[str]:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] or list(config.get("label_names") or [])


def read_model_classes(model_dir: str | os.PathLike) -> list[str]:
    """Class names in label order: ``hfxray.json`` ``classes``, else config.json's labels (JSON only)."""
    model_dir = Path(model_dir)
    return list(read_model_metadata(model_dir).get("classes") or _classes_from_config(model_dir))


def _fast_processor_from_dir(model_dir: Path) -> FastProcessor | None:
    """FastProcessor from ``preprocessor_config.json`` (None when missing or not reproducible)."""
    path = model_dir / PROCESSOR_FILENAME
    if not path.is_file():
        return None
    return FastProcessor.from_config(json.loads(path.read_text(encoding="utf-8")))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 so that the probabilities written to a CSV sum to 1 to ~1e-15."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class Predictor:
    """Probabilities for chest X-rays from a saved model directory, with a PyTorch or ONNX Runtime backend.

    Thread count: for ONNX the session gets ``num_threads`` (default: physical cores) intra-op threads.
    PyTorch's thread count is process-global, so the torch backend leaves it alone unless
    ``num_threads`` is given, in which case it is set for the duration of each forward pass and
    restored afterwards (not safe against other threads changing it concurrently).
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        processor: Any,
        classes: list[str],
        image_size: int,
        backend: Literal["onnx", "torch"],
        session: Any = None,
        model: Any = None,
        num_threads: int | None = None,
        source: str | None = None,
        fast_processor: FastProcessor | None = None,
    ):
        if backend == "onnx" and session is None:
            raise ValueError("the onnx backend needs an onnxruntime InferenceSession")
        if backend == "torch" and model is None:
            raise ValueError("the torch backend needs a model")
        self.model_dir = Path(model_dir)
        self.source = source or str(model_dir)  # what the user asked for (a dir or a Hub id), for reports
        self._processor = processor  # None: loaded from model_dir on first use (see `processor`)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.backend = backend
        self.session = session
        self.model = model
        self.num_threads = num_threads
        self.metadata = read_model_metadata(self.model_dir)
        # the processor's exact computation without its per-call overhead (None: use the processor)
        if fast_processor is None and processor is None:
            raise ValueError("Predictor needs a processor or a fast_processor")
        self.fast_processor = fast_processor or FastProcessor.from_processor(processor)
        if session is not None:
            self._input_name = session.get_inputs()[0].name

    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_id: str | os.PathLike | None = None,
        backend: Backend = "auto",
        num_threads: int | None = None,
    ) -> Predictor:
        """Load once. ``backend="auto"`` uses ``model.onnx`` when present and made from the current
        weights, PyTorch otherwise."""
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        model_dir = resolve_model_dir(model_dir_or_id)
        onnx_path = model_dir / ONNX_FILENAME
        if backend == "onnx" and not onnx_path.is_file():
            raise ValueError(f"no {ONNX_FILENAME} in {model_dir}; run scripts/export_onnx.py first")
        chosen: Literal["onnx", "torch"] = "onnx" if backend == "onnx" else "torch"
        session = model = None
        if backend in ("auto", "onnx") and onnx_path.is_file():
            session = cls._make_session(onnx_path, num_threads)
            stale = _onnx_is_stale(session, model_dir)
            if stale and backend == "onnx":
                raise ValueError(
                    f"{onnx_path} was exported from other weights; re-run scripts/export_onnx.py"
                )
            if stale:
                logger.warning("%s is stale (exported from other weights); using PyTorch", onnx_path)
                session = None
            else:
                chosen = "onnx"

        processor: Any = None
        fast = None
        if chosen == "torch":
            from hfxray.modeling import load_model

            model, processor = load_model(model_dir)
            model.eval()
        else:
            # Lean start: the processor's arithmetic from its JSON, without importing transformers.
            fast = _fast_processor_from_dir(model_dir)
            if fast is None:
                from hfxray.modeling import load_processor

                # The loader modeling.load_model uses: the PIL processor is the reference preprocessing.
                processor = load_processor(model_dir)

        metadata = read_model_metadata(model_dir)
        classes = metadata.get("classes") or _classes_from_config(model_dir)
        image_size = metadata.get("image_size") or (
            fast.size if fast is not None else processor_image_size(processor)
        )
        predictor = cls(
            model_dir=model_dir,
            processor=processor,
            classes=classes,
            image_size=image_size,
            backend=chosen,
            session=session,
            model=model,
            num_threads=num_threads,
            source=str(model_dir if model_dir_or_id is None else model_dir_or_id),
            fast_processor=fast,
        )
        predictor._check_num_classes()
        return predictor

    @staticmethod
    def _make_session(onnx_path: Path, num_threads: int | None, spinning: bool = True) -> Any:
        """``spinning``: let ORT's threads busy-wait between operators (lowest latency for one image)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or physical_cores()
        options.inter_op_num_threads = 1  # one sequential graph: inter-op threads would only idle
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])

    @property
    def processor(self) -> Any:
        """The directory's transformers image processor (PIL backend), loaded on first use: the lean
        ONNX path never needs it."""
        if self._processor is None:
            from hfxray.modeling import load_processor

            self._processor = load_processor(self.model_dir)
        return self._processor

    @property
    def film_format(self) -> dict[str, Any]:
        """``image_size``/``resample``/``jpeg_quality`` of this model's input, as
        `hfxray.data.load_image_folder` takes them: a dataset loaded so holds the pixels prediction makes."""
        fast = self.fast_processor
        if fast is not None:
            return {"image_size": fast.size, "resample": fast.resample, "jpeg_quality": fast.jpeg_quality}
        processor = self.processor
        return {
            "image_size": self.image_size,
            "resample": int(getattr(processor, "resample", 2)),
            "jpeg_quality": getattr(processor, "jpeg_quality", None) or None,
        }

    def _check_num_classes(self) -> None:
        probe = np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32)
        if self.backend == "onnx":
            shape = self.session.get_outputs()[0].shape
            n = shape[-1] if isinstance(shape[-1], int) else self._forward(probe)[0].shape[-1]
        else:
            n = self.model.config.num_labels
        if n != len(self.classes):
            raise ValueError(f"model in {self.model_dir} has {n} outputs but {len(self.classes)} classes")

    # ---------------------------------------------------------------- core
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3, S, S) float32 pixel values of the saved image processor (identical for both backends)."""
        if self.fast_processor is not None:
            return self.fast_processor(images)
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return np.asarray(self.processor(images=rgb, return_tensors="np")["pixel_values"], dtype=np.float32)

    def _prepare_image(self, image: Image.Image) -> _Prepared:
        """Pixel values and the gate's image checks, from one resize when the processor allows it.
        Only the (3, S, S) array is kept, so a batch in flight holds no full-size images."""
        if self.fast_processor is not None:
            small = self.fast_processor.resize(image)
            pixels = self.fast_processor.to_array(small)
        else:
            small, pixels = None, self.preprocess([image])[0]
        return _Prepared(pixels=pixels, checks=self.gate.image_checks(image, small))

    def _prepare_path(self, path: str | bytes) -> _Prepared:
        """Decode and prepare one file (a path or its bytes); runs in worker threads (PIL releases the
        GIL while it works)."""
        image, error = self._decode_one(path)
        return _Prepared(error=error) if image is None else self._prepare_image(image)

    @functools.cached_property
    def _pipelined_session(self) -> Any:
        """The session for :meth:`predict_paths` over several files: the same graph without busy-waiting.

        A spinning ORT thread keeps its core while it waits for the next operator - good for one
        image's latency (about 0.8 ms on 2 cores), bad when decoding threads need that core: there,
        spinning cost 15-20 % of the throughput. ORT sets this per session, hence a second one,
        built on the first multi-file call (about 15 MB).
        """
        onnx_path = self.model_dir / ONNX_FILENAME
        if self.backend != "onnx" or not onnx_path.is_file():
            return self.session
        return self._make_session(onnx_path, self.num_threads, spinning=False)

    def _forward(self, pixel_values: np.ndarray, session: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, penultimate features or None) from one forward pass; the features feed the input gate."""
        if self.backend == "onnx":
            outputs = (session or self.session).run(None, {self._input_name: pixel_values})
            return outputs[0], (outputs[1] if len(outputs) > 1 else None)  # older exports: logits only
        import torch

        from hfxray.modeling import classifier_module

        captured: list[torch.Tensor] = []
        try:
            handle = classifier_module(self.model).register_forward_pre_hook(
                lambda _m, inputs: captured.append(inputs[0].flatten(1))
            )
        except TypeError:  # no plain Linear head: no features, the gate skips its feature check
            handle = None
        try:
            with self._torch_threads(), torch.inference_mode():
                logits = self.model(pixel_values=torch.from_numpy(pixel_values)).logits
        finally:
            if handle is not None:
                handle.remove()
        features = captured[-1].float().numpy() if captured else None
        return logits.float().numpy(), features

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        if self.num_threads is None:
            yield
            return
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def predict_pixel_values(self, pixel_values: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Logits (n, C) float32 for already-preprocessed inputs, in batches."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        out = np.empty((len(pixel_values), len(self.classes)), dtype=np.float32)
        for sl in _batches(len(pixel_values), batch_size):
            out[sl] = self._forward(pixel_values[sl])[0]
        return out

    def features_pixel_values(self, pixel_values: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(n, D) float32 penultimate features of already-preprocessed inputs, in batches: what the input
        gate reads, and what frozen-feature probes (benchmarks) fit on. ValueError when the model gives
        none (an ONNX export older than the gate, or a head that is not one Linear layer)."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        out = []
        for sl in _batches(len(pixel_values), batch_size):
            features = self._forward(pixel_values[sl])[1]
            if features is None:
                raise ValueError(f"the model in {self.model_dir} gives no penultimate features; re-export model.onnx")
            out.append(np.asarray(features, dtype=np.float32))
        return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)

    def predict_logits(self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Logits (n, C) float32; for calibration and audits, which need the pre-softmax values."""
        images = list(images)
        out = np.empty((len(images), len(self.classes)), dtype=np.float32)
        for sl in _batches(len(images), batch_size):
            out[sl] = self._forward(self.preprocess(images[sl]))[0]
        return out

    def predict_images(self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities (n, C) float64, columns in ``self.classes`` order, rows summing to 1."""
        return softmax(self.predict_logits(images, batch_size=batch_size))

    # ---------------------------------------------------------------- input gate
    @functools.cached_property
    def gate(self) -> Any:
        """The model directory's :class:`hfxray.gate.InputGate` (colour/size checks; feature distance
        when ``hfxray.json`` has gate statistics), built once."""
        from hfxray.gate import InputGate

        return InputGate(
            # image_size is all the gate needs of the processor here (model=None: features come from us)
            self.metadata.get("gate"), model=None, processor=None, image_size=self.image_size
        )

    def _infer(self, prepared: Sequence[_Prepared], session: Any = None) -> tuple[np.ndarray, list[Any]]:
        """Probabilities (n, C) and the gate's verdicts of prepared images, from one forward pass."""
        logits, features = self._forward(np.stack([p.pixels for p in prepared]), session)
        verdicts = [
            self.gate.check(None, features=None if features is None else features[i], image_checks=p.checks)
            for i, p in enumerate(prepared)
        ]
        self._recheck_turned(prepared, verdicts, session)
        return softmax(logits), verdicts

    def _recheck_turned(self, prepared: Sequence[_Prepared], verdicts: list[Any], session: Any) -> None:
        """Inputs refused as "not a chest film" that look turned get one more forward pass, turned back:
        when that is a chest film the refusal says "turn it upright" instead (rare: only such inputs)."""
        from hfxray.gate import turn, turned_stats

        again = [i for i, v in enumerate(verdicts) if self.gate.needs_turned_check(v)]
        if not again:
            return
        pixels = np.stack([np.ascontiguousarray(turn(prepared[i].pixels, verdicts[i].turn_back)) for i in again])
        _, features = self._forward(pixels, session)
        if features is None:
            return
        for row, i in enumerate(again):
            stats = turned_stats(prepared[i].checks.stats, verdicts[i].turn_back)
            self.gate.confirm_turned(verdicts[i], features[row], stats)

    def gate_inputs(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[Any]]:
        """(n, D) penultimate features and the gate's image checks (with statistics) of decoded images,
        from this predictor's own preprocessing and forward pass: what the input gate is fitted on."""
        prepared = [self._prepare_image(im) for im in images]
        features = self.features_pixel_values(np.stack([p.pixels for p in prepared]), batch_size=len(prepared))
        return features, [p.checks for p in prepared]

    def predict_images_gated(
        self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray, list[str | None] | None]:
        """Probabilities (as :meth:`predict_images`) and, per image, the gate's reasons to refuse (None
        when it answers), from one forward pass per batch. The list is None when the model has no
        gate statistics (then only the generic checks could run, see ``predict_paths``)."""
        images = list(images)
        probs = np.empty((len(images), len(self.classes)), dtype=np.float64)
        warnings: list[str | None] = []
        for sl in _batches(len(images), batch_size):
            probs[sl], verdicts = self._infer([self._prepare_image(im) for im in images[sl]])
            warnings += [r.refused for r in verdicts]
        return probs, (warnings if self.metadata.get("gate") else None)

    def analyse_image(self, image: Image.Image) -> ImageAnalysis:
        """Probabilities, gate verdict and pixel values of one decoded image, from one forward pass of
        this predictor's backend (ONNX Runtime when the directory has ``model.onnx``)."""
        prepared = self._prepare_image(image)
        probs, (verdict,) = self._infer([prepared])
        return ImageAnalysis(probs=probs[0], gate=verdict, pixel_values=prepared.pixels)

    # ---------------------------------------------------------------- files
    def _decode_one(self, path: str | bytes) -> tuple[Image.Image | None, str | None]:
        """(image reduced for the model's input size | None, error)."""
        from hfxray.images import ImageReadError, load_image

        try:
            return load_image(path, draft_size=self.image_size, grey=True), None
        except ImageReadError as e:
            return None, str(e)
        except OSError as e:  # missing file, permission denied: report, keep going
            return None, f"cannot read {path if isinstance(path, str) else 'the image'}: {e.strerror or e}"

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[PredictionRow]:
        """One row per path, in input order (a list of :meth:`iter_predict_paths`)."""
        return list(self.iter_predict_paths(paths, batch_size, num_workers, progress))

    def iter_predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[PredictionRow]:
        """Rows one by one, in input order, as they are done. Unreadable files give a row with
        ``error``; the run goes on.

        Worker threads decode, resize and normalise files (PIL and numpy release the GIL) while the
        model runs on the previous batch; at most two batches are prepared ahead and nothing is kept
        once yielded, so memory stays flat on any number of files (``paths`` may be a lazy iterable).
        ``progress`` is called with the number of files finished after each batch.
        """
        return self.iter_predict_sources(((str(p), str(p)) for p in paths), batch_size, num_workers, progress)

    def iter_predict_sources(
        self,
        items: Iterable[tuple[str, str | bytes]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[PredictionRow]:
        """As :meth:`iter_predict_paths` for ``(name, file path or encoded bytes)`` pairs (e.g. a
        ``datasets`` image column); rows carry ``name`` as their ``path``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self._iter_rows(iter(items), batch_size, num_workers, progress)

    def _iter_rows(
        self,
        items: Iterator[tuple[str, str | bytes]],
        batch_size: int,
        num_workers: int | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[PredictionRow]:
        head = list(islice(items, 2))
        if len(head) == 1:  # a single file (the Space, a doctor's one-off): a pool would cost more than it saves
            name, source = head[0]
            yield from self._rows([name], [self._prepare_path(source)], self.session)
            if progress is not None:
                progress(1)
            return
        if not head:
            return
        items = chain(head, items)
        workers = num_workers or physical_cores()  # the model's threads take turns with these
        _ = self.gate  # built once here, not raced for by the worker threads
        session = self._pipelined_session
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            pending = deque((n, pool.submit(self._prepare_path, s)) for n, s in islice(items, 2 * batch_size))
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                prepared = [future.result() for _, future in chunk]
                # refill what was taken, keeping two batches in flight
                pending.extend((n, pool.submit(self._prepare_path, s)) for n, s in islice(items, len(chunk)))
                yield from self._rows([n for n, _ in chunk], prepared, session)
                if progress is not None:
                    progress(len(chunk))
        finally:  # also on Ctrl-C or a consumer that stops early: drop what was queued
            pool.shutdown(wait=True, cancel_futures=True)

    def _rows(self, paths: Sequence[str], prepared: Sequence[_Prepared], session: Any) -> list[PredictionRow]:
        """One forward pass over the readable files of a batch, then the gate, then a row per file."""
        good = [i for i, p in enumerate(prepared) if p.error is None]
        done: dict[int, PredictionRow] = {}
        if good:
            probs, verdicts = self._infer([prepared[i] for i in good], session)
            for i, p, verdict in zip(good, probs, verdicts, strict=True):
                done[i] = PredictionRow(
                    path=paths[i],
                    # refused (not a frontal chest film): no class, but the probabilities stay visible;
                    # an unfamiliar film is answered, with the warning
                    predicted=self.classes[int(np.argmax(p))] if verdict.ok else None,
                    probs={c: float(v) for c, v in zip(self.classes, p, strict=True)},
                    warning=verdict.warning,
                    refused=verdict.refused,
                )
        return [
            done.get(i) or PredictionRow(path=path, predicted=None, probs={}, error=p.error)
            for i, (path, p) in enumerate(zip(paths, prepared, strict=True))
        ]

    # ---------------------------------------------------------------- interop
    def as_pipeline(self, **kwargs: Any) -> Any:
        """A ``transformers`` image-classification pipeline over the same (torch) model and processor.

        For the onnx backend the PyTorch weights are loaded from the same directory on demand.
        """
        from transformers import pipeline

        model = self.model
        if model is None:
            from hfxray.modeling import load_model

            model, _ = load_model(self.model_dir)
            model.eval()
        return pipeline("image-classification", model=model, image_processor=self.processor, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Predictor(model_dir={str(self.model_dir)!r}, backend={self.backend!r}, classes={self.classes})"
        )


def processor_image_size(processor: Any) -> int:
    """S of the processor's S x S output."""
    size = processor.size
    size = size if isinstance(size, dict) else vars(size)
    return int(size.get("height") or size.get("shortest_edge"))


def _onnx_is_stale(session: Any, model_dir: Path) -> bool:
    """True when model.onnx records the sha256 of weights that are no longer the directory's weights."""
    recorded = session.get_modelmeta().custom_metadata_map.get(ONNX_WEIGHTS_SHA_KEY)
    weights = model_dir / WEIGHTS_FILENAME
    if not recorded or not weights.is_file():
        return False  # exported elsewhere or ONNX-only directory: nothing to compare against
    from hfxray.images import file_sha256

    return recorded != file_sha256(weights)


def collect_image_paths(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], int]:
    """Expand files and folders into the list of files to predict, plus the number of files skipped.

    Folders are searched recursively for :data:`hfxray.images.SUPPORTED_EXTENSIONS` (other files are
    skipped and counted). Files named explicitly are always kept, whatever their extension - the
    decoder trusts content, not names - and so are missing ones, so that every argument the user
    gave appears in the output (as an error row if it cannot be read).
    """
    from hfxray.images import is_supported_path

    seen: set[str] = set()
    paths: list[str] = []
    skipped = 0
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            found = sorted(p for p in root.rglob("*") if p.is_file())
            for p in found:
                if not is_supported_path(p):
                    skipped += 1
                elif str(p) not in seen:
                    seen.add(str(p))
                    paths.append(str(p))
        elif str(root) not in seen:
            seen.add(str(root))
            paths.append(str(root))
    return paths, skipped


def write_predictions_csv(
    rows: Iterable[PredictionRow],
    classes: Sequence[str],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """``path,predicted,prob_<class>...,refused,warning,error`` (:mod:`hfxray.prediction_csv`: cells
    safe for spreadsheets); atomic, and never replaces a file unless asked.

    Probabilities are written with 10 significant digits, so each row still sums to 1 within 1e-9.
    """
    from hfxray.prediction_csv import write_csv

    return write_csv(rows, classes, output, overwrite=overwrite)
