"""Tiny real training runs of scripts/train.py for the tests of its training options.

Shared by the weight-averaging, MixStyle and RandConv tests: 96 px, 36 real radiographs, one epoch per
phase, no range test and no gate, in a subprocess as a user runs it (minutes of CPU spared per test).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = (
    "--image_size", "96", "--max_train_samples", "36", "--head_epochs", "1", "--num_train_epochs", "1",
    "--learning_rate_find", "false", "--per_device_train_batch_size", "8", "--fit_input_gate", "false",
    "--model_name_or_path", "efficientnet-lite0",
)


def train_tiny(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """scripts/train.py on ``data`` with the tiny flags; later flags in ``extra`` override them."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data_dir", str(data), "--output_dir", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([*cmd, *TINY_FLAGS, *extra], env=env, capture_output=True, text=True, timeout=900)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """A refused argument: non-zero exit, the message, no traceback, nothing written."""
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
