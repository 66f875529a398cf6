"""The measured per-modality recipes: the benchmark recipe files equal the package's, and compress
trains thresholds with its modality's recipe (function matching, fixed selection, for images)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sttabt_edge.compress import stages
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.recipes import CONCRETE_SPARSE, CONCRETE_TRAIN
from sttabt_edge.train.train_config import OptimSettings

RECIPES = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes"


def test_deit_recipe_files_equal_the_package_recipe():
    assert json.loads((RECIPES / "deit_function_matching.json").read_text()) == CONCRETE_SPARSE["image"]
    for budget in ("medium", "full"):
        fields = json.loads((RECIPES / f"deit_concrete_{budget}.json").read_text())
        assert {k: fields[k] for k in CONCRETE_TRAIN["image"]} == CONCRETE_TRAIN["image"], budget


@pytest.mark.parametrize("modality", ["text", "image"])
def test_recipes_build_valid_configs(modality):
    scfg = SparseTrainConfig(target_retention=0.5, **CONCRETE_SPARSE[modality])
    TrainConfig.of(steps=1).with_options(CONCRETE_TRAIN[modality])
    if modality == "image":
        assert scfg.task_weight == 0.0 and scfg.threshold_lr == 0.0 and not scfg.train_approx
    else:  # text keeps the official joint recipe (labels + KD, thresholds trained)
        assert scfg.threshold_lr > 0 and scfg.task_weight > 0


@pytest.mark.parametrize("modality", ["text", "image"])
def test_compress_trains_thresholds_with_the_modality_recipe(monkeypatch, tmp_path, modality):
    seen = {}
    monkeypatch.setattr(stages, "train_concrete", lambda *a, **kw: seen.update(kw))
    split = SimpleNamespace(data=SimpleNamespace(modality=modality))
    stages.train_thresholds(
        [1], [2], split, TrainConfig(optim=OptimSettings(steps=1)), 0.43219, tmp_path, None, False
    )  # type: ignore[arg-type]
    scfg = seen["scfg"]
    assert scfg.target_retention == 0.4322
    assert {k: getattr(scfg, k) for k in CONCRETE_SPARSE[modality]} == CONCRETE_SPARSE[modality]
