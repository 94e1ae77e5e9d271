"""Exact and near duplicates (sha256 + perceptual hashes) and leakage between two folders."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from hfxray.images import file_sha256, load_image

logger = logging.getLogger(__name__)


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
