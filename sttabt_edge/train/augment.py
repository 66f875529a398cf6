"""Strong augmentation for small image training sets: RandAugment, random erasing, mixup / cutmix.

The DeiT / ViT recipe as timm implements it (``rand-m9-mstd0.5-inc1``, ``reprob 0.25``,
``mixup 0.8``, ``cutmix 1.0``, ``smoothing 0.1``), in PIL + numpy so it runs in DataLoader
workers without torchvision. A 500-image training split (DeiT-Tiny on imagenet-sample) is
memorised in a few epochs; these views keep the task loss and the KD from the dense teacher
informative. Every random draw comes from the ``np.random.Generator`` passed in, which
train/data.py seeds from (seed, epoch, example index) per image and from (seed, epoch, batch
indices) per batch, so resumed runs see the same views (see that module's docstring).

Order, as in timm: crop + flip -> :func:`rand_augment` (PIL) -> normalise -> :func:`random_erasing`
(per image), then :func:`mix_batch` on the stacked batch, which also turns the labels into soft
(B, C) targets with label smoothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "MAX_MAGNITUDE",
    "OPS",
    "AugmentConfig",
    "apply_op",
    "cutmix_box",
    "mix_batch",
    "mix_params",
    "rand_augment",
    "random_erasing",
    "soft_targets",
]

MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM: magnitude m means level m / 10 of each op's range
Fill = tuple[int, ...]
Op = Callable[[Image.Image, float, np.random.Generator, Fill], Image.Image]


@dataclass(frozen=True)
class AugmentConfig:
    """The strong recipe; defaults are DeiT's. Zero turns a part off (:meth:`none`: all off)."""

    randaug_n: int = 2  # ops drawn per image (with replacement), each applied with probability 0.5
    randaug_m: float = 9.0  # magnitude, 0..10
    randaug_mstd: float = 0.5  # per-op gaussian noise on the magnitude (timm "mstd0.5"); 0 = fixed
    erasing: float = 0.25  # probability of one random-erasing box per image
    mixup: float = 0.8  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 1.0  # Beta(alpha, alpha) of cutmix; 0 = off
    switch_prob: float = 0.5  # with both on: probability that a batch uses cutmix instead of mixup
    smoothing: float = 0.1  # label smoothing of the soft targets

    def __post_init__(self) -> None:
        if self.randaug_n < 0 or not 0.0 <= self.randaug_m <= MAX_MAGNITUDE or self.randaug_mstd < 0:
            raise ValueError(
                f"randaug_n must be >= 0, randaug_m in [0, {MAX_MAGNITUDE:g}], randaug_mstd >= 0 "
                f"(got {self.randaug_n}, {self.randaug_m}, {self.randaug_mstd})"
            )
        for name in ("erasing", "switch_prob", "smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0 (got {self.mixup}, {self.cutmix})")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every part off: crop + flip only, one-hot soft targets."""
        return cls(
            randaug_n=0, randaug_m=0.0, randaug_mstd=0.0, erasing=0.0, mixup=0.0, cutmix=0.0, smoothing=0.0
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """From JSON; missing keys take the defaults, unknown keys are an error (as in train/config.py)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AugmentConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


# ---- RandAugment ops (timm auto_augment.py, the "increasing" set: severity grows with m) ----------


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _fill(img: Image.Image, fill: Fill) -> Any:
    """The fill colour in the image's band count (mean colour, like timm's img_mean)."""
    bands = len(img.getbands())
    return fill[0] if bands == 1 else tuple(fill[:bands])


def _affine(img: Image.Image, matrix: tuple[float, ...], fill: Fill) -> Image.Image:
    return img.transform(
        img.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC, fillcolor=_fill(img, fill)
    )


def _level(m: float) -> float:
    return m / MAX_MAGNITUDE


def auto_contrast(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return ImageOps.equalize(img)


def invert(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return ImageOps.invert(img)


def rotate(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    """Up to +-30 degrees."""
    return img.rotate(_signed(_level(m) * 30.0, rng), Image.Resampling.BICUBIC, fillcolor=_fill(img, fill))


def posterize(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    """Keep 4 (m = 0) down to 0 (m = 10) most significant bits, as timm's PosterizeIncreasing
    (a lookup table: Pillow >= 12 refuses ``ImageOps.posterize(img, 0)``)."""
    mask = (0xFF << (8 - (4 - int(_level(m) * 4)))) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def solarize(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    """Invert pixels above a threshold falling from 256 (identity) to 0."""
    return ImageOps.solarize(img, 256 - int(_level(m) * 256))


def solarize_add(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    """Add up to 110 to pixels below 128 (clipped at 255)."""
    add = int(_level(m) * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands())) if img.mode in ("L", "RGB") else img


def _enhance(kind: Callable[[Image.Image], Any]) -> Op:
    def op(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
        """Enhance factor 1 +- 0.9 level (1 = identity), at least 0.1."""
        return kind(img).enhance(max(0.1, 1.0 + _signed(_level(m) * 0.9, rng)))

    return op


def shear_x(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return _affine(img, (1, _signed(_level(m) * 0.3, rng), 0, 0, 1, 0), fill)


def shear_y(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return _affine(img, (1, 0, 0, _signed(_level(m) * 0.3, rng), 1, 0), fill)


def translate_x(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    """Up to 45% of the width (timm TranslateXRel)."""
    return _affine(img, (1, 0, _signed(_level(m) * 0.45, rng) * img.size[0], 0, 1, 0), fill)


def translate_y(img: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, _signed(_level(m) * 0.45, rng) * img.size[1]), fill)


OPS: Mapping[str, Op] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}


def apply_op(
    img: Image.Image, name: str, magnitude: float, rng: np.random.Generator, fill: Fill = (128, 128, 128)
) -> Image.Image:
    """One op of :data:`OPS` at ``magnitude`` (0..10); draws only the op's sign from ``rng``."""
    return OPS[name](img, magnitude, rng, fill)


def rand_augment(
    img: Image.Image,
    n: int,
    m: float,
    rng: np.random.Generator,
    mstd: float = 0.0,
    fill: Fill = (128, 128, 128),
) -> Image.Image:
    """timm RandAugment: ``n`` ops drawn with replacement, each applied with probability 0.5 at
    magnitude N(m, mstd) clipped to [0, 10]."""
    names = list(OPS)
    for k in rng.integers(0, len(names), size=n):
        if rng.random() >= 0.5:
            continue
        mag = float(np.clip(rng.normal(m, mstd), 0.0, MAX_MAGNITUDE)) if mstd > 0 else m
        img = apply_op(img, names[int(k)], mag, rng, fill)
    return img


# ---- per image, after normalisation --------------------------------------------------------------


def random_erasing(
    x: np.ndarray,
    p: float,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 1 / 3),
    min_aspect: float = 0.3,
) -> np.ndarray:
    """timm RandomErasing (mode "pixel", one box): with probability ``p``, a box of 2%-33% of the
    image (aspect 0.3-3.3, 10 tries) filled with N(0, 1) noise, the statistics of a normalised image.

    (C, H, W) float32 -> a new (C, H, W) float32 (``x`` is not modified).
    """
    if p <= 0 or rng.random() >= p:
        return x
    c, height, width = x.shape
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            out = x.copy()
            out[:, top : top + h, left : left + w] = rng.standard_normal((c, h, w), dtype=np.float32)
            return out
    return x


# ---- per batch: mixup / cutmix and soft targets --------------------------------------------------


def mix_params(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[float, bool]:
    """(lambda, use cutmix) of one batch, as timm's Mixup: with both on, cutmix with ``switch_prob``;
    lambda ~ Beta(alpha, alpha) of the chosen one; (1.0, False) when both are off."""
    if cfg.mixup > 0 and cfg.cutmix > 0:
        use_cutmix = bool(rng.random() < cfg.switch_prob)
    elif cfg.mixup > 0 or cfg.cutmix > 0:
        use_cutmix = cfg.cutmix > 0
    else:
        return 1.0, False
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    return float(rng.beta(alpha, alpha)), use_cutmix


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int, int], float]:
    """timm rand_bbox: a box of sides sqrt(1 - lam) of the image around a uniform centre, clipped
    to the image. -> ((top, bottom, left, right), lambda corrected to 1 - box area / image area)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / float(height * width)


def soft_targets(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """Label-smoothed one-hot targets: 1 - s + s/C on the label, s/C elsewhere. (B,) int -> (B, C) float32."""
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return out


def mix_batch(
    x: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """timm Mixup (mode "batch"): each image mixed with the batch reversed, by mixup or a cutmix
    box (:func:`mix_params`), and targets mixed by the same lambda.

    (B, C, H, W) float32, (B,) int labels or None -> new (B, C, H, W) float32, (B, num_classes)
    float32 soft targets that sum to 1 (None for unlabeled batches).
    """
    lam, use_cutmix = mix_params(cfg, rng)
    if lam < 1.0:
        flipped = x[::-1]
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
            x = x.copy()
            x[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
        else:
            x = (np.float32(lam) * x + np.float32(1.0 - lam) * flipped).astype(np.float32, copy=False)
    if labels is None:
        return x, None
    y = soft_targets(labels, num_classes, cfg.smoothing)  # (B, num_classes)
    return x, (np.float32(lam) * y + np.float32(1.0 - lam) * y[::-1]).astype(np.float32, copy=False)
