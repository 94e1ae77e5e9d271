"""Shared fixtures. Every test runs offline: the Hub is unreachable by design."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid19-xray" / "train"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real radiographs shipped beside the project (../shared/data/covid19-xray/train)."""
    assert SHARED_DATA.is_dir(), f"shared data missing at {SHARED_DATA}"
    return SHARED_DATA
