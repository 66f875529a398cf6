"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

# pytest-xdist runs one worker per core: one torch thread per worker avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime tests run without torch
    pass

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Read-only data and models at ``../shared`` beside the repo; skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR
