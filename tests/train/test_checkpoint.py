"""train/checkpoint.py: a crash mid-checkpoint keeps the previous one; another model's checkpoint, or an
existing run without --resume, is refused."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import VISION
from trainkit import cfg, image_data, vit
from transformers import ViTConfig, ViTForImageClassification

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import CheckpointMismatchError, InputError
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.train import checkpoint as ckpt_mod
from sttabt_edge.train.approx import train_approx
from sttabt_edge.train.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_crash_mid_checkpoint_keeps_previous(image_dir, tmp_path, monkeypatch):
    teacher = vit()
    data = image_data(image_dir, teacher)
    out = tmp_path / "ax"
    train_approx(teacher, data, init="random", cfg=cfg(steps=4, stop_after=2), out=out)
    real_save = ckpt_mod.save_module

    def crashing(module, path, metadata=None):
        real_save(module, path, metadata)
        path.write_bytes(path.read_bytes()[:100])  # half-written file, then the process "dies"
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt_mod, "save_module", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_approx(teacher, data, init="random", cfg=cfg(steps=4), out=out, resume=True)
    monkeypatch.undo()
    latest = latest_checkpoint(out)
    assert latest.name == "ckpt-000002" and not (out / "checkpoints" / "ckpt-000004").exists()
    approx = build_approxnet(teacher, APPROX_FACTOR, "random", heads=APPROX_HEADS)  # train_approx's default
    _, state = load_checkpoint(
        latest, {"approx": approx}, json.loads((latest / "state.json").read_text())["fingerprint"]
    )
    assert state["step"] == 2
    train_approx(teacher, data, init="random", cfg=cfg(steps=4), out=out, resume=True)
    assert latest_checkpoint(out).name == "ckpt-000004"
    assert not list((out / "checkpoints").glob(".*"))  # temp dirs of the crash were cleaned up


def test_checkpoint_of_another_model_is_refused(image_dir, tmp_path):
    teacher = vit()
    data = image_data(image_dir, teacher)
    train_approx(teacher, data, init="random", cfg=cfg(steps=2), out=tmp_path / "ax")
    torch.manual_seed(0)
    other = ViTForImageClassification(ViTConfig(**{**VISION, "hidden_size": 64}, attn_implementation="eager"))
    with pytest.raises(CheckpointMismatchError, match="hidden"):
        train_approx(other, data, init="random", cfg=cfg(steps=4), out=tmp_path / "ax", resume=True)
    fp = json.loads((latest_checkpoint(tmp_path / "ax") / "state.json").read_text())["fingerprint"]
    with pytest.raises(CheckpointMismatchError, match="does not match"):
        load_checkpoint(latest_checkpoint(tmp_path / "ax"), {"approx": build_approxnet(other, 4)}, fp)
    with pytest.raises(InputError, match="--resume"):  # never overwrite a run silently
        train_approx(teacher, data, init="random", cfg=cfg(steps=2), out=tmp_path / "ax")
