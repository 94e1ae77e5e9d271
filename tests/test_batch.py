"""Archive-scale prediction on real films with the bundled ONNX model: lean start (no torch in the
process), streamed part files, Ctrl-C then --resume, shards, accelerate processes, datasets input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfxray import batch
from hfxray.inference import Predictor
from hfxray.prediction_csv import csv_columns, read_records, restore_cell

REPO = Path(__file__).resolve().parents[1]
PREDICT = REPO / "scripts" / "predict.py"
HEAVY = ("torch", "transformers", "datasets", "accelerate")


def _films(shared_data: Path, n: int) -> list[Path]:
    """n real radiographs, taken in turn from each class folder."""
    per_class = [
        sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(shared_data.iterdir()) if d.is_dir()
    ]
    out = [films[i] for i in range(max(map(len, per_class))) for films in per_class if i < len(films)]
    assert len(out) >= n
    return out[:n]


def _links(shared_data: Path, folder: Path, n: int) -> list[str]:
    """n distinct paths (symlinks) to real films, as an archive of n files."""
    folder.mkdir(parents=True, exist_ok=True)
    films = _films(shared_data, 60)
    out = []
    for i in range(n):
        link = folder / f"film{i:05d}{films[i % len(films)].suffix}"
        link.symlink_to(films[i % len(films)])
        out.append(str(link))
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    p = Predictor.from_pretrained()  # the bundled model: model.onnx, the lean path
    assert p.backend == "onnx"
    return p


# ------------------------------------------------------------------ lean start
LEAN_PROBE = """
import json, runpy, sys
ns = runpy.run_path({script!r})
code = ns["main"]({argv!r})
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _probe(argv: list[str], cwd: Path) -> dict:
    code = LEAN_PROBE.format(script=str(PREDICT), argv=argv, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_film_on_the_onnx_path_imports_no_torch_transformers_or_datasets(shared_data, tmp_path):
    film = _films(shared_data, 1)[0]
    result = _probe([str(film), "--output", str(tmp_path / "one.csv")], tmp_path)
    assert result == {"code": 0, "heavy": []}
    (row,) = _rows(tmp_path / "one.csv")
    assert row["path"] == str(film) and row["predicted"] in ("Covid", "Normal", "Viral Pneumonia")


def test_help_imports_nothing_heavy(tmp_path):
    code = (
        f"import runpy, sys\nns = runpy.run_path({str(PREDICT)!r})\ntry:\n    ns['main'](['--help'])\nexcept SystemExit:\n"
        f"    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "--num_shards" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ streaming and resume
class _Stop(Exception):
    pass


def test_interrupted_run_resumes_with_every_file_exactly_once(predictor, shared_data, tmp_path):
    paths = _links(shared_data, tmp_path / "archive", 40)
    broken = tmp_path / "archive" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths.append(str(broken))
    output = tmp_path / "out" / "predictions.csv"
    finished = []

    def interrupt_after_16(n: int) -> None:
        finished.append(n)
        if sum(finished) >= 16:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        batch.predict_to_csv(predictor, paths, output, progress=interrupt_after_16)
    part = batch.part_path(output)
    assert not output.exists() and part.is_file()  # an output file always means a finished run
    first = list(read_records(part, predictor.classes))  # a valid CSV of the finished rows
    assert 16 <= len(first) < len(paths)
    assert [restore_cell(r[0]) for r in first] == paths[: len(first)]
    with part.open("a", encoding="utf-8", newline="") as f:
        f.write(f"{paths[len(first)]},Nor")  # a row cut short by a kill: must be dropped

    with pytest.raises(FileExistsError, match="--resume"):
        batch.predict_to_csv(predictor, paths, output)  # never mixes runs silently
    summary = batch.predict_to_csv(predictor, paths, output, resume=True, batch_size=4)

    assert summary.n_skipped_done == len(first) and summary.n_rows == len(paths) - len(first)
    assert summary.merged_rows == len(paths)
    assert not batch.existing_parts(output)
    rows = _rows(output)
    assert [r["path"] for r in rows] == paths  # every file exactly once, in input order
    assert rows[-1]["error"] and not rows[-1]["predicted"]
    # the resumed CSV holds the same answers as one uninterrupted run
    whole = {r.path: r for r in predictor.predict_paths(paths)}
    for r in rows[:-1]:
        for c in predictor.classes:
            assert float(r[f"prob_{c}"]) == pytest.approx(whole[r["path"]].probs[c], abs=1e-6)
    # resuming a finished run predicts nothing and keeps the output
    again = batch.predict_to_csv(predictor, paths, output, resume=True)
    assert again.n_rows == 0 and again.n_skipped_done == len(paths) and _rows(output) == rows


def test_ctrl_c_in_the_script_leaves_a_valid_part_then_resume_completes(shared_data, tmp_path):
    paths = _links(shared_data, tmp_path / "archive", 300)
    output = tmp_path / "predictions.csv"
    part = batch.part_path(output)
    args = [sys.executable, str(PREDICT), str(tmp_path / "archive"), "--output", str(output)]
    proc = subprocess.Popen(  # SIG_DFL: under a background shell job SIGINT would be ignored
        args,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if part.is_file() and len(part.read_text(encoding="utf-8").splitlines()) > 8:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "--resume" in err and not output.exists()
    done = [restore_cell(r[0]) for r in read_records(part, ["Covid", "Normal", "Viral Pneumonia"])]
    assert 8 <= len(done) < len(paths)

    resumed = subprocess.run([*args, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} already done" in resumed.stdout
    rows = _rows(output)
    assert sorted(r["path"] for r in rows) == sorted(paths) and len(rows) == len(paths)
    assert not part.exists()


def test_refuses_to_clobber_or_mix_runs(shared_data, tmp_path):
    film = str(_films(shared_data, 1)[0])
    output = tmp_path / "p.csv"
    run = [sys.executable, str(PREDICT), film, "--output", str(output)]
    output.write_text("precious\n")
    r = subprocess.run(run, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--overwrite" in r.stderr and output.read_text() == "precious\n"
    r = subprocess.run(
        [*run, "--resume", "--overwrite"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "contradict" in r.stderr
    # a CSV of another schema is never appended to
    r = subprocess.run([*run, "--resume"], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "columns" in r.stderr and output.read_text() == "precious\n"


# ------------------------------------------------------------------ shards and processes
def test_shards_then_merge_equal_one_run(predictor, shared_data, tmp_path):
    paths = [str(p) for p in _films(shared_data, 13)]
    output = tmp_path / "predictions.csv"
    for i in range(3):
        s = batch.predict_to_csv(predictor, paths, output, shard=(i, 3))
        assert s.output == tmp_path / f"predictions-{i:05d}-of-00003.csv"
    assert [len(_rows(tmp_path / f"predictions-{i:05d}-of-00003.csv")) for i in range(3)] == [5, 4, 4]
    merged = subprocess.run(
        [sys.executable, str(PREDICT), "--merge", "--num_shards", "3", "--output", str(output)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert merged.returncode == 0, merged.stderr
    assert [r["path"] for r in _rows(output)] == paths
    one = tmp_path / "one.csv"
    batch.predict_to_csv(predictor, paths, one)
    assert _rows(one) == _rows(output)
    for i in range(3):  # a 4-shard run with one shard unfinished
        batch.predict_to_csv(predictor, paths, tmp_path / "four.csv", shard=(i, 4))
    with pytest.raises(FileNotFoundError, match="1 of 4 shard"):
        batch.merge_shards(tmp_path / "four.csv", 4, predictor.classes)


def test_shard_bounds_split_like_accelerate():
    shares = [batch.shard_bounds(10, i, 3) for i in range(3)]
    assert [list(range(10))[s] for s in shares] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="shard index"):
        batch.shard_bounds(10, 3, 3)


@pytest.mark.slow
def test_accelerate_launch_two_processes_write_one_csv(shared_data, tmp_path):
    paths = [str(p) for p in _films(shared_data, 9)]
    output = tmp_path / "predictions.csv"
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(PREDICT), *paths, "--output", str(output)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0/2" in result.stdout and "process 1/2" in result.stdout
    assert [r["path"] for r in _rows(output)] == paths  # contiguous shares, merged in order
    assert not batch.existing_parts(output)


def test_datasets_imagefolder_is_streamed(predictor, shared_data, tmp_path):
    films = _films(shared_data, 6)
    root = tmp_path / "ds" / "test"
    for film in films:
        (root / film.parent.name).mkdir(parents=True, exist_ok=True)
        (root / film.parent.name / film.name).symlink_to(film)
    output = tmp_path / "predictions.csv"

    def sources(context: batch.ProcessContext):
        return batch.dataset_sources(str(tmp_path / "ds"), "test", context=context)

    summary = batch.predict_to_csv(predictor, sources, output)
    assert summary.n_ok == 6
    rows = {Path(r["path"]).name: r for r in _rows(output)}
    by_path = {Path(r.path).name: r for r in predictor.predict_paths(films)}
    assert set(rows) == set(by_path)
    for name, r in rows.items():
        assert r["predicted"] == (by_path[name].predicted or "")
        assert float(r["prob_Covid"]) == pytest.approx(by_path[name].probs["Covid"], abs=1e-6)
    with pytest.raises(ValueError, match="no 'pixels' column"):
        list(batch.dataset_sources(str(tmp_path / "ds"), "test", image_column="pixels"))


def test_csv_columns_match_the_model(predictor):
    assert csv_columns(predictor.classes)[-3:] == ["refused", "warning", "error"]
