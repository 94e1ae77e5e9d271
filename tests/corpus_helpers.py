"""Small real corpora for the benchmark tests: shared films copied into class folders, with a
``metadata.csv`` (the imagefolder convention) that names each film's source."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path


def source_corpus(
    shared_data: Path, root: Path, classes: Sequence[str], per_class: int, source_of: Callable[[int], str]
) -> Path:
    """The first ``per_class`` films of each class under ``root``; film i of a class gets ``source_of(i)``."""
    rows = []
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i, film in enumerate(sorted((shared_data / cls).iterdir())[:per_class]):
            name = f"{cls}/{i}{film.suffix.lower()}"
            shutil.copy(film, root / name)
            rows.append({"file_name": name, "source": source_of(i)})
    with (root / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return root
