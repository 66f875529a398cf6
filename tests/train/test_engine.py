"""train/engine.py: the lr schedule (with losses' retention schedule), and resume: a resumed run computes
exactly what an uninterrupted one does; --resume on a fresh --out starts there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_bert
from trainkit import cfg, image_data, vit

from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.train.approx import train_approx
from sttabt_edge.train.checkpoint import latest_checkpoint
from sttabt_edge.train.concrete import train_concrete
from sttabt_edge.train.config import SparseTrainConfig
from sttabt_edge.train.data import prepare_data
from sttabt_edge.train.engine import TIMING_KEYS, lr_factor
from sttabt_edge.train.losses import geometric_schedule

assert_close = torch.testing.assert_close


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_schedules():
    assert [lr_factor(s, 2, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    sched = geometric_schedule(0.4, 6)
    retention = [1.0, *sched[:-1]]  # layer 0 sees every token
    assert np.mean(retention) == pytest.approx(0.4, abs=1e-6) and sched == sorted(sched, reverse=True)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_resume_gives_identical_weights(family, image_dir, text_model_dir, glue_dir, tmp_path):
    """8 steps straight == 5 steps, stop, resume for 3.

    Covers dropout, concrete noise, data order and the hard-phase snap at step 6."""
    if family == "vit":
        model_fn = lambda: vit(dropout=0.1)  # noqa: E731
        data = image_data(image_dir, model_fn())
    else:
        model_fn = tiny_bert
        data = prepare_data(glue_dir, tiny_bert(), text_model_dir)
    kw = dict(steps=8, batch_size=3, max_length=32)

    def run(out: Path, stop_after: int = 0, resume: bool = False):
        model = model_fn()
        model.config.hidden_dropout_prob = 0.1
        approx = build_approxnet(model, 4, "interpolate")
        scfg = SparseTrainConfig(init="-1", threshold_lr=0.2, hard_frac=0.25)
        return train_concrete(
            model, approx, data, 0.5, cfg(**kw, stop_after=stop_after), scfg=scfg, out=out, resume=resume
        )

    straight, red_a = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=5)
    assert (
        latest_checkpoint(tmp_path / "b").name == "ckpt-000005"
        and not (tmp_path / "b" / "sttabt.json").exists()
    )
    resumed, red_b = run(tmp_path / "b", resume=True)
    for k, v in straight.state_dict().items():
        assert_close(resumed.state_dict()[k], v, atol=0, rtol=0)
    for k, v in red_a.state_dict().items():
        assert_close(red_b.state_dict()[k], v, atol=0, rtol=0)
    log_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS} for ln in lines]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def test_resume_on_a_fresh_out_dir_starts_there(image_dir, tmp_path):
    """--resume with nothing to resume is a fresh run, not a crash at the first metrics line."""
    teacher = vit()
    data = image_data(image_dir, teacher)
    out = tmp_path / "not" / "yet" / "ax"
    train_approx(teacher, data, init="random", cfg=cfg(steps=2), out=out, resume=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines if "loss" in json.loads(ln)] == [1, 2]
    assert latest_checkpoint(out).name == "ckpt-000002"
