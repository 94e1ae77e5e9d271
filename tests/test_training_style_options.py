"""Training-only options (``--mixstyle``, ``--randconv``, ``--source_adversary``, ``--frozen_stages``): a real tiny run records
the option in hfxray.json and saves an ordinary model directory (the backbone's weights, nothing added,
no hook left on the reloaded model); an out-of-range value is refused in one line before anything is
written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import assert_one_line_error, train_tiny

from hfxray import modeling

OPTIONS = ["mixstyle", "randconv"]


@pytest.mark.slow
@pytest.mark.parametrize("option", OPTIONS)
def test_training_with_the_option_saves_an_ordinary_model(option: str, shared_data: Path, lite0, tmp_path: Path) -> None:
    out = tmp_path / option
    proc = train_tiny(shared_data, out, f"--{option}", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "hfxray.json").read_text())[option] == 0.5
    _assert_ordinary_model_dir(out, lite0)


def _assert_ordinary_model_dir(out: Path, lite0) -> None:
    assert set(load_file(out / "model.safetensors")) == set(lite0[0].state_dict())  # no extra weights
    reloaded, _ = modeling.load_model(out)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in reloaded.modules())


@pytest.mark.slow
def test_source_adversary_trains_against_real_sources_and_saves_an_ordinary_model(
    shared_data: Path, lite0, tmp_path: Path
) -> None:
    out = tmp_path / "adversary"
    several = [str(shared_data), str(shared_data.parents[1] / "cxr-multisource")]  # sources to tell apart
    proc = train_tiny(shared_data, out, "--data_dir", *several, "--max_train_samples", "48", "--source_adversary", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "hfxray.json").read_text())
    assert meta["source_adversary"] == 1.0
    assert len(meta["sources"]["train"]["Normal"]) >= 2  # a class with several sources: a real question
    logged = [h["source_adversary_loss"] for h in meta["log_history"] if "source_adversary_loss" in h]
    assert logged and all(v > 0 for v in logged)  # the head's loss, logged in the all-layer phase only
    assert not any("source_adversary_loss" in h for h in meta["log_history"] if h["phase"] == "head")
    _assert_ordinary_model_dir(out, lite0)


@pytest.mark.slow
def test_frozen_stages_keep_the_early_weights_and_train_the_rest(shared_data: Path, lite0, tmp_path: Path) -> None:
    out = tmp_path / "frozen"
    proc = train_tiny(shared_data, out, "--frozen_stages", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "hfxray.json").read_text())["frozen_stages"] == 3
    saved, start = load_file(out / "model.safetensors"), lite0[0].state_dict()
    early = ("timm_model.conv_stem.", "timm_model.bn1.", *(f"timm_model.blocks.{i}." for i in range(3)))
    # BatchNorm running statistics follow the training films by design; learned tensors must not move.
    learned = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    kept = [k for k in learned if k.startswith(early)]
    later = [k for k in learned if k.startswith("timm_model.blocks.3.")]
    assert kept and later
    assert all(torch.equal(saved[k], start[k]) for k in kept)
    assert sum(not torch.equal(saved[k], start[k]) for k in later) == len(later)
    _assert_ordinary_model_dir(out, lite0)


def test_frozen_stages_beyond_the_backbone_is_a_one_line_error(shared_data: Path, tmp_path: Path) -> None:
    proc = train_tiny(shared_data, tmp_path / "bad", "--frozen_stages", "7")
    assert_one_line_error(proc, "--frozen_stages 7: TimmWrapperForImageClassification has 7 backbone stages", tmp_path / "bad")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("mixstyle", "1.5", "--mixstyle must be in (0, 1], got 1.5"),
        ("randconv", "-0.2", "--randconv must be in (0, 1], got -0.2"),
        ("source_adversary", "0", "--source_adversary must be > 0, got 0.0"),
        ("frozen_stages", "-1", "--frozen_stages must be >= 0, got -1"),
    ],
)
def test_out_of_range_value_is_a_one_line_error(
    option: str, value: str, message: str, shared_data: Path, tmp_path: Path
) -> None:
    proc = train_tiny(shared_data, tmp_path / "bad", f"--{option}", value)
    assert_one_line_error(proc, message, tmp_path / "bad")
