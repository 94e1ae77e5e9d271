"""Train/validation splits that keep patient and duplicate groups whole, source hold-outs, and
class x source sampling weights against confounding."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from hfxray.data.duplicates import _UnionFind, group_records, records_from_dataset

logger = logging.getLogger(__name__)


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
        raise ValueError(
            f"source(s) {', '.join(sorted(unknown))} not in the data (sources: {', '.join(sorted(present))})"
        )
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


BALANCE_STRATEGIES: tuple[str, ...] = ("class_source", "class_source_population", "class", "none")
"""Names accepted by `balance_weights` (``--balance`` of scripts/train.py)."""


def balance_weights(ds: Any, *, strategy: str = "class_source", source_power: float = 0.5) -> np.ndarray:
    """Per-film sampling weights (summing to 1) against class imbalance and class x source confounding.

    ``class_source``: every class gets the same share; inside a class, a source with ``n`` films gets
    a share proportional to ``n ** source_power`` (0: every source alike, so 11 films weigh as much as
    683; 1: by size, so the largest archive dominates its class; 0.5 between). ``class``: classes
    alike, films alike inside a class. ``none``: uniform. ``class_source_population``: as
    ``class_source``, then inside each known population (adult, child: `population_group`) the
    classes present get equal shares of that population's weight, so that age says nothing about
    the class (with class_source alone adult Covid outweighs adult Normal about 1.8 : 1 on the
    bundled corpus, because the Normal class also holds the children's films). Films of unknown
    population keep their class_source weight.
    """
    labels = np.asarray(ds["label"])
    n = len(labels)
    if strategy == "none":
        return np.full(n, 1.0 / n)
    if strategy not in BALANCE_STRATEGIES:
        raise ValueError(f"unknown balance strategy {strategy!r} ({', '.join(BALANCE_STRATEGIES)})")
    sources = (
        np.asarray(ds["source"])
        if strategy.startswith("class_source") and "source" in ds.column_names
        else np.zeros(n)
    )
    weights = np.zeros(n)
    present = np.unique(labels)
    for label in present:
        in_class = labels == label
        cells = Counter(sources[in_class].tolist())
        shares = {src: k**source_power for src, k in cells.items()}
        total = sum(shares.values())
        for src, k in cells.items():
            weights[in_class & (sources == src)] = shares[src] / total / k / len(present)
    if strategy == "class_source_population" and "population" in ds.column_names:
        weights = _equal_classes_within_population(weights, labels, np.asarray(ds["population"]))
    return weights / weights.sum()


def population_group(population: str | None) -> str | None:
    """``adult``, ``child`` or None (unknown) from a metadata ``population`` text such as
    "adult (mostly)" or "pediatric (1-5 y)"."""
    text = (population or "").strip().lower()
    if text.startswith("adult"):
        return "adult"
    if text.startswith(("pediatric", "paediatric", "child", "infant", "neonat")):
        return "child"
    return None


def _equal_classes_within_population(weights: np.ndarray, labels: np.ndarray, populations: np.ndarray) -> np.ndarray:
    """Rescale each class's weight inside a known population to the population's mean class weight.

    The population's total weight and the source shares inside each class x population cell stay;
    only the label prior given the population becomes uniform.
    """
    out = weights.copy()
    groups = np.asarray([population_group(p) for p in populations], dtype=object)
    for group in ("adult", "child"):
        in_group = groups == group
        classes = np.unique(labels[in_group])
        if len(classes) < 2:
            continue
        masses = {c: weights[in_group & (labels == c)].sum() for c in classes}
        target = sum(masses.values()) / len(classes)
        for c, mass in masses.items():
            out[in_group & (labels == c)] *= target / mass
    return out
