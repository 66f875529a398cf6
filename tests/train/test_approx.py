"""train/approx.py: ApproxNet distillation on a tiny ViT lowers the held-out attention KL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from trainkit import cfg, image_data, vit

from sttabt_edge.method.approxnet import ApproxNet
from sttabt_edge.train.approx import train_approx

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_approx_distillation_lowers_heldout_kl(image_dir, tmp_path):
    teacher = vit()
    approx = train_approx(
        teacher,
        image_data(image_dir, teacher),
        factor=2,
        init="random",
        cfg=cfg(lr=1e-2, steps=30),
        out=tmp_path / "ax",
    )
    report = json.loads((tmp_path / "ax" / "report.json").read_text())
    assert report["heldout_attention_kl"] < 0.85 * report["heldout_attention_kl_before"]
    losses = [
        json.loads(ln)["loss"] for ln in (tmp_path / "ax" / "metrics.jsonl").read_text().splitlines()[:-1]
    ]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    loaded = ApproxNet.load(tmp_path / "ax", teacher.config)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in approx.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's flags come back
