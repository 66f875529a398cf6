"""#27: TrainConfig grouped by concern (optim, data, eval, run, device), written grouped; the flat form of
every file written before (run dirs' train_config.json, checkpoints' state.json, recipes, --config files)
still loads, through the library and through the CLI's --config checks."""

from __future__ import annotations

import json

import pytest

from sttabt_edge.cli_config_checks import TRAIN_RULES, read_config
from sttabt_edge.errors import InputError
from sttabt_edge.train.augment import AugmentConfig
from sttabt_edge.train.train_config import (
    DataSettings,
    EvalSettings,
    OptimSettings,
    RunSettings,
    TrainConfig,
)

# /work/runs/deit_approx_f8h1_2k/train_config.json (written by train_approx before #27), copied verbatim
OLD_TRAIN_CONFIG_JSON = """{
  "amp": "none",
  "augment": {
    "cutmix": 1.0,
    "erasing": 0.25,
    "mixup": 0.8,
    "randaug_m": 9.0,
    "randaug_mstd": 0.5,
    "randaug_n": 2,
    "smoothing": 0.1,
    "switch_prob": 0.5
  },
  "batch_size": 32,
  "bucket_batches": 50,
  "device": "auto",
  "epochs": 1.0,
  "eval_batch_size": 64,
  "eval_every": 200,
  "grad_accum": 1,
  "grad_clip": 0.5,
  "keep_checkpoints": 2,
  "log_every": 10,
  "lr": 0.0001,
  "max_eval_samples": 500,
  "max_length": 128,
  "num_workers": 0,
  "progress": false,
  "save_every": 50,
  "seed": 0,
  "steps": 2000,
  "stop_after": 0,
  "warmup": 0.05,
  "weight_decay": 0.01
}"""

# the "config" of /work/runs/deit_fixed_medium_r0.5/checkpoints/ckpt-000200/state.json (a checkpoint that a
# `--resume` reads; the same dict is sttabt.json's "train_config"), copied verbatim
OLD_STATE_CONFIG = {
    "amp": "none",
    "augment": {
        "cutmix": 1.0,
        "erasing": 0.25,
        "mixup": 0.8,
        "randaug_m": 9.0,
        "randaug_mstd": 0.5,
        "randaug_n": 2,
        "smoothing": 0.1,
        "switch_prob": 0.5,
    },
    "batch_size": 32,
    "bucket_batches": 50,
    "device": "auto",
    "epochs": 1.0,
    "eval_batch_size": 50,
    "eval_every": 50,
    "grad_accum": 1,
    "grad_clip": 1.0,
    "keep_checkpoints": 2,
    "log_every": 10,
    "lr": 2e-05,
    "max_eval_samples": 0,
    "max_length": 128,
    "num_workers": 0,
    "progress": False,
    "save_every": 50,
    "seed": 0,
    "steps": 200,
    "stop_after": 0,
    "warmup": 0.05,
    "weight_decay": 0.01,
}

STRONG = AugmentConfig(randaug_n=2, randaug_m=9.0, randaug_mstd=0.5, erasing=0.25, mixup=0.8, cutmix=1.0)


def test_old_flat_files_load_into_the_groups(tmp_path):
    path = tmp_path / "train_config.json"
    path.write_text(OLD_TRAIN_CONFIG_JSON)
    old = TrainConfig.load(path)
    assert old.optim == OptimSettings(lr=1e-4, steps=2000, batch_size=32, warmup=0.05, grad_clip=0.5)
    assert old.data == DataSettings(augment=STRONG)
    assert old.eval == EvalSettings(every=200, batch_size=64, max_samples=500)
    assert old.run == RunSettings(save_every=50, progress=False) and old.device == "auto"
    state = TrainConfig.from_dict(OLD_STATE_CONFIG)
    assert state.optim == OptimSettings(lr=2e-5, steps=200, warmup=0.05)
    assert state.eval == EvalSettings(every=50, batch_size=50) and state.data.augment == STRONG
    assert state.run == RunSettings(save_every=50, progress=False)


def test_new_files_are_grouped_and_round_trip(tmp_path):
    old = TrainConfig.from_dict(OLD_STATE_CONFIG)
    saved = old.to_dict()
    assert sorted(saved) == ["data", "device", "eval", "optim", "run"]
    assert saved["optim"]["lr"] == 2e-5 and saved["eval"] == {"every": 50, "batch_size": 50, "max_samples": 0}
    flat_keys = {k for group in ("optim", "data", "run") for k in saved[group]}
    assert flat_keys | {"eval_every", "eval_batch_size", "max_eval_samples", "device"} == set(
        OLD_STATE_CONFIG
    )
    old.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == old
    mixed = {"optim": {"lr": 1e-3}, "steps": 7, "eval": {"every": 2}, "max_length": 64}  # a mix is fine
    c = TrainConfig.from_dict(mixed)
    assert (c.optim.lr, c.optim.steps, c.eval.every, c.data.max_length) == (1e-3, 7, 2, 64)


def test_a_key_given_flat_and_grouped_is_an_error():
    with pytest.raises(ValueError, match="lr is given twice: flat .* and as optim.lr"):
        TrainConfig.from_dict({"lr": 1e-3, "optim": {"lr": 1e-4}})
    with pytest.raises(ValueError, match="max_eval_samples is given twice: flat .* and as eval.max_samples"):
        TrainConfig.from_dict({"max_eval_samples": 3, "eval": {"max_samples": 4}})
    with pytest.raises(ValueError, match="unknown OptimSettings keys"):
        TrainConfig.from_dict({"optim": {"lrr": 1.0}})
    with pytest.raises(ValueError, match="optim must be a OptimSettings"):
        TrainConfig(optim={"lr": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="tpu")  # type: ignore[arg-type]


def test_options_map_onto_the_groups():
    c = TrainConfig.of(lr=1e-3, max_eval_samples=5, stop_after=2, augment="strong", device="cpu")
    assert (c.optim.lr, c.eval.max_samples, c.run.stop_after, c.device) == (1e-3, 5, 2, "cpu")
    assert c.data.augment == AugmentConfig() and c.optim.steps == 0
    assert c.with_options({"steps": 9}).optim == OptimSettings(lr=1e-3, steps=9)
    with pytest.raises(ValueError, match="unknown TrainConfig option 'lrr'"):
        c.with_options({"lrr": 1.0})
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig.of(amp="fp8")


def test_config_checks_take_either_form(tmp_path):
    """--config: the old flat files and grouped ones pass the same rules; a bad grouped value names its field."""
    flat = tmp_path / "flat.json"
    flat.write_text(OLD_TRAIN_CONFIG_JSON)
    assert TrainConfig.from_dict(
        read_config("--config", flat, TRAIN_RULES, "TrainConfig")
    ) == TrainConfig.load(flat)
    grouped = tmp_path / "grouped.json"
    grouped.write_text(TrainConfig.load(flat).to_json())
    data = read_config("--config", grouped, TRAIN_RULES, "TrainConfig")
    assert TrainConfig.from_dict(data) == TrainConfig.load(flat)
    bad = tmp_path / "bad.json"
    for config, needle in (
        ({"optim": {"lr": float("nan")}}, "optim must be an object whose lr is a finite number in (0, 10]"),
        ({"eval": {"every": -1}}, "eval must be an object whose every is an integer in [0, "),
        ({"run": {"stop_afterr": 1}}, "'stop_afterr' is not one"),
        ({"data": 3}, "data must be a JSON object of DataSettings fields"),
        ({"device": "cuda:0"}, "device must be 'auto', 'cpu', 'cuda' or 'mps'"),
    ):
        bad.write_text(json.dumps(config))
        with pytest.raises(InputError, match="--config") as e:
            read_config("--config", bad, TRAIN_RULES, "TrainConfig")
        assert needle in str(e.value) and "\n" not in str(e.value)
