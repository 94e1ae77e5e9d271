"""Image folders -> `datasets` Dataset: corruption filtering, duplicates/leakage, splits, transforms.

The layout is the one `imagefolder` reads: ``DATA_DIR/<class>/<image>``; the class names are the
folder names (a `ClassLabel`, sorted). Every file is decoded exactly once, by
`hfxray.images.load_image`, squash-resized to the model's ``S x S`` with PIL bilinear (what the
model's `ViTImageProcessor` does) and cached by `datasets`, so a second run is instant and the
cached image gives the same pixel values as the original file would at evaluation time.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from hfxray.images import SUPPORTED_EXTENSIONS, file_sha256, load_image

logger = logging.getLogger(__name__)

NOT_AN_IMAGE_REASON = "not an image type hfxray reads"
QUARANTINE_DIRNAME = "quarantine"
QUARANTINE_LOG = "quarantine_log.csv"


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be used, with a one-line human reason (shown to the user, logged)."""

    path: str
    reason: str


@dataclass(frozen=True)
class FileRecord:
    """What duplicate detection needs to know about one file (`phash` is None if undecodable)."""

    path: str
    sha256: str
    phash: str | None = None
    phash16: str | None = None  # 256-bit phash that confirms a 64-bit near match


@dataclass
class DuplicateGroup:
    """Files that are the same picture: ``exact`` (identical bytes) or ``near`` (phash distance).

    A group is a connected component: one ``near`` group may hold several exact copies too.
    """

    kind: Literal["exact", "near"]
    members: list[str]

    @property
    def classes(self) -> list[str]:
        """Class folders of the members; more than one means the same image has two labels."""
        return sorted({Path(m).parent.name for m in self.members})


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------
def image_phash(image: Image.Image, hash_size: int = 8) -> str:
    """Perceptual hash (imagehash DCT phash, ``hash_size**2`` bits) as hex."""
    import imagehash  # local import: only needed for duplicate detection

    return str(imagehash.phash(image, hash_size=hash_size))


# Frontal chest radiographs all look alike at 8 x 8 DCT: on the 251 shared images the 64-bit
# phash distance rises smoothly from 4 (three *different* patients, Normal/060, 080, 082, are at
# 4) with no gap. The 256-bit phash separates them: re-encoded/rescaled/brightened copies 0-8,
# two near-identical views of one patient (Covid/COVID-00033, 00037) 26, different patients
# 70-96. A 64-bit match in the upper half of ``phash_distance`` is therefore confirmed by the
# 256-bit distance <= this; closer 64-bit matches (re-encodes measure 0-2) are taken as they
# are, because a small thumbnail loses the fine detail the 256-bit hash looks at.
CONFIRM_PHASH16_DISTANCE = 32


def file_record(path: str | os.PathLike, *, draft_size: int | None = 224) -> FileRecord:
    """sha256 + phash of one file; an undecodable file still gets its sha256 (exact copies)."""
    path = str(Path(path).resolve())
    sha = file_sha256(path)
    try:
        image = load_image(path, draft_size=draft_size)
    except Exception as e:  # noqa: BLE001 - any decode failure only means "no phash"
        logger.debug("no phash for %s: %s", path, e)
        return FileRecord(path, sha)
    return FileRecord(path, sha, image_phash(image), image_phash(image, 16))


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


def _scan_folder(data_dir: Path) -> _FolderScan:
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
    if len(class_dirs) < 2:
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
        # Exactly the ViTImageProcessor resize (PIL, bilinear, squash): the processor's own
        # resize of this S x S image is then the identity.
        out["image"] = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
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


def default_source_name(data_dir: str | os.PathLike) -> str:
    """The ``source`` of a folder without metadata: its name, or its parent's for ``.../train`` and alike."""
    path = Path(data_dir).expanduser().resolve()
    return path.parent.name if path.name.lower() in _SPLIT_FOLDER_NAMES and path.parent.name else path.name


def _read_metadata(data_dir: Path) -> dict[str, dict[str, str]] | None:
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
            table, len(repeated), name, n + 1,
        )
    return rows


def _metadata_defaults(data_dir: Path) -> dict[str, str]:
    return {"source": default_source_name(data_dir), "population": UNKNOWN, "view": UNKNOWN, "patient_id": ""}


def load_image_folder(
    data_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_size: int,
    num_proc: int | None = None,
) -> tuple[Any, list[BadFile]]:
    """Load one or several ``DATA_DIR/<class>/<image>`` folders as one `datasets.Dataset`.

    Columns: ``image`` (PIL RGB, S x S), ``label`` (ClassLabel: the sorted union of the folders'
    class names), ``path`` (absolute), ``sha256`` (file bytes), ``phash``/``phash16`` (64/256-bit
    perceptual hashes, hex), and the film's provenance ``source``, ``population``, ``view``,
    ``patient_id`` from the folder's ``metadata.csv`` (imagefolder convention); a folder without
    one gets its name as ``source`` (`default_source_name`), ``unknown`` and an empty patient.
    Returns the dataset plus the files that were dropped (`BadFile`s; the caller warns and goes on).
    """
    import datasets

    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    if not dirs:
        raise ValueError("no data folder given")
    resolved = [Path(d).expanduser().resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the same data folder was given twice")
    loaded = [_load_one_folder(d, image_size=image_size, num_proc=num_proc) for d in resolved]
    classes = sorted({c for ds, _ in loaded for c in ds.features["label"].names})
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


def _load_one_folder(data_dir: Path, *, image_size: int, num_proc: int | None) -> tuple[Any, list[BadFile]]:
    """One folder: `imagefolder` lists the files, one cached `.map` decodes each file once.

    The image column is cast to ``Image(decode=False)`` so that a corrupt file cannot crash loading;
    one `.map` decodes each file with `load_image` and is cached by `datasets` fingerprinting.
    `imagefolder` does not know ``.dcm``, so DICOM files found in the class folders are appended
    with `Dataset.from_dict` + `concatenate_datasets` (same features). Metadata columns are joined
    in the same `.map` from ``metadata.csv`` (read by `_read_metadata`).

    ``num_proc=None`` decodes in this process. Measured on the 2-core box with the 251 shared
    radiographs (JPEG draft decoding keeps most files cheap, ~40 ms each): one process 8-12 s,
    ``num_proc=2`` 11-14 s, because the fork/IPC overhead and the other processes sharing the
    cores eat the gain. Pass ``num_proc`` for large folders on an otherwise idle machine.
    """
    import datasets

    from hfxray import __version__

    scan = _scan_folder(data_dir)
    metadata = _read_metadata(data_dir)
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
    raw = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    out_features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=scan.classes),
            "path": datasets.Value("string"),
            "sha256": datasets.Value("string"),
            "phash": datasets.Value("string"),
            "phash16": datasets.Value("string"),
            "error": datasets.Value("string"),
            **{c: datasets.Value("string") for c in METADATA_COLUMNS},
        }
    )
    decoded = raw.map(
        _decode_example,
        fn_kwargs={
            "image_size": int(image_size),
            "hfxray_version": __version__,
            "metadata": metadata or {},
            "defaults": _metadata_defaults(data_dir),
            "classes": scan.classes,
        },
        features=out_features,
        num_proc=num_proc,
        desc=f"Decoding images to {image_size}x{image_size}",
    )
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
# duplicates and leakage
# --------------------------------------------------------------------------------------------
class _UnionFind:
    """Disjoint sets with path halving.

    Hand-written (12 lines) rather than scipy's connected_components: the edges arrive in
    chunks from the hamming-distance loop and as sha256 buckets, so there is no sparse matrix
    to build, and scipy is not a direct dependency of hfxray.
    """

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)  # the smallest index stays the root


def _phash_bits(hashes: Sequence[str]) -> np.ndarray:
    """Hex phashes -> (n, bits) uint8 bit matrix."""
    as_bytes = np.array([list(bytes.fromhex(h)) for h in hashes], dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(as_bytes, axis=1)


def _hamming(a: str, b: str) -> int:
    bits = _phash_bits([a, b])
    return int(np.count_nonzero(bits[0] != bits[1]))


def group_records(
    records: Sequence[FileRecord],
    *,
    phash_distance: int = 4,
    confirm_distance: int | None = CONFIRM_PHASH16_DISTANCE,
) -> list[list[int]]:
    """Partition record indices into duplicate components (only groups of 2+ are returned).

    Two files are joined when their sha256 is equal, or their 64-bit phash hamming distance is
    <= ``phash_distance`` (negative: exact copies only). A match above ``phash_distance // 2``
    must also have a 256-bit ``phash16`` distance <= ``confirm_distance`` where both records have
    one (None: no confirmation; see `CONFIRM_PHASH16_DISTANCE`). Groups/members ordered by index.
    """
    n = len(records)
    uf = _UnionFind(n)
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_sha[r.sha256].append(i)
    for idx in by_sha.values():
        for j in idx[1:]:
            uf.union(idx[0], j)
    with_phash = [i for i, r in enumerate(records) if r.phash]
    if phash_distance >= 0 and len(with_phash) > 1:
        bits = _phash_bits([records[i].phash for i in with_phash]).astype(np.int32)
        chunk = 1024  # bounds memory at chunk x n ints for large folders
        for start in range(0, len(with_phash), chunk):
            block = bits[start : start + chunk]
            dist = block @ (1 - bits).T + (1 - block) @ bits.T  # hamming distance
            rows, cols = np.nonzero(dist <= phash_distance)
            for a, b in zip(rows + start, cols, strict=True):
                ra, rb = records[with_phash[a]], records[with_phash[b]]
                if a < b and _confirmed(ra, rb, int(dist[a - start, b]), phash_distance, confirm_distance):
                    uf.union(with_phash[a], with_phash[b])
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        components[uf.find(i)].append(i)
    return sorted((m for m in components.values() if len(m) > 1), key=lambda m: m[0])


def _confirmed(a: FileRecord, b: FileRecord, distance: int, phash_distance: int, confirm: int | None) -> bool:
    if confirm is None or distance <= phash_distance // 2 or not a.phash16 or not b.phash16:
        return True
    return _hamming(a.phash16, b.phash16) <= confirm


def _groups_from_records(records: Sequence[FileRecord], phash_distance: int) -> list[DuplicateGroup]:
    groups = []
    for members in group_records(records, phash_distance=phash_distance):
        kind = "exact" if len({records[i].sha256 for i in members}) == 1 else "near"
        groups.append(DuplicateGroup(kind, [records[i].path for i in members]))
    return groups


def find_duplicates(
    paths: Iterable[str | os.PathLike] | Sequence[FileRecord],
    *,
    phash_distance: int = 4,
    draft_size: int | None = 224,
) -> list[DuplicateGroup]:
    """Groups of exact (same sha256) and near (phash hamming <= distance) duplicates.

    ``paths`` may also be precomputed `FileRecord`s (e.g. from a loaded Dataset's ``sha256`` /
    ``phash`` columns), which avoids decoding every file again.
    """
    items = list(paths)
    records = [r if isinstance(r, FileRecord) else file_record(r, draft_size=draft_size) for r in items]
    return _groups_from_records(records, phash_distance)


def cross_duplicates(
    train_paths: Iterable[str | os.PathLike] | Sequence[FileRecord],
    test_paths: Iterable[str | os.PathLike] | Sequence[FileRecord],
    *,
    phash_distance: int = 4,
    draft_size: int | None = 224,
) -> list[DuplicateGroup]:
    """Duplicate groups that have members on both sides: leakage between two folders."""
    train = [r if isinstance(r, FileRecord) else file_record(r, draft_size=draft_size) for r in train_paths]
    test = [r if isinstance(r, FileRecord) else file_record(r, draft_size=draft_size) for r in test_paths]
    test_set = {r.path for r in test}
    train_set = {r.path for r in train}
    return [
        g
        for g in _groups_from_records(train + test, phash_distance)
        if any(m in test_set for m in g.members) and any(m in train_set for m in g.members)
    ]


def records_from_dataset(ds: Any) -> list[FileRecord]:
    """`FileRecord`s of a Dataset from `load_image_folder` (no decoding: columns only)."""
    cols = ds.column_names
    phashes = list(ds["phash"]) if "phash" in cols else [None] * len(ds)
    phashes16 = list(ds["phash16"]) if "phash16" in cols else [None] * len(ds)
    return [
        FileRecord(p, s, h or None, h16 or None)
        for p, s, h, h16 in zip(ds["path"], ds["sha256"], phashes, phashes16, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------
def split_groups(ds: Any, *, phash_distance: int = 4) -> list[int]:
    """One group id per row: duplicate groups (exact or near) joined with patient groups.

    Films of one patient (same non-empty ``patient_id`` within one ``source``) and copies of one
    picture must land on the same side of any split, or validation measures memory, not reading.
    """
    n = len(ds)
    uf = _UnionFind(n)
    for members in group_records(records_from_dataset(ds), phash_distance=phash_distance):
        for m in members[1:]:
            uf.union(members[0], m)
    if "patient_id" in ds.column_names:
        sources = list(ds["source"]) if "source" in ds.column_names else [""] * n
        first: dict[tuple[str, str], int] = {}
        for i, (src, patient) in enumerate(zip(sources, ds["patient_id"], strict=True)):
            if patient:
                uf.union(first.setdefault((src, patient), i), i)
    return [uf.find(i) for i in range(n)]


def split_dataset(
    ds: Any,
    *,
    test_size: float = 0.2,
    seed: int = 42,
    phash_distance: int = 4,
    validation_sources: Sequence[str] | None = None,
) -> Any:
    """``train``/``validation`` split that never puts a patient or copies of a picture on both sides.

    Default: `Dataset.train_test_split(stratify_by_column="label")` runs on one representative (the
    first row) per group (`split_groups`); every other member follows its representative. Sizes are
    therefore ~``test_size`` of the *groups*, not of the rows. ``validation_sources``: whole sources
    are held out instead (what a film from a new hospital looks like to the model); a training film
    in a group with a held-out film (a copy across sources) is dropped from training.
    Deterministic for a given dataset and seed.
    """
    import datasets

    groups = split_groups(ds, phash_distance=phash_distance)
    if validation_sources:
        wanted = set(validation_sources)
        sources = list(ds["source"])
        unknown = wanted - set(sources)
        if unknown:
            raise ValueError(
                f"validation source(s) {', '.join(sorted(unknown))} not in the data "
                f"(sources: {', '.join(sorted(set(sources)))})"
            )
        val_groups = {g for g, s in zip(groups, sources, strict=True) if s in wanted}
        val_rows = [i for i, s in enumerate(sources) if s in wanted]
        train_rows = [i for i, g in enumerate(groups) if g not in val_groups]
        if not train_rows:
            raise ValueError("--validation_sources holds out every film: nothing left to train on")
        return datasets.DatasetDict(train=ds.select(train_rows), validation=ds.select(val_rows))

    reps = sorted(set(groups))
    labels = list(ds["label"])
    index = datasets.Dataset.from_dict(
        {"row": reps, "label": [labels[i] for i in reps]},
        features=datasets.Features({"row": datasets.Value("int64"), "label": ds.features["label"]}),
    )
    parts = index.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)
    val_reps = set(list(parts["test"]["row"]))
    val_rows = [i for i in range(len(ds)) if groups[i] in val_reps]
    train_rows = [i for i in range(len(ds)) if groups[i] not in val_reps]
    return datasets.DatasetDict(train=ds.select(train_rows), validation=ds.select(val_rows))


def without_sources(ds: Any, sources: Sequence[str]) -> Any:
    """``ds`` without the films of ``sources`` (each must exist: a typo must not silently train on all)."""
    present = set(ds["source"])
    unknown = set(sources) - present
    if unknown:
        raise ValueError(f"source(s) {', '.join(sorted(unknown))} not in the data (sources: {', '.join(sorted(present))})")
    drop = set(sources)
    return ds.select([i for i, s in enumerate(ds["source"]) if s not in drop])


def class_source_counts(ds: Any) -> dict[str, dict[str, int]]:
    """``{class: {source: films}}``: the confounding table a model card and a report show."""
    names = ds.features["label"].names
    sources = list(ds["source"]) if "source" in ds.column_names else ["unknown"] * len(ds)
    table: dict[str, dict[str, int]] = {}
    for label, src in zip(ds["label"], sources, strict=True):
        row = table.setdefault(names[label], {})
        row[src] = row.get(src, 0) + 1
    return {c: dict(sorted(r.items())) for c, r in sorted(table.items())}


def balance_weights(ds: Any, *, strategy: str = "class_source", source_power: float = 0.5) -> np.ndarray:
    """Per-film sampling weights (summing to 1) against class imbalance and class x source confounding.

    ``class_source``: every class gets the same share; inside a class, a source with ``n`` films gets
    a share proportional to ``n ** source_power`` (0: every source alike, so 11 films weigh as much as
    683; 1: by size, so the largest archive dominates its class; 0.5 between). ``class``: classes
    alike, films alike inside a class. ``none``: uniform.
    """
    labels = np.asarray(ds["label"])
    n = len(labels)
    if strategy == "none":
        return np.full(n, 1.0 / n)
    if strategy not in ("class", "class_source"):
        raise ValueError(f"unknown balance strategy {strategy!r} (none, class, class_source)")
    sources = np.asarray(ds["source"]) if strategy == "class_source" and "source" in ds.column_names else np.zeros(n)
    weights = np.zeros(n)
    present = np.unique(labels)
    for label in present:
        in_class = labels == label
        cells = Counter(sources[in_class].tolist())
        shares = {src: k**source_power for src, k in cells.items()}
        total = sum(shares.values())
        for src, k in cells.items():
            weights[in_class & (sources == src)] = shares[src] / total / k / len(present)
    return weights / weights.sum()


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
@dataclass
class AugmentationConfig:
    """Training augmentation for frontal chest radiographs; every extra is off by default (p=0).

    No flips: anatomy is lateralised (heart on the left, situs) and text markers (L/R, hospital
    labels) would be mirrored, so a horizontal flip makes images that do not occur in practice
    and teaches the model nothing about lungs. ``horizontal_flip_p`` exists only for experiments.
    """

    rotate_limit: float = 10.0
    shift_limit: float = 0.06
    scale_range: tuple[float, float] = (0.9, 1.1)
    affine_p: float = 0.7
    brightness_limit: float = 0.1
    contrast_limit: float = 0.1
    brightness_contrast_p: float = 0.5
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    gamma_p: float = 0.3
    clahe_clip_limit: float = 2.0
    clahe_p: float = 0.3
    horizontal_flip_p: float = 0.0
    # Off by default; against shortcut learning (border text markers, source-specific quality).
    border_mask_p: float = 0.0  # blank a random strip along 1-2 borders (markers sit there)
    border_mask_max_fraction: float = 0.1
    random_erasing_p: float = 0.0  # A.CoarseDropout
    downscale_p: float = 0.0  # A.Downscale
    jpeg_p: float = 0.0  # A.ImageCompression
    jpeg_quality_range: tuple[int, int] = (50, 95)
    blur_p: float = 0.0  # A.GaussianBlur
    noise_p: float = 0.0  # A.GaussNoise (same noise on all channels)
    equalize_p: float = 0.0  # A.Equalize

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


AUGMENTATION_PRESETS: tuple[str, ...] = ("default", "none", "shortcut", "shortcut-strong")
"""Names accepted by `augmentation_config` (``--augmentation`` of scripts/train.py)."""


def augmentation_config(name: str = "default") -> AugmentationConfig:
    """A fresh `AugmentationConfig` for a preset name.

    ``default``: the radiograph-plausible geometric/intensity set. ``none``: resize + normalise
    only. ``shortcut``: default plus border masking, random erasing, downscale, JPEG, blur and
    noise, against learning the source (text markers, scanner quality) instead of the lungs.
    ``shortcut-strong``: the shortcut set at higher probabilities, plus zoom-in (scale up to 1.25,
    which crops borders toward the lungs), gamma/contrast ranges that cover the audit's invariance
    shifts (gamma 0.7-1.4, contrast x0.8-1.2), histogram equalisation and harsher JPEG; see
    docs/shortcuts.md for how it compares.
    """
    if name == "default":
        return AugmentationConfig()
    if name == "none":
        return AugmentationConfig(affine_p=0.0, brightness_contrast_p=0.0, gamma_p=0.0, clahe_p=0.0)
    if name == "shortcut":
        return AugmentationConfig(
            border_mask_p=0.3, random_erasing_p=0.2, downscale_p=0.2, jpeg_p=0.3, blur_p=0.1, noise_p=0.2
        )
    if name == "shortcut-strong":
        return AugmentationConfig(
            scale_range=(0.95, 1.25),
            affine_p=0.8,
            brightness_limit=0.2,
            contrast_limit=0.2,
            brightness_contrast_p=0.7,
            gamma_limit=(65.0, 145.0),
            gamma_p=0.5,
            equalize_p=0.3,
            border_mask_p=0.5,
            border_mask_max_fraction=0.15,
            random_erasing_p=0.3,
            downscale_p=0.5,
            jpeg_p=0.5,
            jpeg_quality_range=(25, 95),
            blur_p=0.2,
            noise_p=0.3,
        )
    raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}")


def _border_mask_transform(max_fraction: float, p: float) -> Any:
    """An albumentations transform that blanks a strip along one or two random image borders."""
    import albumentations as A

    class BorderMask(A.ImageOnlyTransform):
        """Random border strips set to 0: hides corner text markers that identify a source."""

        class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
            max_fraction: float

        def __init__(self, max_fraction: float = 0.1, p: float = 0.5) -> None:
            super().__init__(p=p)
            self.max_fraction = max_fraction

        def get_params(self) -> dict[str, Any]:
            sides = self.py_random.sample(["top", "bottom", "left", "right"], self.py_random.choice([1, 2]))
            return {"strips": [(s, self.py_random.uniform(0.02, self.max_fraction)) for s in sides]}

        def apply(self, img: np.ndarray, strips: list[tuple[str, float]] = (), **params: Any) -> np.ndarray:
            img = img.copy()
            h, w = img.shape[:2]
            for side, frac in strips:
                k = max(1, int(round(frac * (h if side in ("top", "bottom") else w))))
                if side == "top":
                    img[:k] = 0
                elif side == "bottom":
                    img[-k:] = 0
                elif side == "left":
                    img[:, :k] = 0
                else:
                    img[:, -k:] = 0
            return img

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("max_fraction",)

    return BorderMask(max_fraction=max_fraction, p=p)


def build_train_augmentation(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: AugmentationConfig | None = None,
    seed: int | None = None,
) -> Any:
    """The albumentations `Compose` behind `train_transform` (seeded: albumentations 2 `seed=`)."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    c = config or AugmentationConfig()
    steps: list[Any] = [
        A.Affine(
            rotate=(-c.rotate_limit, c.rotate_limit),
            translate_percent=(-c.shift_limit, c.shift_limit),
            scale=c.scale_range,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=c.affine_p,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=c.brightness_limit, contrast_limit=c.contrast_limit, p=c.brightness_contrast_p
        ),
        A.RandomGamma(gamma_limit=c.gamma_limit, p=c.gamma_p),
        A.CLAHE(clip_limit=c.clahe_clip_limit, p=c.clahe_p),
    ]
    optional: list[tuple[float, Callable[[], Any]]] = [
        (c.horizontal_flip_p, lambda: A.HorizontalFlip(p=c.horizontal_flip_p)),
        (c.equalize_p, lambda: A.Equalize(by_channels=False, p=c.equalize_p)),
        (c.border_mask_p, lambda: _border_mask_transform(c.border_mask_max_fraction, c.border_mask_p)),
        (
            c.random_erasing_p,
            lambda: A.CoarseDropout(
                num_holes_range=(1, 3),
                hole_height_range=(0.05, 0.15),
                hole_width_range=(0.05, 0.15),
                fill=0,
                p=c.random_erasing_p,
            ),
        ),
        (c.downscale_p, lambda: A.Downscale(scale_range=(0.5, 0.9), p=c.downscale_p)),
        (c.jpeg_p, lambda: A.ImageCompression(quality_range=c.jpeg_quality_range, p=c.jpeg_p)),
        (c.blur_p, lambda: A.GaussianBlur(blur_limit=(3, 5), p=c.blur_p)),
        (c.noise_p, lambda: A.GaussNoise(std_range=(0.01, 0.05), per_channel=False, p=c.noise_p)),
    ]
    steps += [make() for prob, make in optional if prob > 0]
    steps += [
        # A no-op for cached S x S images; sizes anything else (e.g. raw files) consistently.
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]
    return A.Compose(steps, seed=seed)


def _as_rgb_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: AugmentationConfig | None = None,
    seed: int | None = None,
) -> Callable[[dict[str, list]], dict[str, list]]:
    """Callable for `Dataset.with_transform`: ``{"pixel_values": [float32 CHW], "labels": [int]}``.

    Small geometric + intensity changes that a radiograph plausibly has (positioning, exposure,
    processing): Affine (+-10 deg, ~6% shift, 0.9-1.1 scale), brightness/contrast, gamma, CLAHE;
    no flips (see `AugmentationConfig`). Normalisation uses the backbone's mean/std, as the
    processor does at evaluation.
    """
    import torch

    aug = build_train_augmentation(image_size, mean, std, config, seed)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        pixel_values = [aug(image=_as_rgb_array(im))["image"].to(torch.float32) for im in batch["image"]]
        return {"pixel_values": pixel_values, "labels": [int(x) for x in batch["label"]]}

    return transform


def eval_transform(processor: Any) -> Callable[[dict[str, list]], dict[str, list]]:
    """Callable for `Dataset.with_transform` using the model's image processor (no augmentation).

    The same `ViTImageProcessor` (PIL backend: `hfxray.modeling.make_processor` / ``backend="pil"``)
    is used by validation, evaluation and prediction, so they all see identical pixel values. The
    torchvision backend (transformers 5's default class) resizes with a different antialiasing
    kernel and differs from the cached image by a grey level on some pixels.
    """

    def transform(batch: dict[str, list]) -> dict[str, list]:
        images = [Image.fromarray(_as_rgb_array(im)) for im in batch["image"]]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].float()
        out: dict[str, list] = {"pixel_values": list(pixel_values)}
        if "label" in batch:
            out["labels"] = [int(x) for x in batch["label"]]
        return out

    return transform


# --------------------------------------------------------------------------------------------
# quarantine
# --------------------------------------------------------------------------------------------
def _move_no_overwrite(src: Path, dst_dir: Path) -> Path:
    """Move ``src`` into ``dst_dir`` under a name that does not exist yet; never overwrites.

    A hard link (fails if the name exists) followed by unlinking the source keeps this atomic on
    one file system; across file systems an exclusive-create copy is used before the unlink.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    stem, suffix = src.stem, src.suffix
    for n in range(10_000):
        dst = dst_dir / (src.name if n == 0 else f"{stem}-{n}{suffix}")
        try:
            os.link(src, dst)
        except FileExistsError:
            continue
        except OSError:  # cross-device or no hard links: exclusive copy
            try:
                with open(src, "rb") as fin, open(dst, "xb") as fout:
                    shutil.copyfileobj(fin, fout)
                shutil.copystat(src, dst)
            except FileExistsError:
                continue
        os.unlink(src)
        return dst
    raise FileExistsError(f"no free quarantine name for {src.name} in {dst_dir}")


def quarantine_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/../quarantine``: beside the data, so imagefolder never reads it back."""
    return Path(data_dir).expanduser().resolve().parent / QUARANTINE_DIRNAME


def quarantine(bad_files: Iterable[BadFile], data_dir: str | os.PathLike) -> Path:
    """Move bad files to ``<data_dir>/../quarantine/<class>/`` and append to its CSV log.

    Never deletes and never overwrites (a clash gets ``name-1.ext``). Files that are already gone
    are logged as warnings and skipped. Returns the quarantine folder.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    qdir = quarantine_dir(data_dir)
    qdir.mkdir(parents=True, exist_ok=True)
    log_path = qdir / QUARANTINE_LOG
    new_log = not log_path.exists()
    with open(log_path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_log:
            writer.writerow(["time", "original_path", "new_path", "reason"])
        for bad in bad_files:
            src = Path(bad.path).resolve()
            if not src.is_file():
                logger.warning("not quarantined (missing): %s", src)
                continue
            try:
                sub = src.parent.relative_to(data_dir)
            except ValueError:
                sub = Path("_outside")
            dst = _move_no_overwrite(src, qdir / sub)
            writer.writerow([datetime.now(timezone.utc).isoformat(), str(src), str(dst), bad.reason])
            f.flush()
            logger.warning("quarantined %s -> %s (%s)", src, dst, bad.reason)
    return qdir


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
    classes = Counter(Path(r).parts[0] if len(Path(r).parts) > 1 else "" for r in rel)
    return {
        "dir": root,
        "n": len(paths),
        "n_per_class": dict(sorted(classes.items())),
        "fingerprint": digest,
        "files": {s: r for r, s in pairs},
        "phash": {r: h for r, h in sorted(zip(rel, phashes, strict=True)) if h},
    }


# --------------------------------------------------------------------------------------------
# folder check (scripts/check_data.py)
# --------------------------------------------------------------------------------------------
@dataclass
class DataCheckReport:
    """Everything `scripts/check_data.py` prints: counts, bad files, duplicates, leakage."""

    data_dir: str
    classes: list[str]
    counts: dict[str, int]
    bad_files: list[BadFile] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    test_dir: str | None = None
    test_files: int = 0
    cross_duplicates: list[DuplicateGroup] = field(default_factory=list)
    quarantine_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("duplicates", "cross_duplicates"):
            for g, dd in zip(getattr(self, key), d[key], strict=True):
                dd["classes"] = g.classes
        return d

    def format(self) -> str:
        lines = [f"Data folder: {self.data_dir}", f"{sum(self.counts.values())} usable images:"]
        lines += [f"  {c}: {self.counts.get(c, 0)}" for c in self.classes]
        lines.append(f"{len(self.bad_files)} bad file(s)" + (":" if self.bad_files else ""))
        lines += [f"  {b.path}: {b.reason}" for b in self.bad_files]
        if self.quarantine_dir:
            lines.append(f"Bad files moved to {self.quarantine_dir} (see {QUARANTINE_LOG})")
        lines += _format_groups("duplicate group(s) in the data folder", self.duplicates, self.data_dir)
        if self.test_dir is not None:
            lines.append(f"Test folder: {self.test_dir} ({self.test_files} files)")
            lines += _format_groups(
                "group(s) shared between data and test folder (leakage)",
                self.cross_duplicates,
                str(Path(self.data_dir).parent),
            )
        return "\n".join(lines)


def _format_groups(title: str, groups: Sequence[DuplicateGroup], root: str) -> list[str]:
    lines = [f"{len(groups)} {title}" + (":" if groups else "")]
    for g in groups:
        label = f" [different classes: {', '.join(g.classes)}]" if len(g.classes) > 1 else ""
        shown = [os.path.relpath(m, root) if m.startswith(root) else m for m in g.members]
        lines.append(f"  {g.kind}{label}: " + ", ".join(shown))
    return lines


def _list_image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not _is_hidden(p.name) and p.suffix.lower() in SUPPORTED_EXTENSIONS
    )


def check_folder(
    data_dir: str | os.PathLike,
    *,
    test_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    phash_distance: int = 4,
    num_proc: int | None = None,
    move_bad_files: bool = False,
) -> DataCheckReport:
    """Load a training folder and report counts, bad files, duplicates and test-folder leakage.

    Uses (and fills) the same `datasets` cache as training at ``image_size``. With
    ``move_bad_files`` the bad files are quarantined (moved, logged, never deleted).
    """
    ds, bad = load_image_folder(data_dir, image_size=image_size, num_proc=num_proc)
    classes = ds.features["label"].names
    counts = Counter(ds["label"])
    records = records_from_dataset(ds)
    report = DataCheckReport(
        data_dir=str(Path(data_dir).expanduser().resolve()),
        classes=classes,
        counts={c: counts.get(i, 0) for i, c in enumerate(classes)},
        bad_files=bad,
        duplicates=_groups_from_records(records, phash_distance),
    )
    if test_dir is not None:
        test_path = Path(test_dir).expanduser().resolve()
        if not test_path.is_dir():
            raise FileNotFoundError(f"test folder not found: {test_path}")
        test_files = _list_image_files(test_path)
        report.test_dir, report.test_files = str(test_path), len(test_files)
        test_records = [file_record(p, draft_size=image_size) for p in test_files]
        report.cross_duplicates = cross_duplicates(records, test_records, phash_distance=phash_distance)
    if move_bad_files and bad:
        report.quarantine_dir = str(quarantine(bad, data_dir))
    return report


__all__ = [
    "AUGMENTATION_PRESETS",
    "AugmentationConfig",
    "augmentation_config",
    "BadFile",
    "DataCheckReport",
    "DuplicateGroup",
    "FileRecord",
    "check_folder",
    "cross_duplicates",
    "dataset_fingerprint",
    "eval_transform",
    "file_record",
    "find_duplicates",
    "group_records",
    "load_image_folder",
    "quarantine",
    "records_from_dataset",
    "split_dataset",
    "train_transform",
]
