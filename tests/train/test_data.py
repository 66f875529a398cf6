"""train/data.py: seeded augmentation, dynamically padded text batches, labeled eval examples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_bert
from trainkit import image_data, vit

from sttabt_edge.data import Example
from sttabt_edge.train.data import augment_image, prepare_data, resized_crop_box

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


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


def test_eval_examples_keep_labels(image_dir):
    model = vit()
    data = image_data(image_dir, model)
    assert all(isinstance(e, Example) and e.label is not None for e in data.eval_examples())
