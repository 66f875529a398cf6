"""Training batches: augmentation, length bucketing, and plans that make resuming exact.

Everything a batch contains is a pure function of (seed, epoch, batch index): the batch
plan of an epoch is a seeded permutation, and each image's augmentation draws from a
generator seeded with (seed, epoch, example index). Resuming at step s therefore sees
exactly the batches an uninterrupted run would, whatever the number of DataLoader
workers, and DDP ranks take disjoint batches of the same plan (rank r gets batches
r, r+W, r+2W, ... like ``DistributedSampler``). The strong recipe (train/augment.py:
RandAugment, erasing, mixup / cutmix) keeps this: per-image draws continue the example's
generator, and a batch's mixup draws from one seeded with (seed, epoch, its indices).
Where examples come from: sources.py; the batch plans: plans.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sttabt_edge.data import Example, text_batch
from sttabt_edge.errors import InputError
from sttabt_edge.runtime import ImagePreprocess, TextPreprocess
from sttabt_edge.train.augment import AugmentConfig, mix_batch, rand_augment, random_erasing
from sttabt_edge.train.plans import bucketed_batches, shard, shuffled_batches
from sttabt_edge.train.sources import HFImage, load_splits, open_image, split_half

if TYPE_CHECKING:
    from sttabt_edge.train.train_config import TrainConfig

__all__ = [
    "Batch",
    "BatchSource",
    "TrainData",
    "augment_image",
    "bucketed_batches",
    "load_splits",
    "prepare_data",
    "shard",
    "split_half",
]

Inputs = dict[str, np.ndarray]
Batch = tuple[Inputs, "np.ndarray | None"]  # model inputs, labels (None: unlabeled)


# ---- image augmentation (PIL + numpy, the torchvision recipe) ---------------------------------


def resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (left, top, w, h). 10 tries, then a centre crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augment_image(
    img: Any, pre: ImagePreprocess, rng: np.random.Generator, recipe: AugmentConfig | None = None
) -> np.ndarray:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) to the eval size + flip, normalized as ``pre``;
    with a ``recipe``, also its RandAugment (before normalizing) and random erasing (after).

    PIL image -> float32 (3, S, S), the layout of :class:`ImagePreprocess`.
    """
    from PIL import Image

    img = img.convert("RGB")
    width, height = img.size
    left, top, w, h = resized_crop_box(width, height, rng)
    resample = getattr(Image.Resampling, pre.interpolation.upper())
    crop = img.resize((pre.image_size, pre.image_size), resample, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if recipe is not None and recipe.randaug_n > 0:
        fill = tuple(min(255, round(255 * c)) for c in pre.mean)  # timm's img_mean
        crop = rand_augment(crop, recipe.randaug_n, recipe.randaug_m, rng, recipe.randaug_mstd, fill)
    x = np.asarray(crop, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    x = ((x - mean) / std).astype(np.float32, copy=False)  # (3, S, S)
    return x if recipe is None else random_erasing(x, recipe.erasing, rng)


class BatchSource:
    """Maps (rank-local batch index k, rank, world) to a batch; a pure function of the seed."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def make_plan(self, rng: np.random.Generator) -> list[np.ndarray]:
        return shuffled_batches(self.num_examples, self.batch_size, rng)

    def plan(self, epoch: int) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.make_plan(np.random.default_rng([self.seed, epoch])))
        return self._cache[1]

    def local_batches(self, world: int = 1) -> int:
        return len(shard(self.plan(0), 0, world))

    def load(self, indices: np.ndarray, epoch: int) -> Batch:
        raise NotImplementedError

    def get(self, k: int, rank: int = 0, world: int = 1) -> Batch:
        n = self.local_batches(world)
        epoch, j = divmod(k, n)
        return self.load(shard(self.plan(epoch), rank, world)[j], epoch)


def stack_labels(examples: Sequence[Example], indices: np.ndarray) -> np.ndarray | None:
    labels = [examples[i].label for i in indices]
    if any(y is None for y in labels):
        return None
    return np.asarray(labels, dtype=np.float32 if isinstance(labels[0], float) else np.int64)


# mixup seeds are [seed, epoch, MIX_STREAM, *indices], never an image's [seed, epoch, i] (numpy pads
# short seeds with zeros: [s, e, i] == [s, e, i, 0], so the tag must differ from every index)
MIX_STREAM = 2**32 - 1


def mix_seed(seed: int, epoch: int, indices: np.ndarray) -> list[int]:
    """Seed of a batch's mixup / cutmix draws: a function of the batch (resume- and worker-proof)."""
    return [seed, epoch, MIX_STREAM, *(int(i) for i in indices)]


def class_count(examples: Sequence[Example], num_classes: int | None) -> int:
    """Width of the soft targets: ``num_classes`` (the model head), else 1 + the largest label.
    Mixup mixes class labels only: float (regression) labels are an error."""
    labels = [e.label for e in examples if e.label is not None]
    if any(not isinstance(y, int | np.integer) for y in labels):
        raise InputError("strong augmentation (mixup / cutmix soft targets) needs integer class labels")
    top = max((int(y) for y in labels), default=0)
    if num_classes and top >= num_classes:
        raise InputError(f"label {top} does not fit a {num_classes}-class head")
    return num_classes or top + 1


class ImageBatches(BatchSource):
    """Images, augmented (``augment=True``) or with the eval preprocessing.

    ``augment`` an :class:`AugmentConfig`: crop + flip plus that recipe, and the labels become
    float32 (B, num_classes) soft targets (mixup / cutmix, label smoothing).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        pre: ImagePreprocess,
        batch_size: int,
        seed: int,
        augment: bool | AugmentConfig = True,
        num_classes: int | None = None,
    ):
        super().__init__(len(examples), batch_size, seed)
        self.examples, self.pre, self.augment = list(examples), pre, bool(augment)
        self.recipe = augment if isinstance(augment, AugmentConfig) else None
        self.num_classes = class_count(self.examples, num_classes) if self.recipe is not None else num_classes

    def load(self, indices: np.ndarray, epoch: int) -> Batch:
        arrays = []
        for i in indices:
            img = open_image(self.examples[i].inputs)
            if self.augment:
                rng = np.random.default_rng([self.seed, epoch, int(i)])
                arrays.append(augment_image(img, self.pre, rng, self.recipe))
            else:
                arrays.append(self.pre(img)[0])
        x, labels = np.stack(arrays), stack_labels(self.examples, indices)  # (B, 3, S, S), (B,)
        if self.recipe is None:
            return {"pixel_values": x}, labels
        rng = np.random.default_rng(mix_seed(self.seed, epoch, indices))
        x, soft = mix_batch(x, labels, int(self.num_classes or 0), self.recipe, rng)  # soft: (B, C)
        return {"pixel_values": x}, soft


def tokenize_all(
    texts: Sequence[str | tuple[str, str]], pre: TextPreprocess, max_length: int, chunk: int = 2048
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and type ids of every text, unpadded (tokenized once, padded per batch)."""
    ids: list[np.ndarray] = []
    types: list[np.ndarray] = []
    for i in range(0, len(texts), chunk):
        enc = pre(text_batch(texts[i : i + chunk]), max_length=max_length, truncation=True)
        n = enc["attention_mask"].sum(axis=1)
        ids.extend(enc["input_ids"][j, : n[j]].copy() for j in range(len(n)))
        types.extend(enc["token_type_ids"][j, : n[j]].copy() for j in range(len(n)))
    return ids, types


def pad_batch(
    ids: Sequence[np.ndarray], types: Sequence[np.ndarray], pad_id: int, pad_type_id: int
) -> Inputs:
    """Right-pad to the longest sequence of the batch (dynamic padding) -> int64 (B, N) arrays."""
    width = max(len(x) for x in ids)
    out = {
        "input_ids": np.full((len(ids), width), pad_id, dtype=np.int64),
        "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
        "token_type_ids": np.full((len(ids), width), pad_type_id, dtype=np.int64),
    }
    for j, (a, t) in enumerate(zip(ids, types, strict=True)):
        out["input_ids"][j, : len(a)] = a
        out["attention_mask"][j, : len(a)] = 1
        out["token_type_ids"][j, : len(a)] = t
    return out


class TextBatches(BatchSource):
    """Pre-tokenized text with length-bucketed, dynamically padded batches."""

    def __init__(
        self,
        examples: Sequence[Example],
        pre: TextPreprocess,
        batch_size: int,
        seed: int,
        max_length: int = 128,
        bucket_batches: int = 50,
        tokens: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    ):
        super().__init__(len(examples), batch_size, seed)
        self.examples = list(examples)
        texts = [e.inputs for e in self.examples]
        self.ids, self.types = tokens if tokens is not None else tokenize_all(texts, pre, max_length)  # type: ignore[arg-type]
        self.lengths = np.asarray([len(x) for x in self.ids])
        self.pad_id, self.pad_type_id = pre.pad_id, pre.pad_type_id
        self.bucket_batches = bucket_batches

    def make_plan(self, rng: np.random.Generator) -> list[np.ndarray]:
        return bucketed_batches(self.lengths, self.batch_size, rng, self.bucket_batches)

    def load(self, indices: np.ndarray, epoch: int) -> Batch:
        inputs = pad_batch(
            [self.ids[i] for i in indices], [self.types[i] for i in indices], self.pad_id, self.pad_type_id
        )
        return inputs, stack_labels(self.examples, indices)


@dataclass
class TrainData:
    """Examples plus the model's preprocessing: what every trainer takes as ``data``."""

    train: list[Example]
    eval: list[Example] | None
    modality: str
    task: str | None = None
    image: ImagePreprocess | None = None
    text: TextPreprocess | None = None
    calib: list[Example] | None = None  # what thresholds are calibrated on (None: the training set)
    num_classes: int | None = None  # the model head's size: width of soft (mixup) targets; None: from labels
    _tokens: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)  # max_length -> ids

    def tokens(self, max_length: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Training texts tokenized once per ``max_length`` (every trainer of a sweep reuses them)."""
        if max_length not in self._tokens:
            self._tokens[max_length] = tokenize_all([e.inputs for e in self.train], self.text, max_length)  # type: ignore[arg-type, misc]
        return self._tokens[max_length]

    def training_source(self, cfg: TrainConfig) -> BatchSource:
        """:meth:`source` with a training config's batch, seed and data settings: every trainer's batches."""
        d = cfg.data
        return self.source(cfg.optim.batch_size, cfg.optim.seed, d.augment, d.max_length, d.bucket_batches)

    def source(
        self,
        batch_size: int,
        seed: int,
        augment: bool | AugmentConfig = True,
        max_length: int = 128,
        bucket_batches: int = 50,
    ) -> BatchSource:
        """Training batches (images augmented unless ``augment=False``; an :class:`AugmentConfig`
        adds the strong recipe and soft labels; text ignores it)."""
        if self.modality == "image":
            if self.image is None:
                raise InputError("image data needs an ImagePreprocess (use prepare_data)")
            return ImageBatches(self.train, self.image, batch_size, seed, augment, self.num_classes)
        if self.text is None:
            raise InputError(
                "text data needs a TextPreprocess (the model's tokenizer.json; use prepare_data)"
            )
        return TextBatches(
            self.train, self.text, batch_size, seed, max_length, bucket_batches, self.tokens(max_length)
        )

    def calibration_batches(
        self, n: int, seed: int = 0, max_length: int = 128, chunk: int = 32
    ) -> list[Inputs]:
        """``n`` random examples of ``calib`` (default: the training set), eval preprocessing,
        in batches of ``chunk``.

        Thresholds are calibrated on these: a random sample has the length and content mix of
        the data (a length-bucketed training batch would not), and no augmentation noise.
        Thresholds keep a data-dependent fraction, so when deployment inputs differ (SST-2
        train is mostly short phrases, dev full sentences) set ``calib`` to unlabeled inputs
        like them.
        """
        pool = self if self.calib is None else replace(self, train=list(self.calib), calib=None, _tokens={})
        idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(pool.train))[: max(1, n)])
        src = pool.source(chunk, seed, augment=False, max_length=max_length)
        return [src.load(idx[i : i + chunk], 0)[0] for i in range(0, len(idx), chunk)]

    def eval_batches(self, batch_size: int, max_samples: int = 0, max_length: int = 128) -> list[Batch]:
        """Held-out batches with the eval preprocessing, in file order (for losses such as attention KL)."""
        if not self.eval:
            return []
        examples = self.eval[:max_samples] if max_samples else self.eval
        if self.modality == "image":
            src: BatchSource = ImageBatches(examples, self.image, batch_size, 0, augment=False)  # type: ignore[arg-type]
        else:
            src = TextBatches(examples, self.text, batch_size, 0, max_length)  # type: ignore[arg-type]
        n = len(examples)
        return [src.load(np.arange(i, min(i + batch_size, n)), 0) for i in range(0, n, batch_size)]

    def eval_examples(self, max_samples: int = 0) -> list[Example]:
        """Eval examples ready for :func:`sttabt_edge.evaluate.evaluate` (lazy dataset images decoded)."""
        examples = list(self.eval or [])[: max_samples or None]
        return [
            Example(open_image(e.inputs), e.label) if isinstance(e.inputs, HFImage) else e for e in examples
        ]


def prepare_data(
    path: str | Path,
    model: Any,
    model_dir: str | Path | None = None,
    eval_path: str | Path | None = None,
    labeled: bool = True,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> TrainData:
    """:func:`load_splits` + the model's preprocessing (its eval image pipeline, or the
    ``tokenizer.json`` in ``model_dir``)."""
    from sttabt_edge.data import image_preprocess_for, model_class_names

    if class_names is None and model_dir is not None and Path(model_dir).is_dir():
        class_names = model_class_names(model_dir)
    splits = load_splits(path, eval_path, class_names, labeled, seed)
    if splits.modality == "image":
        head = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0) or None
        return TrainData(
            splits.train,
            splits.eval,
            "image",
            splits.task,
            image=image_preprocess_for(model),
            num_classes=head,
        )
    tok = Path(model_dir) if model_dir is not None else None
    if tok is None or not (tok / "tokenizer.json").is_file():
        raise InputError(f"text data needs the model's tokenizer.json; none found in {model_dir}")
    return TrainData(splits.train, splits.eval, "text", splits.task, text=TextPreprocess.from_file(tok))
