"""The soft phase's retention term (train/retention.py): the official penalty and the Lagrangian
multiplier that holds the target; and the KD-only (function matching) options of threshold training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import VISION
from torch.testing import assert_close
from transformers import ViTConfig, ViTForImageClassification

from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.train.augment import AugmentConfig
from sttabt_edge.train.checkpoint import latest_checkpoint
from sttabt_edge.train.concrete import train_concrete
from sttabt_edge.train.config import SparseTrainConfig, TrainConfig
from sttabt_edge.train.data import prepare_data
from sttabt_edge.train.engine import TIMING_KEYS
from sttabt_edge.train.losses import retention_penalty
from sttabt_edge.train.retention import RetentionController


def vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    cfg = ViTConfig(**VISION, attn_implementation="eager", initializer_range=0.2)
    return ViTForImageClassification(cfg).eval()


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (36 + i, 44, 3), dtype=np.uint8)).save(
            d / f"n0000{i % 4}_x{i}.png"
        )
    return d


def test_penalty_is_the_official_squared_gap():
    ret = torch.tensor([[1.0, 0.6, 0.5], [1.0, 0.4, 0.2]])  # (B, L)
    ctl = RetentionController(0.3, 10.0, "penalty")
    assert_close(ctl(ret), 10.0 * retention_penalty(ret, 0.3))
    assert float(ctl.lam) == 0.0  # penalty keeps no state


def test_lagrangian_multiplier_integrates_the_gap():
    ctl = RetentionController(0.5, 0.0, "lagrangian", dual_lr=2.0)
    high = torch.full((2, 3), 0.7)  # gap +0.2
    ret = high.clone().requires_grad_(True)
    loss = ctl(ret)
    assert float(loss.detach()) == 0.0  # lam was 0 when the loss was formed
    assert_close(ctl.lam, torch.tensor(0.4))  # lam += 2.0 * 0.2
    loss = ctl(ret)
    loss.backward()  # the in-place ascent must not break autograd
    assert_close(ret.grad, torch.full((2, 3), 0.4 / 6))  # d(lam * mean)/d ret: pushes retention down
    ctl(torch.full((2, 3), 0.3))  # gap -0.2: lam falls back
    assert_close(ctl.lam, torch.tensor(0.8 - 0.4))
    ctl.eval()
    ctl(high)
    assert_close(ctl.lam, torch.tensor(0.4))  # frozen outside training (the hard phase)
    assert "lam" in ctl.state_dict()  # checkpointed


@pytest.mark.parametrize("bad", [{"control": "pid"}, {"dual_lr": -1.0}, {"weight": -1.0}])
def test_controller_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        RetentionController(**{"target": 0.5, "weight": 1.0, "control": "lagrangian", **bad})


def soft_retentions(out: Path) -> list[float]:
    logs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["retention"] for r in logs if "retention" in r and not r["hard"]]


def run(image_dir: Path, out: Path, control: str, steps: int = 40, **kw) -> list[float]:
    model = vit()
    data = prepare_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    # calibrated to the target, no squared penalty: only the control term counters the KD loss's pull
    scfg = SparseTrainConfig(
        threshold_lr=0.3, hard_frac=0.1, retention_weight=0.0, retention_control=control, **kw
    )
    cfg = TrainConfig.of(
        lr=1e-3, steps=steps, batch_size=4, warmup=0.0, log_every=1, progress=False, save_every=12
    )
    train_concrete(model, approx, data, 0.4, cfg, scfg=scfg, out=out)
    return soft_retentions(out)


def test_lagrangian_holds_the_target_through_the_soft_phase(image_dir, tmp_path):
    """Keeping more tokens always lowers the KD loss, so an unopposed soft phase drifts upward (on DeiT-Tiny
    with the penalty: 0.50 -> 0.83 in 120 steps); the multiplier pulls it back and holds it."""
    held = run(image_dir, tmp_path / "lagr", "lagrangian", retention_dual_lr=2.0)
    free = run(image_dir, tmp_path / "pen", "penalty")
    assert abs(held[0] - 0.4) < 0.1 and abs(free[0] - 0.4) < 0.1  # both calibrated to the target
    late = slice(len(free) // 2, None)  # the second half of the soft phase
    assert float(np.mean(free[late])) > 0.6  # drifted
    assert abs(float(np.mean(held[late])) - 0.4) < 0.07  # held


def test_lagrangian_resumes_bit_exactly(image_dir, tmp_path):
    """The multiplier is state: a run stopped and resumed equals an uninterrupted one."""
    full = run(image_dir, tmp_path / "full", "lagrangian", steps=24, retention_dual_lr=2.0)
    model = vit()
    data = prepare_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    scfg = SparseTrainConfig(
        threshold_lr=0.3,
        hard_frac=0.1,
        retention_weight=0.0,
        retention_control="lagrangian",
        retention_dual_lr=2.0,
    )
    base = dict(lr=1e-3, steps=24, batch_size=4, warmup=0.0, log_every=1, progress=False, save_every=12)
    out = tmp_path / "split"
    train_concrete(model, approx, data, 0.4, TrainConfig.of(**base, stop_after=12), scfg=scfg, out=out)
    assert latest_checkpoint(out) is not None
    model, approx = vit(), build_approxnet(vit(), 4, "interpolate")
    train_concrete(model, approx, data, 0.4, TrainConfig.of(**base), scfg=scfg, out=out, resume=True)
    assert soft_retentions(out) == full


def test_kd_only_norms_biases_training(image_dir, tmp_path):
    """Function matching: no labels' loss, mixed views; only norms and biases of the main model move."""
    model = vit()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = prepare_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    scfg = SparseTrainConfig(task_weight=0.0, main_params="norms_biases", retention_control="lagrangian")
    recipe = AugmentConfig(randaug_n=1, mixup=0.8, cutmix=1.0)
    cfg = TrainConfig.of(
        lr=1e-2, steps=4, batch_size=4, warmup=0.0, log_every=1, progress=False, augment=recipe
    )
    train_concrete(model, approx, data, 0.5, cfg, scfg=scfg, out=tmp_path / "fm")
    logs = [json.loads(ln) for ln in (tmp_path / "fm" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "kd" in r]
    assert steps and all("task" not in r for r in steps) and all(r["ms_per_view"] > 0 for r in steps)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all(before[n].dim() < 2 for n in moved)  # norms / biases only
    assert any(n.endswith("bias") for n in moved)


def test_sparse_config_file_and_cli_overrides(tmp_path):
    """`train concrete --sparse-config F`: the recipe file is the base, options given on the line win, and
    a typo in the file is an error, not a silent default."""
    from sttabt_edge.cli_train import RetentionControl, _sparse_config

    recipe = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes" / "deit_function_matching.json"
    scfg = _sparse_config(recipe, {"target_retention": 0.4, "task_weight": None})
    assert scfg.task_weight == 0.0 and scfg.retention_control == "lagrangian" and scfg.target_retention == 0.4
    scfg = _sparse_config(recipe, {"retention_control": RetentionControl.penalty})
    assert scfg.retention_control == "penalty" and scfg.target_retention == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"retention_contrl": "lagrangian"}))
    with pytest.raises(ValueError, match="unknown SparseTrainConfig keys"):
        _sparse_config(bad, {})
    bad.write_text(json.dumps({"retention_control": "pid"}))
    with pytest.raises(ValueError, match="retention_control"):
        _sparse_config(bad, {})


@pytest.mark.parametrize(
    "name", ["task_weight", "kd_weight", "retention_weight", "retention_dual_lr", "threshold_lr"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_sparse_config_refuses_non_finite_weights(name, value):
    with pytest.raises(ValueError, match=name):
        SparseTrainConfig(**{name: value})


def test_soft_phase_evaluation_is_at_the_target_and_leaves_training_alone(image_dir, tmp_path):
    """A held-out evaluation mid soft phase reports the model the hard phase would ship (thresholds snapped
    to the target on the hard masks), and restores the thresholds: training is identical to a run that
    never evaluates."""

    def train(out: Path, eval_every: int) -> list[dict]:
        model = vit()
        data = prepare_data(image_dir, model)
        approx = build_approxnet(model, 4, "interpolate")
        scfg = SparseTrainConfig(threshold_lr=0.3, hard_frac=0.25, retention_control="lagrangian")
        cfg = TrainConfig.of(
            lr=1e-3, steps=8, batch_size=4, warmup=0.0, log_every=1, progress=False, eval_every=eval_every
        )
        train_concrete(model, approx, data, 0.4, cfg, scfg=scfg, out=out)
        return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]

    with_eval = train(tmp_path / "e", eval_every=2)
    without = train(tmp_path / "n", eval_every=0)
    evals = [r for r in with_eval if "eval" in r]
    soft = [r for r in evals if r["step"] <= 6]  # hard phase from step 6 (8 - 0.25 * 8)
    assert len(soft) >= 2
    assert all(abs(r["eval"]["retention"] - 0.4) < 0.12 for r in soft)

    def steps(logs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in logs if "eval" not in r]

    assert steps(with_eval) == steps(without)  # every step's losses and retention, bit for bit
