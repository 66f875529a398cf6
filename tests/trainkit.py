"""Shared by the trainer tests (tests/train/, tests/cli/test_cli_train.py): a tiny ViT with a wide init,
a short TrainConfig, and the image folder / tiny BERT / SST-2 folder fixtures (registered by the
conftest.py of those folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import VISION, WORDS, save_tiny_text_model, tiny_bert, write_sst2_dir
from transformers import ViTConfig, ViTForImageClassification

from sttabt_edge.train.config import TrainConfig
from sttabt_edge.train.data import TrainData, prepare_data


def vit(seed: int = 0, dropout: float = 0.0) -> ViTForImageClassification:
    """Tiny ViT with a wide init (attention not uniform, so importance means something)."""
    torch.manual_seed(seed)
    cfg = ViTConfig(**VISION, attn_implementation="eager", initializer_range=0.2, hidden_dropout_prob=dropout)
    return ViTForImageClassification(cfg).eval()


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-3, steps=8, batch_size=4, warmup=0.0, log_every=1, progress=False, eval_batch_size=8)
    return TrainConfig.of(**{**base, **kw})


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    """16 flat ImageNet-style files <wnid>_<name>.png, 4 classes."""
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        img = rng.integers(0, 255, (36 + i, 44, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"n0000{i % 4}_img{i:02d}.png")
    return d


@pytest.fixture()
def text_model_dir(tmp_path) -> Path:
    """Tiny BERT saved with a WordLevel tokenizer.json whose ids fit its 100-token vocabulary."""
    model = tiny_bert()
    model.config.hidden_dropout_prob = 0.1
    return save_tiny_text_model(tmp_path / "bert", WORDS, model=model)


@pytest.fixture()
def glue_dir(tmp_path) -> Path:
    """A GLUE-like SST-2 task folder with train.tsv and dev.tsv."""
    return write_sst2_dir(tmp_path / "SST-2", n_train=24, n_dev=8, seed=1, lengths=(2, 12))


def image_data(image_dir: Path, model) -> TrainData:
    return prepare_data(image_dir, model)
