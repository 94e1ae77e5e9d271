"""Weight averaging (``--weight_averaging_start``): the saved model is the average of the phase's
steps, not its last step, and a resumed run continues the same average.

Real training (tiny: 96 px, 36 real radiographs) in subprocesses; the averaged weights kept beside
the last checkpoint are compared with the saved model and with that checkpoint's own (last-step)
weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import assert_one_line_error, train_tiny

from hfxray.weight_averaging import AVERAGED_STATE, AVERAGED_WEIGHTS

FLAGS = ("--num_train_epochs", "2", "--keep_checkpoints", "true")


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return train_tiny(data, out, *FLAGS, *extra)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference over the float tensors outside the classifier (calibration rescales it)."""
    keys = [k for k in a if a[k].is_floating_point() and "classifier" not in k]
    assert keys and set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)


@pytest.mark.slow
def test_saved_model_is_the_average_from_the_start_fraction_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "averaged"
    proc = _train(shared_data, out, "--weight_averaging_start", "0.25", "--save_total_limit", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "hfxray.json").read_text())
    steps = max(int(h["step"]) for h in meta["log_history"] if h.get("phase") == "all layers" and "step" in h)
    averaged = steps - int(0.25 * steps)  # the steps after the first quarter
    assert meta["weight_averaging"] == {"start": 0.25, "steps_averaged": averaged}

    last = max((out / "checkpoints" / "all-layers").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert json.loads((last / AVERAGED_STATE).read_text())["n_averaged"] == averaged
    saved = load_file(out / "model.safetensors")
    assert _max_diff(saved, load_file(last / AVERAGED_WEIGHTS)) == 0.0
    assert _max_diff(saved, load_file(last / "model.safetensors")) > 1e-4  # not the last step's weights

    # Resumed from the first all-layer epoch's checkpoint (half-way, the average already running), the
    # run continues that average: it ends with as many averaged steps as the whole run, not only the
    # steps after the restart.
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "all-layers" / last.name)
    first = next((resumed / "checkpoints" / "all-layers").glob("checkpoint-*"))
    assert int(first.name.split("-")[1]) == steps // 2
    assert json.loads((first / AVERAGED_STATE).read_text())["n_averaged"] == steps // 2 - int(0.25 * steps) > 0
    proc = _train(shared_data, resumed, "--weight_averaging_start", "0.25", "--resume_from_checkpoint", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((resumed / "hfxray.json").read_text())["weight_averaging"]["steps_averaged"] == averaged


def test_out_of_range_start_is_a_one_line_error(shared_data: Path, tmp_path: Path) -> None:
    proc = _train(shared_data, tmp_path / "bad", "--weight_averaging_start", "1.5")
    assert_one_line_error(proc, "--weight_averaging_start must be in [0, 1), got 1.5", tmp_path / "bad")
