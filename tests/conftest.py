"""Shared pytest fixtures, and the shared helpers' folder on sys.path.

The tests live one folder down, by package area (tests/<area>/test_*.py; tests/architecture/
test_layout.py lists the areas). The helpers they share (tiny.py, handmade.py, fuzz.py,
onnx_metadata.py, trainkit.py) sit here, beside this file, and are imported by name
(``from tiny import tiny_vit``) from every area, in every xdist worker: this folder goes on sys.path
here rather than by the accident of pytest's import mode. tests/ is no package (no __init__.py), so
test modules import by their basename, which must be unique across the areas (test_layout.py).
"""

import os
import sys
from pathlib import Path

import pytest

# pytest-xdist runs one worker per core: one torch thread per worker avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime tests run without torch
    pass

HELPERS_DIR = str(Path(__file__).resolve().parent)
if HELPERS_DIR not in sys.path:
    sys.path.insert(0, HELPERS_DIR)

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Read-only data and models at ``../shared`` beside the repo; skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture()
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP spin-waits make them 50x
    slower when other processes compete for the cores (``pytestmark = usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tokenizer.json with only [PAD] and [UNK]: enough for exports fed token ids directly."""
    from tokenizers import Tokenizer, models

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    return path
