"""benchmarks/shortcut_compare.py: the parts between training and the table, on real radiographs.

Training is the library's own command (tested elsewhere) and takes minutes, so it is not run here;
the held-out folder rebuild, the leakage record, a real audit of a tiny model on that folder, the
comparison row and the docs update are.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "shortcut_compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("hfxray_benchmarks_shortcut_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _pick(shared_data: Path, per_class: int, skip: int = 0) -> list[str]:
    """Relative paths (as training records them) of real films, ``per_class`` from each class folder."""
    rels = []
    for cls in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())[skip : skip + per_class]
        rels += [f.relative_to(shared_data).as_posix() for f in files]
    return rels


def test_validation_folder_is_rebuilt_from_the_recorded_split(shared_data, tmp_path):
    sc = _load()
    first, second = _pick(shared_data, 2), _pick(shared_data, 1, skip=5)
    val_dir = tmp_path / "validation"
    assert sc.rebuild_validation_folder({"split": {"validation_files": first}}, shared_data, val_dir) == len(
        first
    )
    linked = sorted(p.relative_to(val_dir).as_posix() for p in val_dir.rglob("*") if p.is_symlink())
    assert linked == sorted(first)
    for rel in first:
        assert (val_dir / rel).resolve() == (shared_data / rel).resolve()
        assert (val_dir / rel).read_bytes()[:16] == (shared_data / rel).read_bytes()[:16]

    # A rerun replaces the previous links instead of mixing two splits; the originals stay.
    sc.rebuild_validation_folder({"split": {"validation_files": second}}, shared_data, val_dir)
    linked = sorted(p.relative_to(val_dir).as_posix() for p in val_dir.rglob("*") if p.is_symlink())
    assert linked == sorted(second)
    assert all((shared_data / rel).is_file() for rel in first)

    with pytest.raises(FileNotFoundError, match="Covid/no-such-film.png"):
        sc.rebuild_validation_folder(
            {"split": {"validation_files": ["Covid/no-such-film.png"]}}, shared_data, val_dir
        )
    with pytest.raises(ValueError, match="validation_files"):
        sc.rebuild_validation_folder({"split": {}}, shared_data, val_dir)


def test_leakage_record_keeps_only_training_files(shared_data):
    from hfxray.data import file_sha256

    sc = _load()
    rels = _pick(shared_data, 2)
    held_out = rels[::2]
    meta = {
        "split": {"validation_files": held_out},
        "training_data": {
            "dir": str(shared_data),
            "n": len(rels),
            "files": {file_sha256(shared_data / r): r for r in rels},
            "phash": {r: "0" * 16 for r in rels},
        },
    }
    record = sc.training_only_record(meta)
    assert sorted(record["files"].values()) == sorted(set(rels) - set(held_out))
    assert sorted(record["phash"]) == sorted(set(rels) - set(held_out))
    assert len(meta["training_data"]["files"]) == len(set(meta["training_data"]["files"].values()))
    assert sorted(meta["training_data"]["phash"]) == sorted(rels)  # the model's record is not edited


def test_audit_row_and_docs_table_from_a_real_audit(tiny_model_dir, shared_data, tmp_path):
    sc = _load()
    val_files = _pick(shared_data, 1)
    train_files = _pick(shared_data, 1, skip=3)
    from hfxray.data import file_sha256

    meta = {
        "image_size": 224,
        "split": {"validation_files": val_files, "n_train": len(train_files)},
        "training_data": {
            "dir": str(shared_data),
            "files": {file_sha256(shared_data / r): r for r in train_files + val_files},
        },
        "validation": {"n": 3, "accuracy": 1 / 3, "accuracy_ci95": [0.06, 0.79], "macro_f1": 0.2},
        "ece_after": 0.1,
    }
    val_dir = tmp_path / "validation"
    sc.rebuild_validation_folder(meta, shared_data, val_dir)
    result = sc.audit(tiny_model_dir, val_dir, tmp_path / "audit", meta)
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["n"] == len(val_files)
    # Validation films are in the model's record but held out of training: only true copies of
    # training films count as leaked, not every held-out film matching itself.
    train_shas = {file_sha256(shared_data / r) for r in train_files}
    assert result["leakage"]["n_exact"] == sum(file_sha256(shared_data / r) in train_shas for r in val_files)

    row = sc.summarise("baseline", ["--augmentation", "default"], "test", meta, result, wall_s=90.0)
    assert row["border_only"]["accuracy"] == result["border_only"]["accuracy"]
    rates = [
        t["flip_rate"] for t in result["invariance"]["transforms"].values() if t["flip_rate"] is not None
    ]
    assert row["max_flip_rate"] == max(rates)
    assert row["mean_flip_rate"] == pytest.approx(sum(rates) / len(rates))
    assert row["shortcut_risk"] in {"low", "moderate", "high"}

    payload = {
        "date": "today",
        "machine": "test",
        "seed": 42,
        "data_dir": "d",
        "quick": False,
        "results": [row],
    }
    payload["results"].append(
        {"name": "shortcut-aug", "flags": [], "error": "scripts/train.py exited with 1"}
    )
    doc = tmp_path / "shortcuts.md"
    doc.write_text(
        "# Title\n\nHand-written method.\n\n"
        + sc.BEGIN_MARK
        + "\nold table\n"
        + sc.END_MARK
        + "\n\n## Recommendation\nkeep me\n"
    )
    sc.write_doc(doc, sc.markdown_tables(payload))
    text = doc.read_text()
    assert "Hand-written method." in text and "## Recommendation\nkeep me" in text
    assert "old table" not in text
    table_row = next(line for line in text.splitlines() if line.startswith("| `baseline`"))
    assert f"{100 * result['border_only']['accuracy']:.0f}%" in table_row
    assert "1.5 min" in table_row
    assert "| `shortcut-aug` | failed: scripts/train.py exited with 1" in text
