"""Training-only style options (``--mixstyle``, ``--randconv``): a real tiny run records the option in
hfxray.json and saves an ordinary model directory (the backbone's weights, nothing added, no hook left
on the reloaded model); an out-of-range value is refused in one line before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
    assert set(load_file(out / "model.safetensors")) == set(lite0[0].state_dict())  # no extra weights
    reloaded, _ = modeling.load_model(out)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in reloaded.modules())


@pytest.mark.parametrize(("option", "value"), [("mixstyle", "1.5"), ("randconv", "-0.2")])
def test_out_of_range_value_is_a_one_line_error(option: str, value: str, shared_data: Path, tmp_path: Path) -> None:
    proc = train_tiny(shared_data, tmp_path / "bad", f"--{option}", value)
    assert_one_line_error(proc, f"--{option} must be in (0, 1], got {value}", tmp_path / "bad")
