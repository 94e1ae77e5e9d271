"""Load test of the Gradio Space: N concurrent gradio_client users for a fixed time.

    python benchmarks/load_space.py --users 20 --seconds 60          # starts its own server
    python benchmarks/load_space.py --quick                          # 3 users, 10 s
    python benchmarks/load_space.py --url http://127.0.0.1:7860/ --server-pid 1234

Each user is a thread with its own ``gradio_client.Client`` calling ``/predict`` with a real
radiograph in a loop. Prints requests/s, p50/p95 latency, errors and the peak resident memory of
the server process tree (psutil, sampled every 0.2 s), and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing

SHARED = ROOT.parent / "shared" / "data" / "covid19-xray" / "train"


def _default_images() -> list[str]:
    files = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no radiographs under {SHARED}; pass --image")
    return [str(files[i]) for i in range(0, len(files), max(1, len(files) // 8))][:8]


def _tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_load(url: str, images: list[str], users: int, seconds: float, server_pid: int | None) -> dict:
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    peak = {"rss": _tree_rss(server_pid) if server_pid else 0}
    start_rss = peak["rss"]

    def monitor() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _tree_rss(server_pid))
            stop.wait(0.2)

    def user(i: int, deadline: float) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # count, keep going: a load test reports failures, it does not die
            with lock:
                errors.append(f"connect: {type(e).__name__}: {e}")
            return
        k = i
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                label, _heatmap, result, warnings = client.predict(
                    handle_file(images[k % len(images)]), api_name="/predict"
                )
                if not isinstance(label, dict) or "could not be read" in result:
                    raise ValueError(f"no answer: {warnings}")
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            k += 1

    if server_pid:
        threading.Thread(target=monitor, daemon=True).start()
    t_start = time.monotonic()
    deadline = t_start + seconds
    threads = [threading.Thread(target=user, args=(i, deadline)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start  # includes the requests still running at the deadline
    stop.set()
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "url": url,
        "users": users,
        "seconds": seconds,
        "elapsed_s": round(elapsed, 2),
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "requests_per_s": round(len(latencies) / elapsed, 3),
        "latency_p50_s": round(float(np.nanpercentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.nanpercentile(lat, 95)), 3),
        "latency_max_s": round(float(np.nanmax(lat)), 3),
        "server_rss_start_mb": round(start_rss / 2**20, 1) if server_pid else None,
        "server_rss_peak_mb": round(peak["rss"] / 2**20, 1) if server_pid else None,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="3 users for 10 s")
    parser.add_argument("--url", help="an already running Space; default: start one on a free loopback port")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for memory figures")
    parser.add_argument("--model", help="model dir or Hub id for the started server (default: bundled)")
    parser.add_argument("--image", action="append", help="image(s) to send (default: 8 shared radiographs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "load_space.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.seconds = 3, 10.0
    images = args.image or _default_images()

    proc = None
    url, pid = args.url, args.server_pid
    if url is None:
        from hfxray.space_app import spawn_server

        out_dir = Path(args.out).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        log = out_dir / "load_space_server.log"
        log.unlink(missing_ok=True)
        proc, url = spawn_server(args.model, log_path=log)
        pid = proc.pid
    try:
        result = run_load(url, images, args.users, args.seconds, pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result["model"] = args.model or os.environ.get("HFXRAY_MODEL") or "bundled default"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"{result['users']} users x {result['seconds']:.0f}s: {result['requests']} requests, "
        f"{result['requests_per_s']:.2f} req/s, p50 {result['latency_p50_s']:.2f}s, "
        f"p95 {result['latency_p95_s']:.2f}s, errors {result['errors']}, "
        f"server peak RSS {result['server_rss_peak_mb']} MB -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
