"""Trainers on tiny models and tiny synthetic data: distillation, concrete, baselines, resume, DDP, CLI."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import VISION, WORDS, save_tiny_text_model, tiny_bert, write_sst2_dir
from transformers import ViTConfig, ViTForImageClassification
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.data import Example
from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import CheckpointMismatchError, InputError
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet
from sttabt_edge.method.concrete import retention_loss
from sttabt_edge.sparse_model import SparseClassifier
from sttabt_edge.train import checkpoint as ckpt_mod
from sttabt_edge.train.approx import train_approx
from sttabt_edge.train.artifacts import load_sttabt
from sttabt_edge.train.baselines import train_baseline
from sttabt_edge.train.checkpoint import latest_checkpoint, load_checkpoint
from sttabt_edge.train.concrete import build_objective, train_concrete
from sttabt_edge.train.config import LtpSettings, SparseTrainConfig, SttabtSettings, TrainConfig
from sttabt_edge.train.data import (
    TrainData,
    augment_image,
    bucketed_batches,
    prepare_data,
    resized_crop_box,
    shard,
)
from sttabt_edge.train.engine import TIMING_KEYS, lr_factor
from sttabt_edge.train.losses import geometric_schedule, retention_penalty
from sttabt_edge.train.sources import hf_examples, load_splits, read_hf_disk, split_half

assert_close = torch.testing.assert_close


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def vit(seed: int = 0, dropout: float = 0.0) -> ViTForImageClassification:
    """Tiny ViT with a wide init (attention not uniform, so importance means something)."""
    torch.manual_seed(seed)
    cfg = ViTConfig(**VISION, attn_implementation="eager", initializer_range=0.2, hidden_dropout_prob=dropout)
    return ViTForImageClassification(cfg).eval()


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-3, steps=8, batch_size=4, warmup=0.0, log_every=1, progress=False, eval_batch_size=8)
    return TrainConfig(**{**base, **kw})


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


# ---- data -------------------------------------------------------------------------------------


def test_split_half_is_fixed_and_order_free(image_dir):
    from sttabt_edge.data import image_folder

    examples = image_folder(image_dir)
    train, held = split_half(examples)
    assert len(train) == len(held) == 8
    assert {e.inputs for e in train}.isdisjoint({e.inputs for e in held})
    again, _ = split_half(list(reversed(examples)))
    assert {e.inputs for e in again} == {e.inputs for e in train}
    assert {e.inputs for e in split_half(examples, seed=1)[0]} != {e.inputs for e in train}


def test_augmentation_is_seeded_and_in_bounds(image_dir):
    from sttabt_edge.runtime import ImagePreprocess

    rng = np.random.default_rng(0)
    for w, h in ((10, 300), (300, 10), (64, 48)):
        left, top, cw, ch = resized_crop_box(w, h, rng)
        assert 0 <= left and 0 <= top and left + cw <= w and top + ch <= h and cw > 0 and ch > 0
    img = Image.open(next(image_dir.iterdir()))
    pre = ImagePreprocess(image_size=32, resize_size=36)
    a, b = (augment_image(img, pre, np.random.default_rng([0, 1, 2])) for _ in range(2))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, augment_image(img, pre, np.random.default_rng([0, 1, 3])))


def test_bucketing_and_sharding():
    lengths = np.random.default_rng(0).integers(1, 50, 103)
    plan = bucketed_batches(lengths, 8, np.random.default_rng(1), chunk_batches=4)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(103))
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in plan)  # sorted inside each batch
    r0, r1 = shard(plan, 0, 2), shard(plan, 1, 2)
    assert len(r0) == len(r1) == len(plan) // 2
    assert not set(np.concatenate(r0)) & set(np.concatenate(r1))


def test_text_batches_pad_dynamically(text_model_dir, glue_dir):
    data = prepare_data(glue_dir, tiny_bert(), text_model_dir)
    assert data.modality == "text" and data.task == "SST-2" and len(data.eval) == 8
    src = data.source(batch_size=5, seed=0)
    inputs, labels = src.get(0)
    width = inputs["input_ids"].shape[1]
    assert width == inputs["attention_mask"].sum(1).max() and labels.dtype == np.int64
    assert np.all(inputs["input_ids"][:, 0] == 2)  # [CLS]
    again, _ = data.source(batch_size=5, seed=0).get(0)
    assert np.array_equal(again["input_ids"], inputs["input_ids"])
    calib = data.calibration_batches(7, seed=0, max_length=32, chunk=4)
    assert [b["input_ids"].shape[0] for b in calib] == [4, 3]
    dev = dataclasses.replace(data, calib=data.eval).calibration_batches(100, max_length=32)
    assert sum(b["input_ids"].shape[0] for b in dev) == 8  # calibrates on the held-out inputs instead
    unlabeled = prepare_data(glue_dir, tiny_bert(), text_model_dir, labeled=False)
    assert unlabeled.source(5, 0).get(0)[1] is None


def test_unlabeled_sources_and_glue_test_files(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "test.tsv").write_text("index\tsentence\n0\ta film\n1\tthe plot\n")
    (tmp_path / "lines.txt").write_text("a film\n\nthe plot\n")
    for path in (tmp_path / "SST-2" / "test.tsv", tmp_path / "lines.txt"):
        s = load_splits(path)
        assert [e.inputs for e in s.train] == ["a film", "the plot"] and s.train[0].label is None


def test_save_to_disk_needs_datasets(tmp_path, monkeypatch):
    (tmp_path / "dataset_dict.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError, match="pip install datasets"):
        read_hf_disk(tmp_path, "train")

    class FakeDS:  # the slice of datasets.Dataset we use
        column_names = ["sentence1", "sentence2", "label"]
        cols = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, -1]}

        def __len__(self):
            return 2

        def __getitem__(self, key):
            return self.cols[key]

    fake = types.SimpleNamespace(load_from_disk=lambda p: {"train": FakeDS(), "validation": FakeDS()})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    got = read_hf_disk(tmp_path, "validation")
    assert [(e.inputs, e.label) for e in got] == [(("a", "c"), 1), (("b", "d"), None)]
    with pytest.raises(InputError, match="splits"):
        hf_examples({"train": FakeDS()}, "test", "x")


def test_configs_round_trip(tmp_path):
    c = cfg(amp="bf16", seed=3)
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"lr": 1.0, "lrr": 2.0})
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    assert (
        SparseTrainConfig.from_dict(SparseTrainConfig(target_retention=0.3).to_dict()).target_retention == 0.3
    )


# the "sparse_config" of /work/runs/deit_fixed_medium_r0.5/sttabt.json, a run trained before #27 grouped the
# reducer settings (the old flat form), copied verbatim
OLD_FLAT_SPARSE = {
    "approx_lr_scale": 1.0,
    "calib_samples": 64,
    "concrete": "ste",
    "extra": {},
    "freeze_main": False,
    "hard_frac": 0.9,
    "head_reduce": "mean",
    "init": "calibrate",
    "init_schedule": "constant",
    "kd_temperature": 2.0,
    "kd_weight": 1.0,
    "ltp_min_keep": 1,
    "ltp_temperature": 0.1,
    "main_params": "all",
    "min_keep": 4,
    "p": 0.1,
    "retention_control": "lagrangian",
    "retention_dual_lr": 1.0,
    "retention_weight": 10.0,
    "schedule": "geometric",
    "snap": True,
    "target_retention": 0.5,
    "task_weight": 0.0,
    "temperature": 0.5,
    "threshold_lr": 0.0,
    "train_approx": False,
}


def test_sparse_config_groups_the_reducer_settings_and_reads_the_old_flat_form(tmp_path):
    """#27: the reducer settings travel as typed groups (SttabtSettings, LtpSettings); a file in the old flat
    form (``concrete``, ``ltp_temperature``, ...) loads into the same config, and saves grouped."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**OLD_FLAT_SPARSE, "concrete": "official", "ltp_min_keep": 2, "p": 0.2}))
    old = SparseTrainConfig.load(path)
    assert old.sttabt == SttabtSettings(concrete="official", temperature=0.5, min_keep=4, p=0.2)
    assert old.ltp == LtpSettings(temperature=0.1, min_keep=2)
    assert old.hard_frac == 0.9 and old.retention_control == "lagrangian" and not old.train_approx
    as_default = SparseTrainConfig.from_dict(OLD_FLAT_SPARSE)
    assert as_default.sttabt == SttabtSettings() and as_default.ltp == LtpSettings()
    saved = old.to_dict()
    assert "concrete" not in saved and saved["sttabt"]["concrete"] == "official"
    assert saved["ltp"] == {"temperature": 0.1, "min_keep": 2}
    assert SparseTrainConfig.from_dict(saved) == old  # the grouped form round-trips
    # the CLI's path: the file checked field by field (old keys by their group's rules), then --concrete on top
    from sttabt_edge.cli_config_checks import SPARSE_RULES, read_config
    from sttabt_edge.cli_train import _sparse_config

    assert read_config("--sparse-config", path, SPARSE_RULES, "SparseTrainConfig")["ltp_min_keep"] == 2
    assert _sparse_config(path, {"concrete": None}) == old
    assert _sparse_config(path, {"concrete": "ste"}).sttabt == SttabtSettings(p=0.2)
    with pytest.raises(ValueError, match="given twice"):
        SparseTrainConfig.from_dict({"p": 0.2, "sttabt": {"p": 0.3}})
    with pytest.raises(ValueError, match="unknown SttabtSettings keys"):
        SparseTrainConfig.from_dict({"sttabt": {"pp": 0.3}})
    with pytest.raises(ValueError, match="sttabt must be a SttabtSettings"):
        SparseTrainConfig(sttabt={"concrete": "ste"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        LtpSettings(temperature=float("nan"))


def test_schedules():
    assert [lr_factor(s, 2, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    sched = geometric_schedule(0.4, 6)
    retention = [1.0, *sched[:-1]]  # layer 0 sees every token
    assert np.mean(retention) == pytest.approx(0.4, abs=1e-6) and sched == sorted(sched, reverse=True)


# ---- trainers ---------------------------------------------------------------------------------


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


def test_concrete_moves_retention_to_target(image_dir, tmp_path):
    model = vit()
    data = image_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    scfg = SparseTrainConfig(init="-2", threshold_lr=0.3, hard_frac=0.2)
    train_concrete(model, approx, data, 0.4, cfg(steps=30), scfg=scfg, out=tmp_path / "c")
    logs = [json.loads(ln) for ln in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    ret = [r["retention"] for r in logs if "retention" in r and not r["hard"]]
    assert ret[0] > 0.85 and np.mean(ret[-5:]) < 0.6  # soft phase: from ~1 toward 0.4
    sc = load_sttabt(tmp_path / "c")
    assert sc.mode == "remove"
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(data.source(8, 0, augment=False).get(0)[0]["pixel_values"]))
        out = sc(pixel_values=batch)
    assert abs(float(out.retention.mean()) - 0.4) < 0.12  # the hard model, real removal
    meta = json.loads((tmp_path / "c" / "sttabt.json").read_text())
    assert meta["method"] == "sttabt" and len(meta["keep_schedule"]) == 3 and meta["preprocessing"]["image"]


def test_official_concrete_trains_calibrated_and_saves(image_dir, tmp_path):
    """--concrete official: init calibrated to the target on hard masks, the official regulariser in the
    soft phase, saved and loaded as the official variant, the hard model near the target."""
    from sttabt_edge.method.concrete_official import OfficialConcrete

    model = vit()
    data = image_data(image_dir, model)
    approx = build_approxnet(model, 4, "interpolate")
    official = SttabtSettings(concrete="official")
    scfg = SparseTrainConfig(sttabt=official, init_schedule="shared", hard_frac=0.25, calib_samples=8)
    train_concrete(model, approx, data, 0.5, cfg(steps=8), scfg=scfg, out=tmp_path / "c")
    logs = [json.loads(ln) for ln in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    soft = [r for r in logs if "retention" in r and not r["hard"]]
    assert soft and all("reg" in r for r in soft)
    sc = load_sttabt(tmp_path / "c")
    reducer = sc.reducer
    assert isinstance(reducer.thresholds, OfficialConcrete) and reducer.thresholds.temperature == 0.1
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(data.source(8, 0, augment=False).get(0)[0]["pixel_values"]))
        out = sc(pixel_values=batch)
    assert abs(float(out.retention.mean()) - 0.5) < 0.15
    with pytest.raises(ValueError, match="concrete must be one of"):
        SttabtSettings(concrete="nope")  # type: ignore[arg-type]


def _short_and_long_text(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Four 4-token inputs (SST-2 train phrases) and four 40-token ones (dev sentences)."""
    g = torch.Generator().manual_seed(seed)
    short = torch.randint(5, 100, (4, 4), generator=g)
    long = torch.randint(5, 100, (4, 40), generator=g)
    return (
        {"input_ids": short, "attention_mask": torch.ones_like(short)},
        {"input_ids": long, "attention_mask": torch.ones_like(long)},
    )


def test_snap_flags_targets_below_the_forced_token_floor():
    """A target below the retention the always-kept tokens give on the calibration inputs is reported,
    not silently snapped to +span (which made every such target the same floor-only model: SST-2
    concrete r=0.45 and r=0.3 both gave dev retention 0.220, accuracy 69.4)."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.concrete import UnreachableTargetError, snap_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3, min_keep=2))
    short, long = _short_and_long_text()

    def hard_retention(inputs):
        with torch.no_grad():
            return float(SparseClassifier(model, reducer.eval(), mode="mask")(**inputs).retention.mean())

    with torch.no_grad():
        reducer.thresholds.logits.fill_(50.0)
    floor = hard_retention(short)  # only forced tokens: min_keep = 2 = half of a 4-token input
    assert floor == pytest.approx(0.5)
    for target in (0.45, 0.3):
        with pytest.raises(UnreachableTargetError, match="outside what the STTABT thresholds can reach"):
            snap_thresholds(reducer, parts, [short], target)
    with pytest.warns(UserWarning, match="outside what"):
        offset = snap_thresholds(reducer, parts, [short], 0.3, strict=False)
    assert hard_retention(short) == pytest.approx(floor) and offset < 19.0  # the floor, not the span's end
    got = {}
    for target in (0.6, 0.45, 0.3):  # reachable on long inputs: distinct retentions at the targets
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        snap_thresholds(reducer, parts, [long], target)
        got[target] = hard_retention(long)
    assert all(abs(r - t) < 0.05 for t, r in got.items()) and got[0.6] > got[0.45] > got[0.3]


def test_shape_thresholds_gives_every_layer_the_target():
    """The calibrated init keeps ~target in every layer (one shared offset let the importance
    profile decide: SST-2 r=0.3 started at [1.0, 0.18, 0.15, ...]); the snap after it makes the
    mean exact without undoing the shape."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.concrete import shape_thresholds, snap_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3))
    _, long = _short_and_long_text()
    for target in (0.6, 0.3):
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        noisy = shape_thresholds(reducer, parts, [long], target, noisy=True)
        assert noisy == pytest.approx([target] * 3, abs=0.05)
        snap_thresholds(reducer, parts, [long], target)  # hard retention, as at the hard phase
        with torch.no_grad():
            ret = SparseClassifier(model, reducer.eval(), mode="mask")(**long).retention.mean(0)  # (L,)
        assert float(ret.mean()) == pytest.approx(target, abs=0.02)
        assert ret.tolist() == pytest.approx([target] * 3, abs=0.1)
        assert ret[0] >= ret[1] >= ret[2]  # nested


def test_union_thresholds_grow_toward_the_input():
    """The union init: each layer's own selection keeps one fraction q, so the nested sets grow
    toward the input (the constant schedule gave every layer the top layer's set), mean on target."""
    from sttabt_edge import compat
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.train.calibrate import _own_fraction_probe, cached_maps, union_thresholds

    model = tiny_bert()
    parts = compat.model_parts(model)
    reducer = SttabtReducer(build_approxnet(model, 2, "random"), thresholds=ConcreteThresholds(3, min_keep=1))
    _, long = _short_and_long_text()
    for target in (0.6, 0.4):
        with torch.no_grad():
            reducer.thresholds.logits.zero_()
        per_layer = union_thresholds(reducer, parts, [long], target)
        assert sum(per_layer) / 3 == pytest.approx(target, abs=0.03)
        assert per_layer[0] > per_layer[1] > per_layer[2]  # grows toward the input, no collapse
        own = _own_fraction_probe(reducer, parts, cached_maps(reducer, parts, [long]))(
            reducer.thresholds.logits.detach()
        )
        # one own fraction for every layer; the snap then shifts every threshold by one offset (to the
        # middle of its retention plateau), which moves the layers' own fractions a little apart
        assert float(own.max() - own.min()) < 0.2


def test_concrete_refuses_unreachable_target_before_training(text_model_dir, glue_dir, tmp_path):
    from sttabt_edge.train.concrete import UnreachableTargetError

    model = tiny_bert()
    data = prepare_data(glue_dir, model, text_model_dir)  # 2-12 word phrases
    with pytest.raises(UnreachableTargetError, match="calibration inputs"):
        train_concrete(
            model, build_approxnet(model, 2, "random"), data, 0.1, cfg(steps=2), out=tmp_path / "c"
        )
    assert latest_checkpoint(tmp_path / "c") is None


def test_calibration_warns_on_length_shift(text_model_dir, glue_dir):
    from sttabt_edge.train.concrete import calibration_batches

    model = tiny_bert()
    data = prepare_data(glue_dir, model, text_model_dir)
    long_eval = [Example(" ".join(WORDS * 2), 0)] * 8
    data = dataclasses.replace(data, eval=long_eval)
    with pytest.warns(UserWarning, match="calibration inputs average"):
        calibration_batches(data, SparseTrainConfig(calib_samples=8), cfg(max_length=64), torch.device("cpu"))
    like_eval = dataclasses.replace(data, calib=long_eval)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibration_batches(
            like_eval, SparseTrainConfig(calib_samples=8), cfg(max_length=64), torch.device("cpu")
        )


def test_retention_penalty_is_retention_loss(image_dir):
    model = vit()
    obj = build_objective(model, build_approxnet(model, 4), SparseTrainConfig(init="0.5"))
    obj.on_step(0, 10)
    x = torch.randn(3, 3, 32, 32)
    out = obj.sparse(pixel_values=x)
    assert_close(retention_penalty(out.retention, 0.3), retention_loss(out.keep, out.pad_mask, 0.3))


@pytest.mark.parametrize("method", ["ltp", "topk"])
def test_baselines_reach_target(image_dir, tmp_path, method):
    model = vit()
    data = image_data(image_dir, model)
    train_baseline(method, model, data, 0.5, cfg(steps=6), out=tmp_path / method)
    sc = load_sttabt(tmp_path / method)
    assert sc.reducer.name == method and not sc.reducer.training
    with torch.no_grad():
        batch = torch.from_numpy(data.source(8, 0, augment=False).get(0)[0]["pixel_values"])
        ret = float(sc(pixel_values=batch).retention.mean())
    assert abs(ret - 0.5) < 0.12


# ---- resume and checkpoints -------------------------------------------------------------------


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


def test_resume_on_a_fresh_out_dir_starts_there(image_dir, tmp_path):
    """--resume with nothing to resume is a fresh run, not a crash at the first metrics line."""
    teacher = vit()
    data = image_data(image_dir, teacher)
    out = tmp_path / "not" / "yet" / "ax"
    train_approx(teacher, data, init="random", cfg=cfg(steps=2), out=out, resume=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines if "loss" in json.loads(ln)] == [1, 2]
    assert latest_checkpoint(out).name == "ckpt-000002"


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


# ---- DDP --------------------------------------------------------------------------------------


def _ddp_worker(rank: int, port: int, image_dir: str, out: str) -> None:
    import os

    from safetensors.torch import save_file

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    teacher = vit()
    approx = train_approx(
        teacher,
        prepare_data(image_dir, teacher),
        init="random",
        cfg=cfg(steps=3, batch_size=2),
        out=Path(out) / "run",
    )
    save_file({k: v.contiguous() for k, v in approx.state_dict().items()}, f"{out}/rank{rank}.safetensors")


def test_two_process_gloo_ranks_agree(image_dir, tmp_path):
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(port, str(image_dir), str(tmp_path)), nprocs=2, start_method="fork"
    )
    a, b = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    init = build_approxnet(vit(), 4, "random").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], init[k]) for k in a)  # it trained
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 3  # rank 0 logged


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_train_verbs_and_eval(image_dir, tmp_path):
    runner = CliRunner()
    model_dir = tmp_path / "vit"
    vit().save_pretrained(model_dir)
    common = ["--data", str(image_dir), "--steps", "3", "--batch-size", "4", "--log-every", "1"]
    res = runner.invoke(
        app, ["train", "approx", "--model", str(model_dir), "--out", str(tmp_path / "ax"), *common]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["heldout_attention_kl"] > 0
    res = runner.invoke(
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "ax"),
            "--target-retention",
            "0.4",
            "--init-schedule",
            "shared",
            "--out",
            str(tmp_path / "c"),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        json.loads((tmp_path / "c" / "sttabt.json").read_text())["sparse_config"]["init_schedule"] == "shared"
    )
    res = runner.invoke(  # the official variant: its init schedule defaults to the official shared one
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "ax"),
            "--target-retention",
            "0.5",
            "--concrete",
            "official",
            "--out",
            str(tmp_path / "co"),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "co" / "sttabt.json").read_text())
    assert (
        saved["sparse_config"]["sttabt"]["concrete"] == "official"
        and saved["sparse_config"]["init_schedule"] == "shared"
    )
    assert saved["reducer"]["concrete"] == "official"
    for method in ("ltp", "topk"):
        res = runner.invoke(
            app,
            [
                "train",
                "baseline",
                "--method",
                method,
                "--model",
                str(model_dir),
                "--target-retention",
                "0.5",
                "--calib-on",
                "eval",
                "--out",
                str(tmp_path / method),
                *common,
            ],
        )
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "c"), "--data", str(image_dir)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["method"] == "sttabt-trained" and got["retention"] < 0.7 and got["num_samples"] == 16
    res = runner.invoke(
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "c2"),
            *common,
        ],
    )
    assert res.exit_code == 2 and "error:" in res.output


def test_cli_train_approx_on_text(text_model_dir, glue_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "approx",
            "--model",
            str(text_model_dir),
            "--data",
            str(glue_dir),
            "--init",
            "random",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "ax"),
        ],
    )
    assert res.exit_code == 0, res.output
    ax = ApproxNet.load(tmp_path / "ax")  # the CLI default (sttabt_edge/defaults.py): /8, one head
    assert (ax.factor, ax.heads) == (8, 1)


def test_eval_examples_keep_labels(image_dir):
    model = vit()
    data = image_data(image_dir, model)
    assert all(isinstance(e, Example) and e.label is not None for e in data.eval_examples())


def _tiny_sweep(image_dir, tmp_path, **plan):
    """A sweep of a saved tiny ViT on ``image_dir`` with 2-step trainings; ``plan`` overrides SweepPlan
    fields. Returns (plan, results)."""
    from sttabt_edge.train.config import ApproxConfig
    from sttabt_edge.train.sweep import SweepPlan, run_sweep

    model_dir = tmp_path / "vit"
    vit().save_pretrained(model_dir)
    fields = dict(
        approx_cfg=cfg(steps=2),
        sparse_cfg=cfg(steps=2),
        max_eval=8,
        acfg=ApproxConfig(factor=4, heads=None, init="random"),  # all 4 heads: the reachable levels below
        scfg=SparseTrainConfig(calib_samples=8),
    )
    sweep_plan = SweepPlan(**{**fields, **plan})
    return sweep_plan, run_sweep(model_dir, image_dir, tmp_path / "work", sweep_plan, log=lambda s: None)


def test_sweep_end_to_end(image_dir, tmp_path):
    from sttabt_edge.train.sweep import plot_curves

    _, res = _tiny_sweep(image_dir, tmp_path, targets=[0.5])
    assert [p["method"] for p in res["points"]] == ["concrete", "ltp", "topk", "tome", "sttabt-topk"]
    assert all(0 < p["retention"] < 0.9 and p["num_samples"] == 8 for p in res["points"])
    assert res["approx"]["heldout_attention_kl"] > 0 and len(res["commands"]) == 4
    plot_curves(res, tmp_path / "curve.png", "tiny")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_sweep_commands_name_the_calibration_and_init_schedule(tmp_path):
    from sttabt_edge.train.sweep import SweepPlan, cli_commands

    plan = SweepPlan(targets=[0.3], methods=["concrete", "ltp"])
    plain = cli_commands(tmp_path / "m", tmp_path / "d", tmp_path / "w", plan)
    assert not any("--calib-on" in c or "--init-schedule" in c for c in plain)
    plan.calib_on_eval, plan.scfg = True, plan.scfg.replace(init_schedule="shared")
    cmds = cli_commands(tmp_path / "m", tmp_path / "d", tmp_path / "w", plan)
    assert all("--calib-on eval" in c for c in cmds[1:])
    assert "--init-schedule shared" in cmds[1] and "--init-schedule" not in cmds[2]  # concrete only


def test_sweep_records_unreachable_targets(image_dir, tmp_path):
    from sttabt_edge.train.sweep import run_sweep

    plan, res = _tiny_sweep(
        image_dir,
        tmp_path,
        targets=[0.05],  # below both floors: concrete's always-kept tokens, ToMe's half-per-layer merging
        methods=["concrete", "tome"],
        approx_cfg=cfg(steps=1),
    )
    model_dir = tmp_path / "vit"
    assert [(u["method"], u["target"]) for u in res["unreachable"]] == [("concrete", 0.05)]
    assert "outside what the STTABT thresholds can reach" in res["unreachable"][0]["reason"]
    assert not (tmp_path / "work" / "concrete-0.05" / "sttabt.json").exists()
    (tome,) = res["points"]
    assert tome["method"] == "tome" and not tome["target_reachable"] and tome["calib_retention"] > 0.2
    # 17 tokens, one keep ratio for every layer, union nesting: retention moves in coarse steps
    # (each step of k adds a token to every layer); 0.5 is within REACH_TOL of one of them
    plan.approx_dir, plan.targets, plan.methods = tmp_path / "work" / "approx", [0.5], ["sttabt-topk"]
    again = run_sweep(model_dir, image_dir, tmp_path / "work2", plan, log=lambda s: None)
    assert again["approx"]["dir"] == str(plan.approx_dir) and not (tmp_path / "work2" / "approx").exists()
    assert again["points"][0]["target_reachable"] and "train approx" not in " ".join(again["commands"])
    assert isinstance(again["points"][0]["keep_ratio"], float)  # one ratio for every layer, as exported
