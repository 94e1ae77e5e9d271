"""Provenance as data: metadata.csv columns, several folders, group-aware splits, balanced sampling.

Real radiographs (copies of the shared films) in generated folders, each with the metadata a
multi-source corpus carries; nothing here is mocked.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hfxray import data

CLASSES = ("Covid", "Normal")


def _films(shared_data: Path, cls: str, n: int, skip: int = 0) -> list[Path]:
    return sorted((shared_data / cls).iterdir())[skip : skip + n]


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory) -> Path:
    """Two sources per class; four patients with three films each; one exact copy."""
    root = tmp_path_factory.mktemp("corpus") / "multi"
    rows = []
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i, film in enumerate(_films(shared_data, cls, 14, skip=20)):
            name = f"{cls}/{i:02d}{film.suffix.lower()}"
            shutil.copy(film, root / name)
            source = f"{cls.lower()}-a" if i < 8 else f"{cls.lower()}-b"
            patient = f"p{cls}{i // 3}" if i < 12 else ""  # films 0-11: four patients of three films
            rows.append({"file_name": name, "source": source, "population": "adult", "view": "PA", "patient_id": patient})
    shutil.copy(root / rows[0]["file_name"], root / "Covid" / "copy.png")  # no metadata row: folder defaults
    with (root / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def corpus_ds(corpus: Path):
    ds, bad = data.load_image_folder(corpus, image_size=64)
    assert bad == []
    return ds


def test_metadata_columns_reach_the_dataset(corpus: Path, corpus_ds) -> None:
    rows = {r["file_name"]: r for r in csv.DictReader((corpus / "metadata.csv").open())}
    assert {"source", "population", "view", "patient_id", "label", "path"} <= set(corpus_ds.column_names)
    names = corpus_ds.features["label"].names
    assert names == list(CLASSES)
    for example in corpus_ds.select_columns(["path", "label", "source", "patient_id", "view"]):
        rel = Path(example["path"]).relative_to(corpus).as_posix()
        assert names[example["label"]] == Path(rel).parts[0]  # the folder is still the class
        if rel in rows:
            assert example["source"] == rows[rel]["source"]
            assert example["patient_id"] == rows[rel]["patient_id"]
            assert example["view"] == "PA"
        else:  # a film the table does not list keeps the folder's defaults
            assert (example["source"], example["patient_id"], example["view"]) == ("multi", "", "unknown")


def test_folder_without_metadata_is_its_own_source(shared_data: Path, tmp_path: Path) -> None:
    train = tmp_path / "hospital-x" / "train"
    for cls in CLASSES:
        (train / cls).mkdir(parents=True)
        for film in _films(shared_data, cls, 2):
            shutil.copy(film, train / cls / film.name)
    ds, _ = data.load_image_folder(train, image_size=64)
    assert set(ds["source"]) == {"hospital-x"}  # "train" names a split, not a place
    assert set(ds["population"]) == {"unknown"} and set(ds["patient_id"]) == {""}


def test_several_folders_share_one_label_space(corpus: Path, shared_data: Path, tmp_path: Path) -> None:
    viral = tmp_path / "children"
    for cls in ("Normal", "Viral Pneumonia"):
        (viral / cls).mkdir(parents=True)
        for film in _films(shared_data, cls, 3, skip=40):
            shutil.copy(film, viral / cls / film.name)
    ds, _ = data.load_image_folder([corpus, viral], image_size=64)
    names = ds.features["label"].names
    assert names == ["Covid", "Normal", "Viral Pneumonia"]
    for path, label, source in zip(ds["path"], ds["label"], ds["source"], strict=True):
        assert names[label] == Path(path).parent.name
        if source == "children":
            assert Path(path).is_relative_to(viral)
    assert Counter(ds["source"])["children"] == 6
    with pytest.raises(ValueError, match="twice"):
        data.load_image_folder([corpus, corpus], image_size=64)


def test_repeated_metadata_rows_are_reported(corpus: Path, tmp_path: Path, caplog) -> None:
    copy = tmp_path / "repeated"
    shutil.copytree(corpus, copy)
    table = (copy / "metadata.csv").read_text().splitlines()
    (copy / "metadata.csv").write_text("\n".join([*table, table[1], table[1]]) + "\n")
    with caplog.at_level(logging.WARNING):
        data.load_image_folder(copy, image_size=64)
    assert "more than once" in caplog.text and "3 times" in caplog.text


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_group_never_straddles_a_split(corpus_ds, seed: int) -> None:
    splits = data.split_dataset(corpus_ds, test_size=0.3, seed=seed)
    train, val = splits["train"], splits["validation"]
    assert len(train) + len(val) == len(corpus_ds)
    patients = lambda part: {(s, p) for s, p in zip(part["source"], part["patient_id"], strict=True) if p}  # noqa: E731
    assert patients(train) and patients(val)
    assert not patients(train) & patients(val)
    assert not set(train["sha256"]) & set(val["sha256"])  # the exact copy follows its original


def test_validation_sources_hold_whole_sources_out(corpus_ds) -> None:
    splits = data.split_dataset(corpus_ds, validation_sources=["covid-b", "normal-a"])
    assert set(splits["validation"]["source"]) == {"covid-b", "normal-a"}
    assert not {"covid-b", "normal-a"} & set(splits["train"]["source"])
    assert len(splits["validation"]) == Counter(corpus_ds["source"])["covid-b"] + Counter(corpus_ds["source"])["normal-a"]
    with pytest.raises(ValueError, match="not in the data"):
        data.split_dataset(corpus_ds, validation_sources=["nowhere"])
    kept = data.without_sources(corpus_ds, ["covid-a"])
    assert "covid-a" not in set(kept["source"]) and len(kept) == len(corpus_ds) - Counter(corpus_ds["source"])["covid-a"]
    with pytest.raises(ValueError, match="not in the data"):
        data.without_sources(corpus_ds, ["typo"])


def test_balance_weights_share_classes_and_sources(corpus_ds) -> None:
    labels = np.asarray(corpus_ds["label"])
    sources = np.asarray(corpus_ds["source"])
    for power in (0.0, 0.5, 1.0):
        w = data.balance_weights(corpus_ds, strategy="class_source", source_power=power)
        assert w.sum() == pytest.approx(1.0)
        assert w[labels == 0].sum() == pytest.approx(0.5) and w[labels == 1].sum() == pytest.approx(0.5)
        covid = {s: w[(labels == 0) & (sources == s)].sum() for s in set(sources[labels == 0])}
        n = {s: int(((labels == 0) & (sources == s)).sum()) for s in covid}
        expected = {s: n[s] ** power / sum(k**power for k in n.values()) / 2 for s in n}
        assert covid == pytest.approx(expected)
    uniform = data.balance_weights(corpus_ds, strategy="none")
    assert np.allclose(uniform, 1 / len(corpus_ds))
    with pytest.raises(ValueError, match="unknown balance"):
        data.balance_weights(corpus_ds, strategy="magic")


def test_a_single_class_folder_joins_others(corpus: Path, shared_data: Path, tmp_path: Path) -> None:
    normals = tmp_path / "other-hospital"
    (normals / "Normal").mkdir(parents=True)
    for film in _films(shared_data, "Normal", 3, skip=50):
        shutil.copy(film, normals / "Normal" / film.name)
    ds, _ = data.load_image_folder([corpus, normals], image_size=64)
    assert Counter(ds["source"])["other-hospital"] == 3
    with pytest.raises(ValueError, match="only one class"):
        data.load_image_folder(normals, image_size=64)  # alone it cannot train anything
    more = tmp_path / "third-hospital" / "Normal"
    more.mkdir(parents=True)
    shutil.copy(next(iter(_films(shared_data, "Normal", 1, skip=60))), more)
    with pytest.raises(ValueError, match="only one class"):  # two folders, still one class in all
        data.load_image_folder([normals, more.parent], image_size=64)


def test_population_balance_makes_age_say_nothing_about_the_class() -> None:
    """class_source_population: inside adults (and inside children) the classes weigh alike."""
    from datasets import ClassLabel, Dataset, Features, Value

    cells = [  # (class, source, population, films): the bundled corpus's shape in miniature
        (0, "covid-archive", "adult (mostly)", 6),
        (0, "case-series", "unknown", 2),
        (1, "adult-archive", "adult", 2),
        (1, "childrens", "pediatric (1-5 y)", 4),
        (2, "childrens", "pediatric (1-5 y)", 3),
    ]
    rows = [(c, s, p) for c, s, p, k in cells for _ in range(k)]
    features = Features(
        {"label": ClassLabel(names=["Covid", "Normal", "Viral Pneumonia"]), "source": Value("string"), "population": Value("string")}
    )
    ds = Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(features)}, features=features)
    labels = np.asarray(ds["label"])
    groups = np.asarray([data.population_group(p) for p in ds["population"]], dtype=object)
    before = data.balance_weights(ds, strategy="class_source")
    after = data.balance_weights(ds, strategy="class_source_population")
    mass = lambda w, g, c: w[(groups == g) & (labels == c)].sum()  # noqa: E731
    assert mass(before, "adult", 0) > 1.5 * mass(before, "adult", 1)  # what class_source alone leaves
    assert mass(after, "adult", 0) == pytest.approx(mass(after, "adult", 1))
    assert mass(after, "child", 1) == pytest.approx(mass(after, "child", 2))
    for g in ("adult", "child"):  # a population's total weight is kept
        assert after[groups == g].sum() == pytest.approx(before[groups == g].sum())
    unknown = groups == None  # noqa: E711
    assert np.allclose(after[unknown], before[unknown]) and after.sum() == pytest.approx(1.0)
    assert [data.population_group(p) for p in ("Adult", "paediatric", "", None, "unknown")] == [
        "adult", "child", None, None, None,
    ]
