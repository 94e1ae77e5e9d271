"""Resumable training: a run killed after its first all-layer epoch continues from its checkpoint.

Real training (tiny: 96 px, 36 real radiographs) in subprocesses, a real SIGKILL, then
``--resume_from_checkpoint last``; the resumed run must end with the same number of optimisation
steps as an uninterrupted one, and keep its checkpoints under the output directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--image_size", "96", "--max_train_samples", "36", "--head_epochs", "1", "--num_train_epochs", "3",
    "--learning_rate_find", "false", "--per_device_train_batch_size", "8", "--fit_input_gate", "false",
    "--model_name_or_path", "efficientnet-lite0", "--keep_checkpoints", "true",
]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--data_dir", str(data), "--output_dir", str(out), *FLAGS, *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def _steps(model_dir: Path) -> dict[str, int]:
    history = json.loads((model_dir / "hfxray.json").read_text())["log_history"]
    out: dict[str, int] = {}
    for h in history:
        if "step" in h:
            out[h["phase"]] = max(out.get(h["phase"], 0), int(h["step"]))
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_number_of_steps(shared_data: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    proc = subprocess.run(_cmd(shared_data, whole), env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _steps(whole)
    assert expected["all layers"] > expected["head"] > 0

    cut = tmp_path / "cut"
    run = subprocess.Popen(_cmd(shared_data, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    first = None
    while first is None and time.monotonic() < deadline and run.poll() is None:
        done = sorted((cut / "checkpoints" / "all-layers").glob("checkpoint-*/trainer_state.json"))
        first = done[0] if done else None
        time.sleep(0.1)
    assert first is not None, "the run ended before its first all-layer checkpoint"
    time.sleep(0.5)  # let the checkpoint's files close
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert not (cut / "hfxray.json").exists(), "the run finished before it was killed"

    # A plain rerun refuses (it would lose the checkpoints) and says how to continue.
    again = subprocess.run(_cmd(shared_data, cut), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--resume_from_checkpoint last" in again.stderr

    resumed = subprocess.run(
        _cmd(shared_data, cut, "--resume_from_checkpoint", "last"), env=_env(), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(cut) == expected
    assert list((cut / "checkpoints" / "all-layers").glob("checkpoint-*")), "checkpoints not kept"
    assert (cut / "model.safetensors").is_file()
