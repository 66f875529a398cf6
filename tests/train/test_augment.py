"""Strong augmentation (train/augment.py): RandAugment ops, random erasing, mixup / cutmix soft
targets, their wiring into ImageBatches / TrainConfig / the task loss, and resume exactness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import VISION
from transformers import ViTConfig, ViTForImageClassification

from sttabt_edge.data import Example
from sttabt_edge.errors import InputError
from sttabt_edge.runtime import ImagePreprocess
from sttabt_edge.train.augment import (
    OPS,
    AugmentConfig,
    apply_op,
    cutmix_box,
    mix_batch,
    mix_params,
    rand_augment,
    random_erasing,
    soft_targets,
)
from sttabt_edge.train.config import TrainConfig
from sttabt_edge.train.data import ImageBatches, augment_image, prepare_data
from sttabt_edge.train.engine import TIMING_KEYS
from sttabt_edge.train.losses import task_loss

PRE = ImagePreprocess(image_size=VISION["image_size"], resize_size=36)
IDENTITY_AT_ZERO = {
    "Rotate",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
}


def picture(mode: str = "RGB", size: tuple[int, int] = (32, 28), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return img.convert(mode)


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    """12 flat ImageNet-style files <wnid>_<name>.png, 4 classes, assorted sizes."""
    d = tmp_path / "images"
    d.mkdir()
    for i in range(12):
        picture(size=(40 + i, 36), seed=i).save(d / f"n0000{i % 4}_img{i:02d}.png")
    return d


def vit(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**VISION, attn_implementation="eager")).eval()


# ---- RandAugment ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("name", list(OPS))
def test_op_keeps_size_mode_dtype_and_is_seeded(name, mode):
    img = picture(mode)
    a = apply_op(img, name, 9.0, np.random.default_rng(3), fill=(124, 116, 104))
    b = apply_op(img, name, 9.0, np.random.default_rng(3), fill=(124, 116, 104))
    assert a.size == img.size and a.mode == img.mode
    assert np.asarray(a).dtype == np.uint8 and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(img), np.asarray(picture(mode)))  # the input is untouched


@pytest.mark.parametrize("name", list(OPS))
def test_magnitude_zero_is_identity_where_it_should_be(name):
    img = picture().point(lambda v: 64 + v // 2)  # low contrast: AutoContrast / Equalize have work to do
    out = np.asarray(apply_op(img, name, 0.0, np.random.default_rng(0)))
    if name in IDENTITY_AT_ZERO:
        assert np.array_equal(out, np.asarray(img))
    else:  # AutoContrast / Equalize / Invert have no magnitude; Posterize keeps 4 bits at m = 0 (timm)
        assert not np.array_equal(out, np.asarray(img))


def test_magnitude_grows_the_change():
    yy, xx = np.mgrid[0:28, 0:32]
    smooth = Image.fromarray(np.stack([xx * 8, yy * 9, (xx + yy) * 4], -1).astype(np.uint8))  # gradients
    img = np.asarray(smooth, dtype=np.float64)
    for name in ("Rotate", "Solarize", "Contrast", "ShearX", "TranslateY"):
        diffs = [
            np.abs(np.asarray(apply_op(smooth, name, m, np.random.default_rng(1))) - img).mean()
            for m in (2.0, 9.0)
        ]
        assert diffs[0] < diffs[1], name


def test_rand_augment_is_seeded_and_n0_is_identity():
    img = picture()
    a, b = (np.asarray(rand_augment(img, 2, 9, np.random.default_rng([0, 1, 2]), 0.5)) for _ in range(2))
    assert np.array_equal(a, b)
    outs = {rand_augment(img, 2, 9, np.random.default_rng([0, 1, k]), 0.5).tobytes() for k in range(16)}
    assert len(outs) > 4  # different seeds, different views
    assert np.array_equal(np.asarray(rand_augment(img, 0, 9, np.random.default_rng(0))), np.asarray(img))


# ---- random erasing -------------------------------------------------------------------------------


def test_random_erasing_box_is_seeded_and_pure():
    x = np.zeros((3, 32, 32), dtype=np.float32)
    assert random_erasing(x, 0.0, np.random.default_rng(0)) is x
    a, b = (random_erasing(x, 1.0, np.random.default_rng(5)) for _ in range(2))
    assert a.shape == x.shape and a.dtype == np.float32 and np.array_equal(a, b)
    assert not x.any()  # input untouched
    rows, cols = np.nonzero(a.any(axis=0))
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert len(rows) == box and 0.02 * 32 * 32 * 0.5 <= box <= 32 * 32 / 3 * 1.5  # one filled rectangle
    hits = [random_erasing(x, 0.25, np.random.default_rng(k)).any() for k in range(400)]
    assert 0.18 < np.mean(hits) < 0.32


# ---- mixup / cutmix -------------------------------------------------------------------------------


def batch_of_constants(n: int = 4, size: int = 16) -> np.ndarray:
    """Image b is filled with the value b: every pixel tells which image it came from."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, size, size)).copy()


def test_mix_params_follow_the_switch():
    draws = [mix_params(AugmentConfig(), np.random.default_rng(k)) for k in range(400)]
    assert 0.4 < np.mean([c for _, c in draws]) < 0.6 and all(0.0 <= lam <= 1.0 for lam, _ in draws)
    assert mix_params(AugmentConfig.none(), np.random.default_rng(0)) == (1.0, False)
    assert not any(mix_params(AugmentConfig(cutmix=0.0), np.random.default_rng(k))[1] for k in range(50))
    assert all(mix_params(AugmentConfig(mixup=0.0), np.random.default_rng(k))[1] for k in range(50))
    assert all(mix_params(AugmentConfig(switch_prob=1.0), np.random.default_rng(k))[1] for k in range(50))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_sum_to_one(smoothing):
    y = soft_targets(np.array([0, 3, 2]), 5, smoothing)
    assert y.shape == (3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    assert y[1, 3] == pytest.approx(1 - smoothing + smoothing / 5) and y[1, 0] == pytest.approx(smoothing / 5)
    for k in range(20):
        x, soft = mix_batch(
            batch_of_constants(),
            np.array([0, 1, 2, 3]),
            6,
            AugmentConfig(smoothing=smoothing),
            np.random.default_rng(k),
        )
        assert (
            soft is not None and soft.shape == (4, 6) and soft.dtype == np.float32 and x.dtype == np.float32
        )
        np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)


def test_cutmix_lambda_is_the_pasted_area():
    cfg = AugmentConfig(mixup=0.0, smoothing=0.0)  # cutmix every batch
    x0, labels = batch_of_constants(), np.array([0, 1, 2, 3])
    for k in range(30):
        x, soft = mix_batch(x0, labels, 4, cfg, np.random.default_rng(k))
        assert soft is not None
        for b in range(4):
            own = float((x[b] == b).mean())  # share of image b's own pixels kept
            assert soft[b, b] == pytest.approx(own, abs=1e-6)
            assert soft[b, 3 - b] == pytest.approx(1 - own, abs=1e-6) or b == 3 - b
    (top, bottom, left, right), lam = cutmix_box(20, 30, 0.7, np.random.default_rng(0))
    assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 30
    assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 600)


def test_mixup_mixes_images_and_targets_alike():
    x0 = batch_of_constants()
    x, soft = mix_batch(
        x0, np.array([0, 1, 2, 3]), 4, AugmentConfig(cutmix=0.0, smoothing=0.0), np.random.default_rng(1)
    )
    assert soft is not None
    lam = float(soft[0, 0])
    np.testing.assert_allclose(x[0], lam * x0[0] + (1 - lam) * x0[3], rtol=1e-6)
    x1, none = mix_batch(x0, None, 4, AugmentConfig(cutmix=0.0), np.random.default_rng(1))
    assert none is None and np.array_equal(x1, x)  # unlabeled batches are mixed the same way
    assert mix_batch(x0, np.arange(4), 4, AugmentConfig.none(), np.random.default_rng(0))[0] is x0


# ---- wiring: ImageBatches, TrainConfig, the task loss ---------------------------------------------


def examples(image_dir: Path) -> list[Example]:
    return [Example(p, int(p.name[5])) for p in sorted(image_dir.iterdir())]


def test_strong_batches_are_redrawn_exactly(image_dir):
    """Resume exactness: a fresh source gives the same batch k; other epochs / k differ."""
    ex = examples(image_dir)
    make = lambda: ImageBatches(ex, PRE, 4, seed=7, augment=AugmentConfig(), num_classes=5)  # noqa: E731
    a, b = make().get(4), make().get(4)  # k = 4: epoch 1 of 3 batches
    assert a[1] is not None and b[1] is not None
    assert np.array_equal(a[0]["pixel_values"], b[0]["pixel_values"]) and np.array_equal(a[1], b[1])
    assert a[0]["pixel_values"].shape == (4, 3, 32, 32) and a[0]["pixel_values"].dtype == np.float32
    assert a[1].shape == (4, 5) and a[1].dtype == np.float32
    np.testing.assert_allclose(a[1].sum(1), 1.0, rtol=1e-5)
    assert not np.array_equal(make().get(1)[0]["pixel_values"], a[0]["pixel_values"])


def test_recipe_off_keeps_the_plain_pipeline(image_dir):
    """AugmentConfig.none() draws nothing extra: plain crop + flip pixels, one-hot soft labels."""
    ex = examples(image_dir)
    plain = ImageBatches(ex, PRE, 4, seed=3).get(2)
    off = ImageBatches(ex, PRE, 4, seed=3, augment=AugmentConfig.none(), num_classes=5).get(2)
    assert plain[1] is not None and off[1] is not None and plain[1].dtype == np.int64
    assert np.array_equal(plain[0]["pixel_values"], off[0]["pixel_values"])
    assert np.array_equal(off[1], np.eye(5, dtype=np.float32)[plain[1]])
    img = Image.open(ex[0].inputs)
    rng = lambda: np.random.default_rng([0, 1, 2])  # noqa: E731
    assert np.array_equal(
        augment_image(img, PRE, rng()), augment_image(img, PRE, rng(), AugmentConfig.none())
    )


def test_num_classes_comes_from_the_model_head(image_dir):
    data = prepare_data(image_dir, vit())
    assert data.num_classes == VISION["num_labels"]
    _, soft = data.source(4, 0, augment=AugmentConfig()).get(0)
    assert soft is not None and soft.shape == (4, VISION["num_labels"])
    with pytest.raises(InputError, match="does not fit"):
        ImageBatches(examples(image_dir), PRE, 4, 0, AugmentConfig(), num_classes=3)
    with pytest.raises(InputError, match="integer class labels"):
        ImageBatches([Example(picture(), 0.5)], PRE, 1, 0, AugmentConfig())


def test_train_config_round_trip_and_old_configs(tmp_path):
    assert (
        TrainConfig().data.augment is True and TrainConfig.from_dict({"augment": False}).data.augment is False
    )
    strong = TrainConfig.from_dict({"augment": "strong"})
    assert strong.data.augment == AugmentConfig()
    custom = TrainConfig.from_dict({"augment": {"mixup": 0.0, "cutmix": 0.0}})
    assert custom.data.augment == AugmentConfig(mixup=0.0, cutmix=0.0)
    for c in (strong, custom, TrainConfig()):
        c.save(tmp_path / "c.json")
        assert TrainConfig.load(tmp_path / "c.json") == c
        assert TrainConfig.from_dict(json.loads(c.to_json())) == c
    with pytest.raises(ValueError, match="unknown AugmentConfig keys"):
        TrainConfig.from_dict({"augment": {"mixupp": 0.5}})
    with pytest.raises(ValueError, match="augment must be"):
        TrainConfig.from_dict({"augment": "weak"})
    with pytest.raises(ValueError, match="erasing"):
        AugmentConfig(erasing=2.0)


def test_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3])
    hard = task_loss(logits, labels)
    assert torch.equal(hard, F.cross_entropy(logits, labels))  # hard labels: unchanged
    one_hot = torch.from_numpy(soft_targets(labels.numpy(), 5))
    torch.testing.assert_close(task_loss(logits, one_hot), hard)
    smooth = torch.from_numpy(soft_targets(labels.numpy(), 5, 0.1))
    torch.testing.assert_close(
        task_loss(logits, smooth), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    with pytest.raises(InputError, match="do not match"):
        task_loss(logits, torch.full((6, 4), 0.25))


def test_baseline_trains_and_resumes_exactly_with_strong_augmentation(image_dir, tmp_path):
    """Soft labels reach the task CE through SparseObjective; 4 steps == 2 + resume 2."""
    from sttabt_edge.train.baselines import train_baseline

    torch.set_num_threads(1)
    data = prepare_data(image_dir, vit())
    kw = dict(
        lr=1e-3, steps=4, batch_size=4, warmup=0.0, log_every=1, progress=False, augment=AugmentConfig()
    )

    def run(out: Path, stop_after: int = 0, resume: bool = False):
        cfg = TrainConfig.of(**kw, stop_after=stop_after)
        return train_baseline("topk", vit(), data, 0.5, cfg, out=out, resume=resume)

    run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    run(tmp_path / "b", resume=True)
    logs = [
        [
            {k: v for k, v in json.loads(ln).items() if k not in TIMING_KEYS}
            for ln in (d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert logs[0] == logs[1] and all(np.isfinite(r["task"]) for r in logs[0] if "task" in r)
    assert any("task" in r for r in logs[0])
