"""Model card and Hub upload for a saved hfxray model directory.

The card is generated from the directory's ``hfxray.json`` so that what the Hub shows is exactly what
training, calibration and the shortcut audit measured - and "not measured" where they did not run.
Nothing here decodes images or loads the model: it reads JSON and files only.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from hfxray import DISCLAIMER, __version__

NOT_MEASURED = "not measured"
METADATA_FILE = "hfxray.json"
CARD_FILE = "README.md"
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_TAGS = (
    "image-classification",
    "medical-imaging",
    "chest-x-ray",
    "covid-19",
    "research-only",
    "hfxray",
)
# Files that must never reach the Hub: temporary saves (interrupted writes), lock files, caches,
# Trainer checkpoints (they duplicate the weights and carry optimizer state).
PUSH_IGNORE_PATTERNS = (
    "*.tmp",
    "*.temp",
    "*.partial",
    "*.lock",
    "*.pyc",
    "tmp*",
    ".*",
    "**/.*",
    "__pycache__/*",
    "**/__pycache__/*",
    "checkpoint-*/*",
    "checkpoints/*",
    "runs/*",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``hfxray.json``; a missing file gives ``{}`` so the card still renders ("not measured")."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def update_metadata(model_dir: str | os.PathLike, **values: Any) -> Path:
    """Set top-level keys of ``hfxray.json`` (others kept), atomically: a crash leaves the old file."""
    path = Path(model_dir) / METADATA_FILE
    meta = read_metadata(model_dir)
    meta.update(values)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _num(value: Any) -> float | None:
    """A finite float or None - metadata written by other tools may hold strings or NaN."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(value: Any, digits: int = 3) -> str:
    f = _num(value)
    return NOT_MEASURED if f is None else f"{f:.{digits}f}"


def _fmt_ci(ci: Any, digits: int = 3) -> str:
    if isinstance(ci, dict):
        ci = (ci.get("lo", ci.get("low")), ci.get("hi", ci.get("high")))
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _num(ci[0]), _num(ci[1])
        if lo is not None and hi is not None:
            return f"[{lo:.{digits}f}, {hi:.{digits}f}]"
    return ""


def _with_ci(value: Any, ci: Any) -> str:
    text = _fmt(value)
    interval = _fmt_ci(ci)
    return f"{text} {interval}" if interval and text != NOT_MEASURED else text


def _is_hub_id(name: Any) -> bool:
    """Only real Hub ids belong in ``base_model`` metadata; local paths and pip-weight names do not."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _class_counts(training: dict[str, Any], classes: list[str]) -> dict[str, int]:
    """n per class: explicit ``per_class`` counts if recorded, else the first folder of each relpath."""
    explicit = training.get("per_class") or training.get("n_per_class")
    if isinstance(explicit, dict):
        return {str(k): int(v) for k, v in explicit.items() if _num(v) is not None}
    files = training.get("files")
    if not isinstance(files, dict) or not files:
        return {}
    counts = Counter(Path(str(rel)).parts[0] for rel in files.values() if Path(str(rel)).parts)
    order = [c for c in classes if c in counts] + sorted(c for c in counts if c not in classes)
    return {c: counts[c] for c in order}


def _validation_class_n(validation: dict[str, Any], classes: list[str]) -> dict[str, int]:
    explicit = validation.get("n_per_class")
    if isinstance(explicit, dict) and explicit:
        return {str(k): int(v) for k, v in explicit.items() if _num(v) is not None}
    per_class = validation.get("per_class") or {}
    out: dict[str, int] = {}
    for c in classes:
        info = per_class.get(c) if isinstance(per_class, dict) else None
        if isinstance(info, dict):
            for key in ("n", "support"):
                if _num(info.get(key)) is not None:
                    out[c] = int(info[key])
                    break
    cm = validation.get("confusion_matrix")
    if not out and isinstance(cm, list) and len(cm) == len(classes):
        try:
            out = {c: int(sum(row)) for c, row in zip(classes, cm, strict=True)}
        except TypeError:
            out = {}
    return out


def _eval_results(validation: dict[str, Any], dataset_name: str) -> list[EvalResult]:
    results = []
    for metric_type, key, name in (("accuracy", "accuracy", "Accuracy"), ("f1", "macro_f1", "Macro F1")):
        value = _num(validation.get(key))
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type="imagefolder",
                dataset_name=dataset_name,
                dataset_split="validation",
                metric_type=metric_type,
                metric_name=name,
                metric_value=round(value, 4),
                metric_config="macro" if key == "macro_f1" else None,
            )
        )
    return results


def build_card_data(
    model_dir: str | os.PathLike, meta: dict[str, Any] | None = None, *, repo_id: str | None = None
) -> ModelCardData:
    """Hub metadata (YAML header): library, task, license, tags, base model, model-index."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir) if meta is None else meta
    training = meta.get("training_data") if isinstance(meta.get("training_data"), dict) else {}
    validation = meta.get("validation") if isinstance(meta.get("validation"), dict) else {}
    # "covid19-xray/train" says more than "train": keep the parent folder when the leaf is a split name.
    parts = Path(str(training.get("dir") or "chest-x-ray imagefolder")).parts[-2:]
    dataset_name = "/".join(parts[-2:] if parts and parts[-1] in ("train", "training") else parts[-1:])
    evals = _eval_results(validation, dataset_name)
    base = meta.get("base_model")
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=str(meta.get("license") or DEFAULT_LICENSE),
        tags=list(DEFAULT_TAGS),
        base_model=base if _is_hub_id(base) else None,
        metrics=["accuracy", "f1"],
        model_name=(repo_id or model_dir.resolve().name or "hfxray-model") if evals else None,
        eval_results=evals or None,
    )


def _section_data(meta: dict[str, Any], classes: list[str]) -> list[str]:
    training = meta.get("training_data") if isinstance(meta.get("training_data"), dict) else {}
    lines = ["## Training data", ""]
    if not training:
        return [*lines, f"Training data provenance: {NOT_MEASURED} (no `training_data` in hfxray.json).", ""]
    n = training.get("n")
    lines.append(f"- Folder: `{training.get('dir', NOT_MEASURED)}`")
    lines.append(f"- Images: {n if n is not None else NOT_MEASURED}")
    counts = _class_counts(training, classes)
    if counts:
        lines.append("- Per class: " + ", ".join(f"{c}: {k}" for c, k in counts.items()))
    else:
        lines.append(f"- Per class: {NOT_MEASURED}")
    fp = training.get("fingerprint")
    lines.append(f"- Fingerprint (sha256 over sorted relative path + file sha256): `{fp or NOT_MEASURED}`")
    lines.append(
        "- The fingerprint and the per-file sha256 / perceptual hashes stored in `hfxray.json` let "
        "`scripts/audit.py` detect training images that reappear in an evaluation folder."
    )
    return [*lines, ""]


def _section_metrics(meta: dict[str, Any], classes: list[str]) -> list[str]:
    validation = meta.get("validation") if isinstance(meta.get("validation"), dict) else {}
    lines = ["## Validation results", ""]
    if not validation:
        return [*lines, f"Validation metrics: {NOT_MEASURED}.", ""]
    lines.append(
        "Held-out validation split of the training folder (duplicate groups kept on one side). "
        "Intervals are 95% (Wilson for proportions, bootstrap for AUROC). Because the validation "
        "images come from the same sources as the training images, these numbers are an upper bound, "
        "not evidence of performance at another hospital."
    )
    lines.append("")
    lines.append(f"- n: {validation.get('n', NOT_MEASURED)}")
    lines.append(f"- Accuracy: {_with_ci(validation.get('accuracy'), validation.get('accuracy_ci95'))}")
    lines.append(f"- Macro F1: {_with_ci(validation.get('macro_f1'), validation.get('macro_f1_ci95'))}")
    per_class = validation.get("per_class") if isinstance(validation.get("per_class"), dict) else {}
    n_by_class = _validation_class_n(validation, classes)
    names = classes or sorted(per_class)
    if names:
        lines += [
            "",
            "| class | n | sensitivity | specificity | PPV | F1 | AUROC |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in names:
            info = per_class.get(c) if isinstance(per_class.get(c), dict) else {}
            cells = [
                _with_ci(info.get(k), info.get(f"{k}_ci95"))
                for k in ("sensitivity", "specificity", "ppv", "f1", "auroc")
            ]
            lines.append(f"| {c} | {n_by_class.get(c, NOT_MEASURED)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _section_sources(meta: dict[str, Any]) -> list[str]:
    """Where the films came from (class x source), under which terms, and results per source."""
    lines: list[str] = []
    table = (meta.get("sources") or {}).get("train") if isinstance(meta.get("sources"), dict) else None
    if isinstance(table, dict) and table:
        sources = sorted({src for row in table.values() for src in row})
        lines += [
            "### Training films by class and source",
            "",
            "A class that comes from one source alone can be learned as that source; this table is the "
            "first thing to read about this model.",
            "",
            "| class | " + " | ".join(sources) + " |",
            "| --- | " + " | ".join("---" for _ in sources) + " |",
            *(f"| {c} | " + " | ".join(str(row.get(src, 0)) for src in sources) + " |" for c, row in table.items()),
            "",
        ]
    licences = meta.get("data_licences")
    if isinstance(licences, dict) and licences:
        lines += [
            "### Data licences",
            "",
            "The model saw films under these terms and inherits them: **research use only** (BIMCV-COVID19+ "
            "and CheXpert forbid commercial use and redistribution).",
            "",
            *(f"- `{src}`: {note}" for src, note in licences.items()),
            "",
        ]
    by_source = meta.get("validation_by_source")
    if isinstance(by_source, dict) and by_source:
        lines += [
            "### Validation split by source",
            "",
            "Same sources as training (films held out by patient and duplicate group): still an upper bound.",
            "",
            "| source | n | accuracy |",
            "| --- | --- | --- |",
            *(f"| {src} | {r.get('n')} | {_with_ci(r.get('accuracy'), r.get('accuracy_ci95'))} |"
              for src, r in by_source.items() if isinstance(r, dict)),
            "",
        ]
    loso = meta.get("leave_one_source_out")
    together = meta.get("leave_sources_out_together")
    if isinstance(loso, list) and loso:
        lines += _section_loso(
            [r for r in loso if isinstance(r, dict)],
            [r for r in together if isinstance(r, dict)] if isinstance(together, list) else None,
        )
    return lines


def _section_loso(rows: list[dict[str, Any]], together: list[dict[str, Any]] | None = None) -> list[str]:
    """The held-out-source table; with `benchmarks/loso.py`'s archive-copy measurement and threshold-free
    AUROC, a column for each; then the fold that holds every minor source out at once (`together`)."""
    copies = any(isinstance(r.get("archive_copy"), dict) for r in rows)
    aurocs = any(r.get("covid_auroc") is not None for r in rows)

    def copy_cell(r: dict[str, Any]) -> str:
        c = r.get("archive_copy")
        return _with_ci(c.get("changed_rate"), c.get("changed_ci95")) if isinstance(c, dict) else NOT_MEASURED

    def cells(r: dict[str, Any], keys: tuple[str, ...]) -> str:
        # "-": the held-out films include none of that kind (not a missing measurement)
        return " | ".join(_with_ci(r[k], r.get(f"{k}_ci95")) if r.get(k) is not None else "-" for k in keys)

    keys = ("accuracy", "covid_sensitivity", "covid_specificity", *(("covid_auroc",) if aurocs else ()))
    lines = [
        "## Held-out sources (leave-one-source-out)",
        "",
        "The honest proxy for films from another hospital: the same recipe trained *without* a source, "
        "then tested on it (`benchmarks/loso.py`). Wilson 95% intervals (bootstrap for AUROC).",
        "",
        "| held-out source | n | accuracy | called Covid (Covid films) | called not Covid (other films) |"
        + (" Covid AUROC (threshold-free) |" if aurocs else "")
        + (" class changed as a 224 px archive copy |" if copies else ""),
        "| --- | --- | --- | --- | --- |" + (" --- |" if aurocs else "") + (" --- |" if copies else ""),
        *(
            f"| {r.get('source')} (seed {r.get('seed')}) | {r.get('n')} | {cells(r, keys)}"
            + (f" | {copy_cell(r)}" if copies else "")
            + " |"
            for r in rows
        ),
        "",
    ]
    if copies:
        lines += [
            "Archive-copy column: the same held-out films re-saved the way a 224 px public archive stores "
            "films (grey, squashed to 224 x 224, Lanczos, JPEG 92), and how often their class changes. On "
            "films from a place it never saw, the answer can depend on the software that resized and saved "
            "the film as much as on the lungs.",
            "",
        ]
    if together:
        lines += [
            "### New hospitals: several sources held out at once",
            "",
            "The recipe trained without all of these sources together (the large archives kept, as for a "
            "hospital this model has never seen), then tested on all their films at once. The AUROC says how "
            "well P(Covid) ranks unseen Covid films above unseen others, wherever the decision line falls.",
            "",
            "| held out together | n | accuracy | called Covid (Covid films) | called not Covid (other films) "
            "| Covid AUROC (threshold-free) |",
            "| --- | --- | --- | --- | --- | --- |",
            *(
                f"| {', '.join(str(r.get('fold', '')).split('+'))} (seed {r.get('seed')}) | {r.get('n')} | "
                f"{cells(r, ('accuracy', 'covid_sensitivity', 'covid_specificity', 'covid_auroc'))} |"
                for r in together
            ),
            "",
        ]
    return lines


def _section_calibration(meta: dict[str, Any]) -> list[str]:
    temp = _num(meta.get("temperature"))
    lines = ["## Calibration", ""]
    if temp is None:
        lines.append(f"Temperature scaling: {NOT_MEASURED}; probabilities are the raw softmax outputs.")
    else:
        lines.append(
            f"Temperature scaling fitted on the validation split: T = {temp:.3f}, already folded into the "
            "classifier weights, so every consumer (pipeline, ONNX, Space) returns calibrated probabilities."
        )
    lines.append(
        f"- Expected calibration error (validation split) before: {_fmt(meta.get('ece_before'))}, "
        f"after: {_fmt(meta.get('ece_after'))}"
    )
    return [*lines, ""]


def _section_audit(meta: dict[str, Any]) -> list[str]:
    audit = meta.get("audit") if isinstance(meta.get("audit"), dict) else {}
    lines = ["## Shortcut audit", ""]
    if not audit:
        return [
            *lines,
            f"Shortcut audit: {NOT_MEASURED}. Run `python scripts/audit.py --data_dir DIR --model MODEL_DIR "
            "--output_dir OUT --write_to_model` to add it.",
            "",
        ]
    lines.append(
        f"- Shortcut risk: **{audit.get('shortcut_risk', NOT_MEASURED)}** "
        f"(audited on `{audit.get('data_dir', NOT_MEASURED)}`, n = {audit.get('n', NOT_MEASURED)})"
    )
    for reason in audit.get("reasons") or []:
        lines.append(f"  - {reason}")
    for key, label in (("border_only", "Border-only accuracy"), ("lungs_only", "Lungs-only accuracy")):
        part = audit.get(key) if isinstance(audit.get(key), dict) else {}
        if part:
            lines.append(
                f"- {label}: {_with_ci(part.get('accuracy'), part.get('ci95'))} "
                f"(chance {_fmt(part.get('chance'))})"
            )
    if _num(audit.get("max_flip_rate")) is not None:
        lines.append(
            f"- Largest prediction flip rate under downscaling / JPEG / intensity changes: "
            f"{_fmt(audit.get('max_flip_rate'))} ({audit.get('max_flip_transform', '')})"
        )
    if audit.get("leakage") is not None:
        lines.append(f"- Training images found again in the audit folder: {audit.get('leakage')}")
    return [*lines, ""]


def _orientation_line(gate: dict[str, Any]) -> list[str]:
    """The orientation check's bullet (gates fitted before it have none)."""
    orientation = gate.get("orientation") if isinstance(gate.get("orientation"), dict) else None
    if orientation is None:
        return []
    held = orientation.get("held_out") if isinstance(orientation.get("held_out"), dict) else {}

    def span(measure: str) -> str:
        shares = [r["share"] for r in held.values() if isinstance(r, dict) and r.get("measure") == measure]
        return f"{min(shares):.1%}-{max(shares):.1%}" if shares else NOT_MEASURED

    return [
        "- **A chest film on its side or upside down -> refused**, with that reason (turn it upright): a "
        "logistic regression on the 16 x 16 layout, fitted by turning the training films, comparing the film "
        f"as it is with its turned copies; threshold {_fmt(orientation.get('threshold'))}. Sources held out: "
        f"upright films accepted {span('accepted')}, turned films refused {span('refused')} (per group).",
    ]


def _section_gate(meta: dict[str, Any]) -> list[str]:
    """The input gate: what is refused, what is answered with a warning, and its held-out numbers."""
    gate = meta.get("gate") if isinstance(meta.get("gate"), dict) else {}
    lines = ["## Input gate", ""]
    if not gate:
        return [*lines, f"Input gate statistics: {NOT_MEASURED}; only the size and colour checks run.", ""]
    chest = gate.get("chest") if isinstance(gate.get("chest"), dict) else None
    if chest is None:
        return [
            *lines,
            f"Gate v1: one feature distance to the training images refuses above {_fmt(gate.get('threshold'))} "
            "(99th percentile of validation distances). It also refuses many ordinary films from other "
            "hospitals; refit with `scripts/fit_gate.py` for the two-question gate.",
            "",
        ]
    familiarity = gate.get("familiarity") if isinstance(gate.get("familiarity"), dict) else {}
    lines += [
        "Two questions, two answers (hfxray `Predictor`, `predict.py`, `evaluate.py` and the Space alike):",
        "",
        f"- **Not a frontal chest radiograph -> refused**, no class: a logistic regression on the model's "
        f"penultimate features and {len(chest.get('image_stats') or [])} image statistics, trained on "
        f"{gate.get('n_chest', NOT_MEASURED)} chest films against {gate.get('n_negative', NOT_MEASURED)} "
        f"other images (other body parts, CT, MRI, ultrasound, fundus, skin, histology, generated noise, "
        f"text, photos, blank/gradient/checkerboard images); threshold {_fmt(chest.get('threshold'))} "
        "chosen on held-out sources and kinds.",
        *_orientation_line(gate),
        f"- **Unlike the training films -> answered with a warning**: distance to the nearest training source "
        f"({', '.join(familiarity.get('sources') or []) or NOT_MEASURED}) above "
        f"{_fmt(familiarity.get('threshold'))}.",
        "",
    ]
    held = gate.get("held_out") if isinstance(gate.get("held_out"), dict) else {}
    if held:
        lines += [
            "Each group scored by a classifier fitted without it (threshold chosen on these scores; "
            "`benchmarks/gate_holdout.py` holds the threshold out too). Wilson 95% intervals.",
            "",
            "| held-out group | n | decision | share |",
            "| --- | --- | --- | --- |",
            *(
                f"| {g} | {r.get('n')} | {r.get('measure')} | {_with_ci(r.get('share'), r.get('ci95'))} |"
                for g, r in sorted(held.items())
                if isinstance(r, dict)
            ),
            "",
        ]
    return lines


def _input_format(model_dir: Path) -> str:
    """The processor's resize and JPEG step in words: a user of plain transformers must know that
    `AutoImageProcessor` reproduces the resize but not the JPEG save."""
    path = model_dir / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not config.get("jpeg_quality"):
        return ""
    return (
        f"; archive format: Lanczos, then saved once as a JPEG {config['jpeg_quality']}, in training and "
        "prediction alike. hfxray's `load_processor` applies the JPEG step; plain `AutoImageProcessor` "
        "loads the resize without it (see How to use)"
    )


def _usage_path(model_dir: Path) -> str:
    """How the card names a local model: relative to the repository when it lies inside (the bundled
    model reads ``hfxray/default_model`` whichever folder the card was written from), else as given."""
    repo = Path(__file__).resolve().parents[1]
    resolved = model_dir.resolve()
    return resolved.relative_to(repo).as_posix() if resolved.is_relative_to(repo) else str(model_dir)


def _usage_python(meta: dict[str, Any], usage_id: str, archive: bool) -> list[str]:
    """The card's pipeline lines. With the archive format the processor must be hfxray's: plain
    `pipeline(model=...)` drops the JPEG step and so feeds the model pixels it was not trained on."""
    lines = ["```python", "from transformers import pipeline"]
    if archive:
        lines += [
            "from hfxray.modeling import load_processor  # the processor with the archive format's JPEG step",
            "",
            f'classifier = pipeline("image-classification", model="{usage_id}", '
            f'image_processor=load_processor("{usage_id}"))',
        ]
    else:
        lines += ["", f'classifier = pipeline("image-classification", model="{usage_id}")']
    lines += ['print(classifier("chest_xray.png", top_k=None))  # calibrated probabilities for every class', "```", ""]
    if archive:
        measured = meta.get("plain_pipeline") or {}
        how_many = (
            f"{measured['class_changed']} of {measured['n']} films {measured.get('films', '')} ({_pct_ci(measured)}; "
            "`benchmarks/plain_pipeline.py` in the hfxray repository)"
            if measured.get("n")
            else "some films (not measured for this model: `benchmarks/plain_pipeline.py` in the hfxray repository)"
        )
        lines += [
            "Without `image_processor=`, transformers loads the resize but not the JPEG step (a film "
            f"already at the input size skips that step either way), and the predicted class changes on {how_many}.",
            "",
        ]
    return lines


def _pct_ci(measured: dict[str, Any]) -> str:
    lo, hi = measured["class_changed_ci95"]
    return f"{measured['class_changed'] / measured['n']:.1%}, 95% CI {lo:.1%}-{hi:.1%}"


def build_model_card(model_dir: str | os.PathLike, *, repo_id: str | None = None) -> ModelCard:
    """Model card generated from ``hfxray.json``; keys that are missing render as "not measured"."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    meta = read_metadata(model_dir)
    classes = [str(c) for c in meta.get("classes") or []]
    data = build_card_data(model_dir, meta, repo_id=repo_id)
    name = repo_id or model_dir.resolve().name
    usage_id = repo_id or _usage_path(model_dir)
    input_format = _input_format(model_dir)
    base = meta.get("base_model") or NOT_MEASURED
    body = [
        f"# {name}: chest X-ray classifier ({', '.join(classes) if classes else 'classes ' + NOT_MEASURED})",
        "",
        f"> **{DISCLAIMER}**",
        "",
        f"Fine-tuned from `{base}` with hfxray {meta.get('hfxray_version', __version__)}; "
        f"input size {meta.get('image_size', NOT_MEASURED)} px (squash resize of the whole film, no crop"
        f"{input_format}).",
        "",
        "## Intended use",
        "",
        "Research and education only: studying how image classifiers behave on chest radiographs, "
        "teaching, and testing software. This model is **NOT a diagnostic device**; it has not been "
        "validated clinically and must not be used for diagnosis, triage or treatment decisions. "
        "Every probability it returns should be read together with the limitations below.",
        "",
        *_section_data(meta, classes),
        *_section_sources(meta),
        *_section_metrics(meta, classes),
        *_section_calibration(meta),
        *_section_audit(meta),
        *_section_gate(meta),
        "## Limitations and known biases",
        "",
        "- Every class x source cell of the training data is listed above. Where a class comes from one "
        "source (or one population) only, a network can learn the source - resolution, sharpness, JPEG "
        "history, exposure, borders and text markers, patient age - instead of the lungs (DeGrave et al., "
        "Nature Machine Intelligence 2021; Roberts et al., Nature Machine Intelligence 2021). In-source "
        "validation numbers are an upper bound; the held-out-source table is the honest estimate.",
        "- **Viral Pneumonia is a children's class**: public adult films labelled viral (non-COVID) pneumonia "
        "hardly exist, so every Viral Pneumonia training film is a child's. An adult's viral pneumonia is "
        "outside what this model has seen, and 'child with opacity' may be what it learned.",
        "- There are no children with COVID-19 in the training data, and few adult normal films from outside "
        "the USA.",
        "- Labels are the sources' own (PCR-positive patients, report-mined 'No finding', a children's "
        "hospital's diagnosis); none was re-read by a radiologist.",
        "- Only frontal radiographs of three classes; any other finding, view or modality gets one of "
        "these three labels anyway unless the input gate abstains.",
        "",
        "## How to use",
        "",
        *_usage_python(meta, usage_id, archive=bool(input_format)),
        "Or with hfxray, which uses the same preprocessing and adds the input gate and the audit:",
        "",
        "```bash",
        f"python scripts/predict.py chest_xray.png --model {usage_id}",
        f"python scripts/audit.py --data_dir OTHER_HOSPITAL_DIR --model {usage_id} --output_dir audit/",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(model_dir: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write (or refresh) ``README.md`` in the model directory atomically and return its path."""
    card = build_model_card(model_dir, repo_id=repo_id)
    path = Path(model_dir) / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    card.save(tmp)
    os.replace(tmp, path)
    return path


def push_model_dir(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload hfxray model",
    endpoint: str | None = None,
) -> str:
    """Create the repo if needed, refresh the card, upload the directory; returns the commit URL.

    ``endpoint`` defaults to ``HF_ENDPOINT`` (huggingface_hub's own setting), which is how the tests
    point the upload at a local stand-in of the Hub.
    """
    from huggingface_hub import constants

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model directory (no config.json)")
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: unset it (HF_HUB_OFFLINE=0) to push to the Hub")
    write_model_card(model_dir, repo_id=repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(model_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=list(PUSH_IGNORE_PATTERNS),
    )
    return str(getattr(info, "commit_url", info))


__all__ = [
    "NOT_MEASURED",
    "PUSH_IGNORE_PATTERNS",
    "build_card_data",
    "build_model_card",
    "push_model_dir",
    "read_metadata",
    "write_model_card",
]
