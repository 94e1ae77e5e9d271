"""Image folders -> `datasets` Dataset: layout checks, one cached decode per file, metadata columns.

The layout is the one `imagefolder` reads: ``DATA_DIR/<class>/<image>``; the class names are the
folder names (a `ClassLabel`, sorted). Every file is decoded exactly once, by
`hfxray.images.load_image`, squash-resized to the model's ``S x S`` with PIL bilinear (what the
model's `ViTImageProcessor` does) and cached by `datasets`, so a second run is instant and the
cached image gives the same pixel values as the original file would at evaluation time.
A film's provenance (``source``, ``population``, ``view``, ``patient_id``) comes from the folder's
``metadata.csv`` and travels as columns.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from hfxray.data.duplicates import image_phash
from hfxray.images import SUPPORTED_EXTENSIONS, file_sha256, load_image
from hfxray.preprocessing import square_resize

BILINEAR = int(Image.Resampling.BILINEAR)  # the processor's default filter (ViTImageProcessor's)

logger = logging.getLogger(__name__)


NOT_AN_IMAGE_REASON = "not an image type hfxray reads"


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be used, with a one-line human reason (shown to the user, logged)."""

    path: str
    reason: str


# --------------------------------------------------------------------------------------------
# folder scanning and loading
# --------------------------------------------------------------------------------------------
def _is_hidden(name: str) -> bool:
    # imagefolder skips these too (.DS_Store, __MACOSX, ...).
    return name.startswith(".") or name.startswith("__")


@dataclass
class _FolderScan:
    classes: list[str]
    dicom: list[tuple[str, str]]  # (absolute path, class)
    unsupported: list[BadFile]
    n_imagefolder: int  # files that imagefolder itself lists


def _scan_folder(data_dir: Path, min_classes: int = 2) -> _FolderScan:
    """Check the ``DATA_DIR/<class>/<file>`` layout before `imagefolder` sees it.

    `imagefolder` would silently drop the labels of a flat folder, label nested files by their
    sub-folder and ignore empty classes; each of those is a user mistake worth a clear error.
    """
    if not data_dir.exists():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if not data_dir.is_dir():
        raise NotADirectoryError(f"not a folder: {data_dir}")
    entries = sorted(p for p in data_dir.iterdir() if not _is_hidden(p.name))
    class_dirs = [p for p in entries if p.is_dir()]
    top_images = [p.name for p in entries if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS]
    layout = "expected DATA_DIR/<class>/<image files>"
    if not class_dirs:
        if top_images:
            raise ValueError(f"{data_dir} is a flat folder of images without class sub-folders ({layout})")
        raise ValueError(f"no class folders in {data_dir} ({layout})")
    if top_images:
        raise ValueError(
            f"{len(top_images)} image file(s) directly in {data_dir} (e.g. {top_images[0]}), "
            f"not inside a class folder ({layout})"
        )
    if len(class_dirs) < min_classes:
        raise ValueError(f"only one class folder ({class_dirs[0].name}) in {data_dir}; need at least two")

    dicom: list[tuple[str, str]] = []
    unsupported: list[BadFile] = []
    imagefolder_exts = _imagefolder_extensions()
    n_imagefolder = 0
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if not _is_hidden(p.name))
        nested = [p for p in files if p.is_dir()]
        if nested:
            raise ValueError(f"nested folder {nested[0]} inside class folder {class_dir.name} ({layout})")
        if not files:
            raise ValueError(f"class folder {class_dir} is empty")
        for p in files:
            ext = p.suffix.lower()
            n_imagefolder += ext in imagefolder_exts
            if ext == ".dcm":
                dicom.append((str(p.resolve()), class_dir.name))
            elif ext not in SUPPORTED_EXTENSIONS:
                unsupported.append(BadFile(str(p.resolve()), NOT_AN_IMAGE_REASON))
    return _FolderScan([p.name for p in class_dirs], dicom, unsupported, n_imagefolder)


def _decode_example(
    example: dict[str, Any],
    *,
    image_size: int,
    resample: int,
    jpeg_quality: int | None,
    hfxray_version: str,
    metadata: dict[str, dict[str, str]],
    defaults: dict[str, str],
    classes: list[str],
) -> dict[str, Any]:
    """`.map` body: decode once, squash-resize to S x S, hash. Errors become a reason string.

    `hfxray_version` is unused here; it is an argument so that it enters the `datasets`
    fingerprint and a new hfxray release (maybe a different decoder) re-decodes the cache.
    """
    del hfxray_version
    path = str(Path(example["image"]["path"]).resolve())
    out: dict[str, Any] = {"image": None, "path": path, "sha256": "", "phash": "", "phash16": "", "error": ""}
    out.update(defaults)
    out.update(metadata.get(path, {}))
    # The folder is the class. Set here because imagefolder (datasets 5) leaves the label empty
    # whenever the folder also holds a metadata.csv.
    out["label"] = classes.index(Path(path).parent.name)
    if Path(path).suffix.lower() not in SUPPORTED_EXTENSIONS:
        out["error"] = NOT_AN_IMAGE_REASON
        return out
    try:
        out["sha256"] = file_sha256(path)
        image = load_image(path, draft_size=image_size)
        out["phash"] = image_phash(image)
        out["phash16"] = image_phash(image, 16)
        # Exactly the model processor's resize (square_resize: PIL, squash, the archive format's
        # JPEG step if any): the processor's own resize of this S x S image is then the identity.
        out["image"] = square_resize(image, image_size, resample, jpeg_quality).convert("RGB")
    except Exception as e:  # noqa: BLE001 - every failure is reported as a BadFile, never raised
        reason = " ".join(str(e).split()) or type(e).__name__
        out["error"] = reason
    return out


# Per-film provenance read from an imagefolder `metadata.csv` (other columns there are ignored).
# A folder without metadata gets its own name as `source` and these defaults for the rest.
METADATA_COLUMNS = ("source", "population", "view", "patient_id")
UNKNOWN = "unknown"
# Folder names that say which split a folder is, not where its films come from.
_SPLIT_FOLDER_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "eval"}


def data_root(data_dirs: Sequence[str | os.PathLike]) -> str:
    """The folder that hfxray.json paths are relative to: the one folder, or the common parent of several."""
    dirs = [str(Path(d).expanduser().resolve()) for d in data_dirs]
    return dirs[0] if len(dirs) == 1 else os.path.commonpath(dirs)


def default_source_name(data_dir: str | os.PathLike) -> str:
    """The ``source`` of a folder without metadata: its name, or its parent's for ``.../train`` and alike."""
    path = Path(data_dir).expanduser().resolve()
    return path.parent.name if path.name.lower() in _SPLIT_FOLDER_NAMES and path.parent.name else path.name


def source_licences(data_dirs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{source: licence note}`` from the folders' ``metadata.csv`` (column ``license_note``).

    What a model card must say about the data a model saw (research-use terms travel with the
    model). A folder without the column gets a note pointing to its own README.
    """
    import datasets

    out: dict[str, str] = {}
    for d in data_dirs:
        folder = Path(d).expanduser().resolve()
        table = folder / "metadata.csv"
        notes: dict[str, set[str]] = {}
        if table.is_file():
            meta = datasets.load_dataset("csv", data_files=str(table), split="train", keep_default_na=False)
            if {"source", "license_note"} <= set(meta.column_names):
                for src, note in zip(meta["source"], meta["license_note"], strict=True):
                    notes.setdefault(str(src), set()).add(str(note).strip())
        if not notes:
            notes[default_source_name(folder)] = {f"not recorded per film: see the README / licence of {default_source_name(folder)}"}
        for src, values in notes.items():
            out[src] = "; ".join(sorted(v for v in values if v)) or "not recorded"
    return dict(sorted(out.items()))


def read_metadata_table(data_dir: Path) -> dict[str, dict[str, str]] | None:
    """``metadata.csv`` rows keyed by the absolute file path, through `datasets` (imagefolder convention).

    Read with the ``csv`` builder rather than imagefolder itself: imagefolder with metadata drops the
    folder labels and fails on files the table does not list; here the folder stays the class and an
    unlisted file simply keeps the folder defaults.
    """
    import datasets

    table = data_dir / "metadata.csv"
    if not table.is_file():
        return None
    try:
        meta = datasets.load_dataset("csv", data_files=str(table), split="train", keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - a broken table is a one-line user error
        raise ValueError(f"cannot read {table}: {' '.join(str(err).split())[:200]}") from None
    if "file_name" not in meta.column_names:
        raise ValueError(f"{table} has no file_name column (imagefolder metadata convention)")
    rows: dict[str, dict[str, str]] = {}
    columns = {c: list(meta[c]) for c in METADATA_COLUMNS if c in meta.column_names}
    repeated: Counter[str] = Counter()
    for i, name in enumerate(meta["file_name"]):
        values = {c: str(v[i]).strip() for c, v in columns.items() if v[i] is not None and str(v[i]).strip()}
        key = str((data_dir / str(name)).resolve())
        if key in rows:
            repeated[str(name)] += 1
        rows[key] = values
    if repeated:
        # Seen in the shared corpus: 26 CheXpert rows name one file, so 25 films were lost when it
        # was written. The table cannot say which row the file is; the last one wins.
        name, n = repeated.most_common(1)[0]
        logger.warning(
            "%s lists %d file name(s) more than once (e.g. %s, %d times): those rows describe one file",
            table,
            len(repeated),
            name,
            n + 1,
        )
    return rows


def _metadata_defaults(data_dir: Path) -> dict[str, str]:
    return {"source": default_source_name(data_dir), "population": UNKNOWN, "view": UNKNOWN, "patient_id": ""}


def load_image_folder(
    data_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_size: int,
    num_proc: int | None = None,
    resample: int = BILINEAR,
    jpeg_quality: int | None = None,
) -> tuple[Any, list[BadFile]]:
    """Load one or several ``DATA_DIR/<class>/<image>`` folders as one `datasets.Dataset`.

    Columns: ``image`` (PIL RGB, S x S), ``label`` (ClassLabel: the sorted union of the folders'
    class names), ``path`` (absolute), ``sha256`` (file bytes), ``phash``/``phash16`` (64/256-bit
    perceptual hashes, hex), and the film's provenance ``source``, ``population``, ``view``,
    ``patient_id`` from the folder's ``metadata.csv`` (imagefolder convention); a folder without
    one gets its name as ``source`` (`default_source_name`), ``unknown`` and an empty patient.
    Returns the dataset plus the files that were dropped (`BadFile`s; the caller warns and goes on).
    ``resample`` (a PIL filter) and ``jpeg_quality`` are the model processor's input format
    (`hfxray.modeling.film_format`); the cache is kept per format.
    """
    import datasets

    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    if not dirs:
        raise ValueError("no data folder given")
    resolved = [Path(d).expanduser().resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the same data folder was given twice")
    # With several folders, one may hold a single class (an external archive of normal films);
    # the union must still have two.
    min_classes = 2 if len(resolved) == 1 else 1
    fmt = {"image_size": image_size, "resample": int(resample), "jpeg_quality": jpeg_quality or None}
    loaded = [_load_one_folder(d, **fmt, num_proc=num_proc, min_classes=min_classes) for d in resolved]
    classes = sorted({c for ds, _ in loaded for c in ds.features["label"].names})
    if len(classes) < 2:
        raise ValueError(f"only one class ({classes[0]}) in {', '.join(map(str, resolved))}; need at least two")
    parts = []
    bad_files: list[BadFile] = []
    for ds, bad in loaded:
        names = ds.features["label"].names
        if names != classes:  # re-index this folder's labels into the union of classes
            mapping = [classes.index(n) for n in names]
            ds = ds.cast_column("label", datasets.Value("int64"))
            ds = ds.map(_relabel, batched=True, fn_kwargs={"mapping": mapping}, desc="Relabelling")
            ds = ds.cast_column("label", datasets.ClassLabel(names=classes))
        parts.append(ds)
        bad_files.extend(bad)
    merged = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return merged, sorted(bad_files, key=lambda b: b.path)


def _relabel(batch: dict[str, list], mapping: list[int]) -> dict[str, list]:
    return {"label": [mapping[v] for v in batch["label"]]}


def _load_one_folder(
    data_dir: Path,
    *,
    image_size: int,
    resample: int,
    jpeg_quality: int | None,
    num_proc: int | None,
    min_classes: int = 2,
) -> tuple[Any, list[BadFile]]:
    """One folder: `imagefolder` lists the files, one cached `.map` decodes each file once.

    The image column is cast to ``Image(decode=False)`` so that a corrupt file cannot crash loading;
    one `.map` decodes each file with `load_image` and is cached by `datasets` fingerprinting.
    `imagefolder` does not know ``.dcm``, so DICOM files found in the class folders are appended
    with `Dataset.from_dict` + `concatenate_datasets` (same features). Metadata columns are joined
    in the same `.map` from ``metadata.csv`` (read by `read_metadata_table`).

    ``num_proc=None`` decodes in this process. Measured on the 2-core box with the 251 shared
    radiographs (JPEG draft decoding keeps most files cheap, ~40 ms each): one process 8-12 s,
    ``num_proc=2`` 11-14 s, because the fork/IPC overhead and the other processes sharing the
    cores eat the gain. Pass ``num_proc`` for large folders on an otherwise idle machine.
    """
    from hfxray import __version__

    scan = _scan_folder(data_dir, min_classes=min_classes)
    metadata = read_metadata_table(data_dir)
    decoded = _listed_files(data_dir, scan).map(
        _decode_example,
        fn_kwargs={
            "image_size": int(image_size),
            "resample": int(resample),
            "jpeg_quality": jpeg_quality,
            "hfxray_version": __version__,
            "metadata": metadata or {},
            "defaults": _metadata_defaults(data_dir),
            "classes": scan.classes,
        },
        features=_decoded_features(scan.classes),
        num_proc=num_proc,
        desc=f"Decoding images to {image_size}x{image_size}",
    )
    return _set_aside_unreadable(decoded, scan, data_dir)


def _listed_files(data_dir: Path, scan: _FolderScan) -> Any:
    """Every image file of the class folders as undecoded (path, label) rows: `imagefolder` for the
    formats it knows, plus the DICOM files it does not (same features, concatenated)."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=scan.classes)}
    )
    parts = []
    if scan.n_imagefolder:
        # drop_labels=False: always label by folder (imagefolder's default drops labels when it
        # sees a single class); drop_metadata: metadata.csv is joined below by `_decode_example`
        # (imagefolder's own join would drop the folder labels).
        parts.append(
            datasets.load_dataset(
                "imagefolder",
                data_dir=str(data_dir),
                split="train",
                features=features,
                drop_labels=False,
                drop_metadata=True,
            )
        )
    if scan.dicom:
        parts.append(
            datasets.Dataset.from_dict(
                {
                    "image": [{"path": p, "bytes": None} for p, _ in scan.dicom],
                    "label": [scan.classes.index(c) for _, c in scan.dicom],
                },
                features=features,
            )
        )
    if not parts:
        raise ValueError(f"no image files hfxray reads in {data_dir}")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _decoded_features(classes: list[str]) -> Any:
    """What `_decode_example` writes: the S x S image, the label, the file's identity (path, hashes
    for duplicate groups), the read error if any, and every metadata column."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=classes),
            "path": datasets.Value("string"),
            "sha256": datasets.Value("string"),
            "phash": datasets.Value("string"),
            "phash16": datasets.Value("string"),
            "error": datasets.Value("string"),
            **{c: datasets.Value("string") for c in METADATA_COLUMNS},
        }
    )


def _set_aside_unreadable(decoded: Any, scan: _FolderScan, data_dir: Path) -> tuple[Any, list[BadFile]]:
    """Drop the rows whose file could not be read, listing each with its reason (the original
    process's "corrupted images set aside"); a class left with no readable film is an error."""
    errors = list(decoded["error"])  # datasets 5 returns lazy Columns
    paths = list(decoded["path"])
    bad = {b.path: b for b in scan.unsupported}
    for p, err in zip(paths, errors, strict=True):
        if err:
            bad.setdefault(p, BadFile(p, err))
    good = [i for i, err in enumerate(errors) if not err]
    ds = decoded.select(good).remove_columns("error")

    counts = Counter(ds["label"])
    empty = [c for i, c in enumerate(scan.classes) if counts.get(i, 0) == 0]
    if empty:
        raise ValueError(
            f"class folder(s) {', '.join(empty)} in {data_dir} have no readable images "
            f"({len(bad)} bad file(s) in total)"
        )
    bad_files = sorted(bad.values(), key=lambda b: b.path)
    for b in bad_files:
        logger.warning("skipping %s: %s", b.path, b.reason)
    return ds, bad_files


def _imagefolder_extensions() -> set[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {e.lower() for e in ImageFolder.EXTENSIONS}


# --------------------------------------------------------------------------------------------
# fingerprint
# --------------------------------------------------------------------------------------------
def dataset_fingerprint(ds: Any, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a model was trained on: ``dir``, ``n``, ``n_per_class``, ``fingerprint``, ``files``, ``phash``.

    Paths are relative to ``root`` (default: the folder above the class folders, i.e.
    ``<class>/<file>``) so the fingerprint survives moving the data folder.
    ``fingerprint`` is the sha256 over sorted ``relpath\\tsha256`` lines; ``files`` maps sha256 ->
    relpath (for leakage checks by content), ``phash`` relpath -> hex (for near copies).
    """
    paths = list(ds["path"])
    shas = list(ds["sha256"])
    phashes = list(ds["phash"]) if "phash" in ds.column_names else [""] * len(paths)
    if root is None:
        root = os.path.commonpath([str(Path(p).parent.parent) for p in paths]) if paths else ""
    root = str(Path(root).expanduser().resolve()) if root else ""
    rel = [Path(os.path.relpath(p, root)).as_posix() if root else p for p in paths]
    pairs = sorted(zip(rel, shas, strict=True))
    digest = hashlib.sha256("\n".join(f"{r}\t{s}" for r, s in pairs).encode()).hexdigest()
    if "label" in ds.column_names:  # several folders: the class is the label, not the first path part
        names = ds.features["label"].names
        classes = Counter(names[i] for i in ds["label"])
    else:
        classes = Counter(Path(r).parts[0] if len(Path(r).parts) > 1 else "" for r in rel)
    return {
        "dir": root,
        "n": len(paths),
        "n_per_class": dict(sorted(classes.items())),
        "fingerprint": digest,
        "files": {s: r for r, s in pairs},
        "phash": {r: h for r, h in sorted(zip(rel, phashes, strict=True)) if h},
    }
