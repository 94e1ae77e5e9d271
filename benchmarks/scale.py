#!/usr/bin/env python
"""Archive-scale benchmark of ``scripts/predict.py`` as a user runs it: whole processes, cold starts.

    python benchmarks/scale.py [--quick] [--files 20000] [--output benchmarks/scale_results.json]
    python benchmarks/scale.py --modes batch --old_commit '' --fastai_python .venv-bench/bin/python \
        --output benchmarks/scale_results_batch.json      # only the 200-film batch, against fastai

Measures, each as a separate command line (what a shell, a scheduler or a PACS hook pays):

* **start-up**: ``predict.py --help`` and ``predict.py FILM`` (one film, bundled model), median of
  repeats, now and at ``--old_commit`` (7004c21, before the lean start: checked out with
  ``git worktree add`` into a temporary folder and run with its own ``hfxray`` on PYTHONPATH);
* **batch**: one process over ``--batch_films`` shared films, now and at the old commit, and the
  original fastai recipe when ``--fastai_python`` (default: this interpreter) has fastai (else
  reported as not run): fastai needs its own venv, the project venv's exact packages stay as they are;
* **archive**: ``--files`` symlinks to the shared films in a temporary folder, predicted by 1
  process, by 2 processes (``accelerate launch --multi_gpu --num_processes 2``) and by 2 independent
  shard jobs + ``--merge``: images/s over the whole command, peak RSS of every process (sampled with
  psutil every 0.25 s) and the RSS at 25 % / 50 % / 100 % of the single run (flat memory);
* **kill and resume**: the single run interrupted with SIGINT half-way, then ``--resume``d: the final
  CSV must hold every file exactly once.

``--quick`` shrinks every size for a CI-like check (about a minute or two). The machine may be
shared: the load average at start and end is recorded with the numbers. Research software, not a
diagnostic device.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from run import has_fastai  # benchmarks/run.py, beside this script (sys.path[0] when run)

REPO = Path(__file__).resolve().parents[1]
PREDICT = REPO / "scripts" / "predict.py"
SHARED = REPO.parent / "shared" / "data" / "covid19-xray" / "train"
PYTHON = sys.executable


# ------------------------------------------------------------------------------------ helpers
def shared_films(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def make_archive(folder: Path, films: list[Path], n: int) -> list[str]:
    """n symlinks to the films, 1000 per sub-folder (as an archive would be laid out); their paths."""
    out = []
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        film = films[i % len(films)]
        link = sub / f"film{i:07d}{film.suffix}"
        link.symlink_to(film)
        out.append(str(link))
    return out


class RssMonitor:
    """Peak RSS of a process and all its descendants, per process, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, dict[str, Any]] = {}
        self.samples: list[tuple[float, float]] = []  # (seconds, largest predict.py process RSS in MiB)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            largest = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    entry = self.peaks.setdefault(p.pid, {"cmd": _role(p), "peak_rss_mib": 0.0})
                    entry["peak_rss_mib"] = max(entry["peak_rss_mib"], rss)
                    if entry["cmd"] == "predict.py":
                        largest = max(largest, rss)
                except psutil.Error:
                    continue
            self.samples.append((time.monotonic() - self._start, largest))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        workers = [v for v in self.peaks.values() if v["cmd"] == "predict.py"]
        return {
            "processes": sorted(self.peaks.values(), key=lambda v: -v["peak_rss_mib"]),
            "predict_processes": len(workers),
            "max_peak_rss_mib_per_predict_process": round(
                max((w["peak_rss_mib"] for w in workers), default=0), 1
            ),
        }

    def flatness(self) -> dict[str, float]:
        """Largest-process RSS at 25/50/100 % of the run: flat memory means these barely differ."""
        if not self.samples:
            return {}
        end = self.samples[-1][0]
        out = {}
        for share in (0.25, 0.5, 1.0):
            rss = [r for t, r in self.samples if t <= share * end and r > 0]
            out[f"rss_mib_at_{int(share * 100)}pct"] = round(rss[-1], 1) if rss else 0.0
        return out


def _role(proc: Any) -> str:
    try:
        cmd = proc.cmdline()
    except Exception:
        return "?"
    if any(c.endswith("predict.py") for c in cmd) and not any("accelerate" in Path(c).name for c in cmd[:2]):
        return "predict.py"
    return Path(cmd[1]).name if len(cmd) > 1 else (Path(cmd[0]).name if cmd else "?")


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, monitor: bool = False,
        timeout: float = 7200) -> dict[str, Any]:  # fmt: skip
    """Run a command; wall seconds, exit code, the tail of stderr, and per-process RSS when asked."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = RssMonitor(proc.pid) if monitor else None
    out, err = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"wall_s": round(wall, 3), "returncode": proc.returncode}
    if proc.returncode != 0:
        result["stderr_tail"] = err[-1500:]
    if mon is not None:
        result["rss"] = mon.stop()
        result["rss_flatness"] = mon.flatness()
    result["stdout_tail"] = out[-600:]
    return result


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env_for(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(pythonpath), "TQDM_DISABLE": "1"}


def check_csv(path: Path, expected: list[str]) -> dict[str, Any]:
    """Every expected path exactly once?"""
    with path.open(newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    counts = Counter(paths)
    return {
        "rows": len(paths),
        "unique": len(counts),
        "every_file_exactly_once": len(paths) == len(expected) and set(counts) == set(expected)
        and max(counts.values()) == 1,
    }  # fmt: skip


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------ parts
def old_checkout(commit: str, where: Path) -> Path:
    """A worktree of the old commit (created once; never touches the main checkout's files)."""
    if not (where / "scripts" / "predict.py").is_file():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit], check=True,
                       capture_output=True)  # fmt: skip
    found = subprocess.run(
        [PYTHON, "-c", "import hfxray, sys; print(hfxray.__file__)"],
        env=env_for(where), cwd=where, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not found.startswith(str(where)):
        raise RuntimeError(f"the old checkout's hfxray is shadowed by {found}")
    return where


def startup(repo: Path, film: Path, tmp: Path, repeats: int) -> dict[str, Any]:
    env = env_for(repo)
    script = str(repo / "scripts" / "predict.py")
    helps, ones = [], []
    for _ in range(repeats):
        helps.append(run([PYTHON, script, "--help"], env=env)["wall_s"])
        out = Path(tempfile.mkdtemp(dir=tmp)) / "one.csv"
        r = run([PYTHON, script, str(film), "--output", str(out)], env=env)
        if r["returncode"] != 0:
            raise RuntimeError(f"predict.py failed: {r.get('stderr_tail')}")
        ones.append(r["wall_s"])
    return {
        "help_s": {"median": statistics.median(helps), "min": min(helps), "all": helps},
        "one_film_s": {"median": statistics.median(ones), "min": min(ones), "all": ones},
    }


def _merge_startup(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("help_s", "one_film_s"):
        values = [v for r in runs for v in r[key]["all"]]
        out[key] = {"median": statistics.median(values), "min": min(values), "all": values}
    return out


def batch_whole_process(repo: Path, films: list[Path], tmp: Path) -> dict[str, Any]:
    out = tmp / f"batch-{repo.name}.csv"
    r = run([PYTHON, str(repo / "scripts" / "predict.py"), *map(str, films), "--output", str(out)],
            env=env_for(repo), monitor=True)  # fmt: skip
    r["images_per_s"] = round(len(films) / r["wall_s"], 1)
    return r


FASTAI_SCRIPT = """
import sys
from fastai.vision.all import ImageDataLoaders, Resize, accuracy, resnet50, vision_learner
files = sys.argv[2:]
dls = ImageDataLoaders.from_folder(sys.argv[1], valid_pct=0.2, seed=42, item_tfms=Resize(224), bs=16)
learn = vision_learner(dls, resnet50, pretrained=False, metrics=accuracy)
with learn.no_bar():
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
print(len(probs))
"""


def batch_fastai(films: list[Path], python: str = PYTHON) -> dict[str, Any]:
    """The original recipe as a whole process, run by ``python`` (a venv of its own: see make bench-venv)."""
    if not has_fastai(python):
        return {"not_run": f"fastai is not installed for {python} (make bench-venv, then --fastai_python)"}
    r = run([python, "-c", FASTAI_SCRIPT, str(SHARED), *map(str, films)], env=env_for(REPO), monitor=True)
    r["python"] = python
    if r["returncode"] == 0:
        r["images_per_s"] = round(len(films) / r["wall_s"], 1)
    return r


def archive_runs(films: list[Path], n: int, tmp: Path, modes: list[str]) -> dict[str, Any]:
    folder = tmp / "archive"
    expected = make_archive(folder, films, n)
    env = env_for(REPO)
    out: dict[str, Any] = {"files": n}

    if "single" in modes:
        csv1 = tmp / "single.csv"
        r = run([PYTHON, str(PREDICT), str(folder), "--output", str(csv1)], env=env, monitor=True)
        r.update(check_csv(csv1, expected), images_per_s=round(n / r["wall_s"], 1))
        out["one_process"] = r

    if "accelerate" in modes:
        csv2 = tmp / "accelerate.csv"
        accelerate = str(Path(PYTHON).with_name("accelerate"))
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(PREDICT), str(folder), "--output", str(csv2)]  # fmt: skip
        r = run(cmd, env=env, monitor=True)
        r.update(check_csv(csv2, expected), images_per_s=round(n / r["wall_s"], 1))
        out["two_processes_accelerate"] = r

    if "shards" in modes:
        csv3 = tmp / "shards.csv"
        start = time.perf_counter()
        jobs = [
            subprocess.Popen([PYTHON, str(PREDICT), str(folder), "--output", str(csv3), "--num_shards", "2",
                              "--shard_index", str(i)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(2)
        ]  # fmt: skip
        monitors = [RssMonitor(j.pid) for j in jobs]
        codes = [j.wait() for j in jobs]
        rss = [m.stop() for m in monitors]
        merged = run([PYTHON, str(PREDICT), "--merge", "--num_shards", "2", "--output", str(csv3)], env=env)
        wall = time.perf_counter() - start
        r = {
            "wall_s": round(wall, 3),
            "returncodes": [*codes, merged["returncode"]],
            "merge_s": merged["wall_s"],
            "max_peak_rss_mib_per_predict_process": max(
                x["max_peak_rss_mib_per_predict_process"] for x in rss
            ),
            "images_per_s": round(n / wall, 1),
        }
        r.update(check_csv(csv3, expected))
        out["two_shard_jobs"] = r

    if "resume" in modes:
        csv4 = tmp / "resume.csv"
        part = Path(str(csv4) + ".part")
        cmd = [PYTHON, str(PREDICT), str(folder), "--output", str(csv4)]
        start = time.perf_counter()
        # SIG_DFL in the child: a shell's background job ignores SIGINT, and Python then never raises
        # KeyboardInterrupt (the run would finish despite the signal)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)  # fmt: skip
        while proc.poll() is None:
            if part.is_file() and part.stat().st_size > 0:
                with part.open("rb") as f:
                    if sum(1 for _ in f) - 1 >= n // 2:
                        break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        first_wall = time.perf_counter() - start
        output_after_sigint = csv4.exists()
        if not part.is_file():  # it ended before the signal (or failed): say so instead of crashing
            return {**out, "kill_and_resume": {"error": f"no part file after SIGINT (exit {proc.returncode})",
                                                "stderr_tail": err[-1500:]}}  # fmt: skip
        with part.open(newline="", encoding="utf-8") as f:
            rows_before = sum(1 for _ in csv.DictReader(f))
        resumed = run([*cmd, "--resume"], env=env)
        r = {
            "interrupted_returncode": proc.returncode,
            "rows_in_part_after_sigint": rows_before,
            "first_run_s": round(first_wall, 3),
            "resume_s": resumed["wall_s"],
            "resume_returncode": resumed["returncode"],
            "output_existed_after_sigint": output_after_sigint,  # must be False: only finished runs
        }
        r.update(check_csv(csv4, expected))
        out["kill_and_resume"] = r
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a CI-like check")
    parser.add_argument("--files", type=int, default=20000, help="archive size (symlinks)")
    parser.add_argument("--batch_films", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="start-up repeats")
    parser.add_argument("--old_commit", default="7004c21", help="'before' for start-up/batch ('' to skip)")
    parser.add_argument(
        "--modes",
        default="startup,batch,single,accelerate,shards,resume",
        help="which parts to run (comma-separated)",
    )
    parser.add_argument("--fastai_python", default=PYTHON,
                        help="interpreter with fastai for the batch baseline (e.g. .venv-bench/bin/python)")  # fmt: skip
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "scale_results.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.batch_films, args.repeats = 300, 40, 2

    modes = args.modes.split(",")
    films = shared_films(SHARED)
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other work)",
        "load_average_start": load(),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="hfx-scale-") as tmp_name:
        tmp = Path(tmp_name)
        old = None
        if args.old_commit and {"startup", "batch"} & set(modes):
            old = old_checkout(args.old_commit, Path(tempfile.gettempdir()) / f"hfx-old-{args.old_commit}")
        if "startup" in modes:
            print("start-up ...", file=sys.stderr)
            sides = {"now": REPO} | ({f"before ({args.old_commit})": old} if old is not None else {})
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
            for _ in range(args.repeats):  # interleaved: a change in the machine's load hits both sides
                for name, repo in sides.items():
                    runs[name].append(startup(repo, films[0], tmp, 1))
            result["startup"] = {name: _merge_startup(r) for name, r in runs.items()}
        if "batch" in modes:
            # spread over the classes, as a real batch would be
            batch = films[:: max(1, len(films) // args.batch_films)][: args.batch_films]
            print(f"batch of {len(batch)} films ...", file=sys.stderr)
            result["batch"] = {"films": len(batch), "now": batch_whole_process(REPO, batch, tmp)}
            if old is not None:
                result["batch"][f"before ({args.old_commit})"] = batch_whole_process(old, batch, tmp)
            now = result["batch"]["now"]
            fastai = result["batch"]["fastai"] = batch_fastai(batch, args.fastai_python)
            if fastai.get("returncode") == 0 and now["returncode"] == 0:  # the ">= 5x" measure
                result["batch"]["fastai_wall_over_now"] = round(fastai["wall_s"] / now["wall_s"], 2)
        if {"single", "accelerate", "shards", "resume"} & set(modes):
            print(f"archive of {args.files} files ...", file=sys.stderr)
            result["archive"] = archive_runs(films, args.files, tmp, modes)
    result["load_average_end"] = load()

    output = Path(args.output)
    fd, tmp_json = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_json, output)
    print(json.dumps(summary(result), indent=2))
    failures = [
        k
        for k, v in result.get("archive", {}).items()
        if isinstance(v, dict) and not v.get("every_file_exactly_once")
    ]
    return 1 if failures else 0


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (what the README quotes)."""
    out: dict[str, Any] = {"load_average": [result["load_average_start"], result["load_average_end"]]}
    for name, s in result.get("startup", {}).items():
        out[f"startup {name}: --help / one film (median s)"] = (
            s["help_s"]["median"],
            s["one_film_s"]["median"],
        )
    for name, b in result.get("batch", {}).items():
        if isinstance(b, dict):
            out[f"batch {name}"] = b.get("images_per_s", b.get("not_run"))
            if "wall_s" in b:
                out[f"batch {name}: whole-process s"] = b["wall_s"]
    if "fastai_wall_over_now" in result.get("batch", {}):
        out["batch: fastai whole-process s / now"] = result["batch"]["fastai_wall_over_now"]
    for name, a in result.get("archive", {}).items():
        if isinstance(a, dict):
            out[f"archive {name}"] = {
                k: a.get(k)
                for k in ("images_per_s", "every_file_exactly_once", "max_peak_rss_mib_per_predict_process",
                          "rows_in_part_after_sigint")
                if k in a or k == "max_peak_rss_mib_per_predict_process"
            }  # fmt: skip
            if "rss" in a:
                out[f"archive {name}"]["max_peak_rss_mib_per_predict_process"] = a["rss"][
                    "max_peak_rss_mib_per_predict_process"
                ]
                out[f"archive {name}"]["flatness"] = a.get("rss_flatness")
    return out


if __name__ == "__main__":
    sys.exit(main())
