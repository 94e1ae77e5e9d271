"""benchmarks/loso.py: what held-out films were called, and the probe mode end to end on real films."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import loso  # noqa: E402
from corpus_helpers import source_corpus  # noqa: E402

from hfxray.metrics import wilson_interval  # noqa: E402

CLASSES = ["Covid", "Normal", "Viral Pneumonia"]


def test_holdout_report_counts_what_each_film_was_called() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 2, 1, 0, 1, 2, 1, 2])
    r = loso.holdout_report(y, pred, CLASSES)
    assert r["n"] == 10 and r["accuracy"] == pytest.approx(6 / 10)
    assert r["accuracy_ci95"] == pytest.approx(wilson_interval(6, 10))
    assert r["per_class"]["Covid"]["called"] == {"Covid": 2, "Normal": 1, "Viral Pneumonia": 1}
    assert sum(sum(c["called"].values()) for c in r["per_class"].values()) == 10
    assert r["covid_sensitivity"] == pytest.approx(2 / 4)
    assert r["covid_specificity"] == pytest.approx(5 / 6)  # one normal film called Covid
    assert r["viral_sensitivity"] == pytest.approx(2 / 3)
    only_normal = loso.holdout_report(np.array([1, 1]), np.array([0, 1]), CLASSES)
    assert "covid_sensitivity" not in only_normal and only_normal["covid_specificity"] == pytest.approx(0.5)


def test_holdout_report_gives_the_threshold_free_covid_auroc_when_both_sides_are_there() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 20 + [2] * 10)
    probs = rng.dirichlet([1, 1, 1], size=y.size)
    probs[y == 0, 0] += rng.uniform(0, 1, 30)  # Covid films lean Covid, imperfectly
    probs /= probs.sum(axis=1, keepdims=True)
    r = loso.holdout_report(y, probs.argmax(axis=1), CLASSES, probs)
    assert r["covid_auroc"] == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    assert r["covid_auroc_ci95"][0] < r["covid_auroc"] < r["covid_auroc_ci95"][1]
    assert r["covid_auroc_n"] == [30, 30]
    # the same films all moved towards Covid: more called Covid, the same separation
    shifted = probs.copy()
    shifted[:, 0] = 1 - (1 - shifted[:, 0]) ** 3
    moved = loso.holdout_report(y, shifted.argmax(axis=1), CLASSES, shifted)
    assert moved["covid_specificity"] < r["covid_specificity"]
    assert moved["covid_auroc"] == pytest.approx(r["covid_auroc"])
    one_side = loso.holdout_report(y[y > 0], probs[y > 0].argmax(axis=1), CLASSES, probs[y > 0])
    assert "covid_auroc" not in one_side and "covid_specificity" in one_side


@pytest.fixture(scope="module")
def two_source_corpus(shared_data: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loso") / "corpus"
    return source_corpus(shared_data, root, CLASSES, 8, lambda i: "site-a" if i % 2 else "site-b")


@pytest.mark.slow
def test_probe_mode_writes_one_row_per_choice_and_the_doc(two_source_corpus: Path, tmp_path: Path) -> None:
    results, doc = tmp_path / "results.json", tmp_path / "loso.md"
    doc.write_text("# LOSO\n\nkept text\n")
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "loso.py"), "--mode", "probe", "--data_dir", str(two_source_corpus),
        "--holdout", "site-a", "--results", str(results), "--doc", str(doc), "--output_dir", str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(results.read_text())["rows"]
    assert {r["choice"] for r in rows} == set(loso.PROBE_CHOICES)
    for r in rows:
        assert r["source"] == "site-a" and r["n"] == 12  # 4 of 8 films per class, 3 classes
        assert [(ROOT / d).resolve() for d in r["data_dir"]] == [two_source_corpus.resolve()]  # the films it saw
        assert sum(sum(c["called"].values()) for c in r["per_class"].values()) == 12
    text = doc.read_text()
    assert text.startswith("# LOSO\n\nkept text\n") and loso.BEGIN_MARK in text and loso.END_MARK in text
    assert text.count("| probe |") == len(loso.PROBE_CHOICES)


def test_only_rows_of_the_bundled_recipe_reach_the_model(tmp_path: Path) -> None:
    from hfxray.bundle import DEFAULT_DATA_DIRS, RECIPE_ARGS, attach_leave_one_source_out
    from hfxray.hub import read_metadata

    (tmp_path / "hfxray.json").write_text(json.dumps({"classes": CLASSES}))
    base = {"mode": "finetune", "choice": "x", "seed": 42, "n": 10, "accuracy": 0.5, "per_class": {}}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [
        {**base, "source": "b", "recipe": list(RECIPE_ARGS)},
        {**base, "source": "a", "recipe": list(RECIPE_ARGS)},
        {**base, "source": "c", "recipe": [*RECIPE_ARGS, "--num_train_epochs", "9"]},
        {**base, "source": "d", "mode": "probe", "recipe": list(RECIPE_ARGS)},
        {**base, "source": "a", "fold": "a+e", "recipe": list(RECIPE_ARGS)},  # held out with another source
        {**base, "source": loso.ALL_HELD_OUT, "fold": "a+e", "recipe": list(RECIPE_ARGS)},  # that fold pooled
        {**base, "source": loso.ALL_HELD_OUT, "fold": "a+e", "recipe": [*RECIPE_ARGS, "--image_size", "128"]},
        # the same flags on the default folders (recorded), and on a changed copy of the films
        {**base, "source": "f", "recipe": list(RECIPE_ARGS), "data_dir": loso.data_dir_names(DEFAULT_DATA_DIRS)},
        {**base, "source": "g", "recipe": list(RECIPE_ARGS), "data_dir": ["grey copy", "../shared/data/x"]},
    ]}))
    assert attach_leave_one_source_out(tmp_path, results) == 3
    meta = read_metadata(tmp_path)
    assert [r["source"] for r in meta["leave_one_source_out"]] == ["a", "b", "f"]
    assert "per_class" not in meta["leave_one_source_out"][0] and meta["classes"] == CLASSES
    # the pooled row of the several-sources fold goes to its own table, other recipes' rows nowhere
    assert [(r["fold"], r["source"]) for r in meta["leave_sources_out_together"]] == [("a+e", loso.ALL_HELD_OUT)]


def test_a_fold_of_several_sources_is_kept_apart_from_the_one_source_fold(tmp_path: Path) -> None:
    """save_row merges by (mode, choice, source, fold, seed); the doc shows the two kinds of fold apart."""
    results = tmp_path / "results.json"
    base = {"mode": "finetune", "choice": "recipe", "source": "a", "seed": 42, "n": 10, "accuracy": 0.5,
            "accuracy_ci95": [0.2, 0.8]}
    loso.save_row(dict(base), results)
    loso.save_row({**base, "fold": "a+b", "accuracy": 0.7}, results)
    loso.save_row({**base, "accuracy": 0.6}, results)  # the one-source fold again: replaces its old row
    rows = loso.load_rows(results)
    assert sorted((loso.fold_of(r), r["accuracy"]) for r in rows) == [("a", 0.6), ("a+b", 0.7)]
    text = loso.tables(rows)
    one, together = text.split("### Fine-tuned, several sources")
    assert "0.60" in one and "0.70" not in one and "0.70" in together


def test_summary_puts_each_choice_on_one_line_seed_by_seed_and_reaches_the_readme(tmp_path: Path) -> None:
    from hfxray.bundle import RECIPE_ARGS

    def row(choice: str, fold: str, source: str, seed: int, key: str, value: float, recipe: list[str]) -> dict:
        return {"mode": "finetune", "choice": choice, "fold": fold, "source": source, "seed": seed, "n": 100,
                key: value, f"{key}_ci95": [value - 0.05, value + 0.05], "recipe": recipe}

    recipe, changed = list(RECIPE_ARGS), [*RECIPE_ARGS, "--frozen_stages", "3"]
    rows = [
        row("recipe", "bimcv", "bimcv", 42, "covid_sensitivity", 0.68, recipe),
        row("recipe", "bimcv", "bimcv", 43, "covid_sensitivity", 0.70, recipe),
        row("frozen", "bimcv", "bimcv", 43, "covid_sensitivity", 0.61, changed),
        row("frozen", loso.NEW_HOSPITALS, loso.ALL_HELD_OUT, 42, "covid_auroc", 0.88, changed),
        row("frozen", loso.NEW_HOSPITALS, "cxnet-spain", 42, "accuracy", 0.99, changed),  # not a headline cell
        {**row("probe", "bimcv", "bimcv", 42, "covid_sensitivity", 0.3, recipe), "mode": "probe"},
    ]
    lines = loso.summary(rows).splitlines()
    by_choice = {line.split(" | ")[0].strip("| *"): line for line in lines[2:] if line.startswith("|")}
    assert set(by_choice) == {"recipe (bundled)", "frozen"}
    assert "| 0.68 [0.63, 0.73] / 0.70 [0.65, 0.75] |" in by_choice["recipe (bundled)"]
    assert "| - / 0.61 [0.56, 0.66] | - / - | - / - | 0.88 [0.83, 0.93] / - |" in by_choice["frozen"]
    assert "0.99" not in loso.summary(rows)
    assert by_choice["recipe (bundled)"].startswith("| **recipe (bundled)** | - |")  # the baseline comes first
    assert lines.index(by_choice["recipe (bundled)"]) < lines.index(by_choice["frozen"])

    readme, doc = tmp_path / "README.md", tmp_path / "loso.md"
    readme.write_text(f"# x\n\nbefore\n{loso.SUMMARY_BEGIN}\nold\n{loso.SUMMARY_END}\nafter\n")
    loso.write_doc(rows, doc, readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{loso.SUMMARY_END}\nafter\n")
    assert "old" not in text and by_choice["frozen"] in text
    assert by_choice["frozen"] in doc.read_text() and "| probe |" in doc.read_text()


def test_archive_copy_report_classifies_the_same_films_resaved(shared_data: Path) -> None:
    from hfxray.audit import archive_copy
    from hfxray.bundle import ROOT as REPO
    from hfxray.images import load_image
    from hfxray.inference import Predictor

    predictor = Predictor.from_pretrained(REPO / "hfxray" / "default_model", backend="torch")
    paths = [str(p) for cls in CLASSES for p in sorted((shared_data / cls).iterdir())[:3]]
    labels = np.array([CLASSES.index(Path(p).parent.name) for p in paths])
    pred = predictor.predict_images([load_image(p) for p in paths]).argmax(axis=1)
    r = loso.archive_copy_report(predictor, loso.archive_copies(paths), labels, pred, CLASSES)

    # the same films, re-saved by hand, classified one by one
    copies = np.array([predictor.predict_images([archive_copy(load_image(p))])[0].argmax() for p in paths])
    assert r["n"] == 9 and r["changed"] == int((copies != pred).sum())
    assert r["changed_ci95"] == pytest.approx(wilson_interval(r["changed"], 9))
    assert r["accuracy"] == pytest.approx(float((copies == labels).mean()))
    for i, cls in enumerate(CLASSES):
        assert r["per_class"][cls]["called"] == {c: int((copies[labels == i] == j).sum()) for j, c in enumerate(CLASSES)}
