"""Torch-free input preprocessing for the exported models.

The runtime must reproduce the training-time preprocessing bit for bit without torch,
torchvision or transformers: images follow the torchvision/timm eval convention
(resize shorter side, centre crop, scale, normalize) and text uses the model's own
``tokenizer.json`` through the ``tokenizers`` library, padded the way ``AutoTokenizer``
pads with ``padding=True``.

Images come from anywhere, so they are bounded before they are decoded (:mod:`.images`): the
header's size and aspect ratio, and the size of the resized image, are checked first.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sttabt_edge.errors import InputError, InputNotFoundError, InputTypeError
from sttabt_edge.runtime.contract import INTERPOLATIONS, MAX_IMAGE_SIZE, MAX_RESIZE_SIZE
from sttabt_edge.runtime.images import MAX_ASPECT_RATIO, MAX_RESIZED_PIXELS, load_rgb, to_rgb

if TYPE_CHECKING:  # pragma: no cover - typing only, keeps pillow/tokenizers imports lazy
    from PIL import Image
    from tokenizers import Tokenizer

    ImageInput = str | os.PathLike[str] | Image.Image

__all__ = ["ImagePreprocess", "TextPreprocess"]

# tokenizer_config.json sometimes stores a huge sentinel (int(1e30)) meaning "no limit".
_MAX_SANE_LENGTH = 1_000_000
_DEFAULT_MODEL_MAX_LENGTH = 512


def _float_triple(value: Sequence[float], name: str) -> tuple[float, float, float]:
    items = tuple(float(v) for v in value)
    if len(items) != 3:
        raise InputError(f"{name} must have 3 values (one per RGB channel), got {len(items)}")
    return items[0], items[1], items[2]


@dataclass(frozen=True)
class ImagePreprocess:
    """Eval-time image preprocessing, identical to torchvision's Resize + CenterCrop + Normalize.

    Kept as plain data so it can be stored in the exported model's metadata (``to_dict``) and
    rebuilt on the device (``from_dict``) without drifting from what the model was trained on.
    """

    image_size: int = 224
    resize_size: int = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = field(default=(0.485, 0.456, 0.406))
    std: tuple[float, float, float] = field(default=(0.229, 0.224, 0.225))

    def __post_init__(self) -> None:
        if not 0 < int(self.image_size) <= MAX_IMAGE_SIZE or not 0 < int(self.resize_size) <= MAX_RESIZE_SIZE:
            raise InputError(
                f"image_size and resize_size must be in [1, {MAX_IMAGE_SIZE}] and [1, {MAX_RESIZE_SIZE}], "
                f"got {self.image_size}, {self.resize_size}"
            )
        if self.image_size > self.resize_size:
            raise InputError(
                f"image_size ({self.image_size}) must not exceed resize_size ({self.resize_size}): "
                "the centre crop would fall outside the resized image"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        mean = _float_triple(self.mean, "mean")
        std = _float_triple(self.std, "std")
        if any(not s > 0 for s in std):
            raise InputError(f"std values must be positive, got {std}")
        # Normalize JSON lists to tuples so equality and hashing work after a round trip.
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the exported model's metadata."""
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocess:
        """Rebuild from ``to_dict`` output; unknown keys are an error so typos are not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown ImagePreprocess keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(data))

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Preprocess one image or a list of images (paths or PIL images) to float32 (B, 3, H, W)."""
        from PIL import Image

        if isinstance(images, (str, os.PathLike, Image.Image)):
            batch: list[Any] = [images]
        else:
            batch = list(images)
        if not batch:
            raise InputError("ImagePreprocess got an empty list of images; pass at least one image")
        arrays = [self._one(item) for item in batch]
        return np.ascontiguousarray(np.stack(arrays, axis=0))

    def _one(self, item: Any) -> np.ndarray:
        from PIL import Image

        if isinstance(item, Image.Image):
            self.check_geometry(item.size, "image")
            img = to_rgb(item, "image")
        elif isinstance(item, (str, os.PathLike)):
            img = load_rgb(item, self.check_geometry)
        else:
            raise InputTypeError(f"expected an image path or a PIL.Image.Image, got {type(item).__name__}")
        img = self._resize_shorter(img)
        img = self._center_crop(img)
        x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
        x = x.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return ((x - mean) / std).astype(np.float32, copy=False)

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) after the shorter side goes to ``resize_size``, longer side truncated as torchvision does."""
        w, h = size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def check_geometry(self, size: tuple[int, int], name: str) -> None:
        """Refuse, from the header alone, images whose decode or resize would be unbounded."""
        w, h = size
        if w < 1 or h < 1:
            raise InputError(f"{name} has no pixels ({w}x{h})")
        if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
            raise InputError(
                f"{name} is {w}x{h} pixels: aspect ratio over {MAX_ASPECT_RATIO}:1 (the centre crop would see "
                "almost none of it); crop it first"
            )
        rw, rh = self.resized_size(size)
        if rw * rh > MAX_RESIZED_PIXELS:
            raise InputError(
                f"{name} is {w}x{h} pixels: resizing its shorter side to {self.resize_size} gives {rw}x{rh}, "
                f"over the {MAX_RESIZED_PIXELS:,}-pixel limit"
            )

    def _resize_shorter(self, img: Image.Image) -> Image.Image:
        """Shorter side to ``resize_size``, longer side truncated as torchvision does."""
        from PIL import Image

        resample = getattr(Image.Resampling, self.interpolation.upper())
        return img.resize(self.resized_size(img.size), resample)

    def _center_crop(self, img: Image.Image) -> Image.Image:
        """Centre crop with torchvision's rounding of the offsets."""
        w, h = img.size
        crop = self.image_size
        top = int(round((h - crop) / 2.0))
        left = int(round((w - crop) / 2.0))
        return img.crop((left, top, left + crop, top + crop))


def _read_model_max_length(tokenizer_json: Path) -> int:
    config = tokenizer_json.parent / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < _MAX_SANE_LENGTH:
            return int(value)
    return _DEFAULT_MODEL_MAX_LENGTH


class TextPreprocess:
    """Tokenize text to int64 numpy arrays, matching ``AutoTokenizer(..., padding=True)``.

    Padding is dynamic (to the longest sequence in the batch). Too-long input is an error
    unless ``truncation=True``: a BERT with 512 positions would otherwise fail deep inside
    the ONNX runtime, or silently lose the end of the text. The given ``tokenizer`` is taken
    over: its own padding/truncation settings are cleared.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        model_max_length: int = _DEFAULT_MODEL_MAX_LENGTH,
        max_length: int | None = None,
    ) -> None:
        if model_max_length <= 0:
            raise InputError(f"model_max_length must be positive, got {model_max_length}")
        self.model_max_length = int(model_max_length)
        self.max_length = self._check_max_length(max_length)
        padding = tokenizer.padding
        if padding is not None:
            self.pad_id = int(padding.get("pad_id", 0))
            self.pad_type_id = int(padding.get("pad_type_id", 0))
        else:
            pad = tokenizer.token_to_id("[PAD]")
            self.pad_id = int(pad) if pad is not None else 0
            self.pad_type_id = 0
        # tokenizer.json may carry its own padding/truncation (e.g. truncate at 128); AutoTokenizer
        # ignores those for a plain call, so we start from neither and set truncation per call.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # truncation is tokenizer state: serialize encode calls

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], max_length: int | None = None, model_max_length: int | None = None
    ) -> TextPreprocess:
        """Load ``tokenizer.json`` (or a folder holding it); the limit comes from tokenizer_config.json."""
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise InputNotFoundError(f"tokenizer file not found: {p}")
        if model_max_length is None:
            model_max_length = _read_model_max_length(p)
        try:
            tokenizer = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise InputError(f"cannot load tokenizer {p}: {str(e).splitlines()[0] if str(e) else e!r}") from e
        return cls(tokenizer, model_max_length=model_max_length, max_length=max_length)

    @property
    def limit(self) -> int:
        """Tokens a text may have: ``max_length`` when set, else the model's own limit."""
        return self.max_length or self.model_max_length

    def _check_max_length(self, max_length: int | None) -> int | None:
        if max_length is None:
            return None
        if max_length <= 0:
            raise InputError(f"max_length must be positive, got {max_length}")
        if max_length > self.model_max_length:
            raise InputError(
                f"max_length {max_length} exceeds the model's limit model_max_length={self.model_max_length}"
            )
        return int(max_length)

    def token_lengths(self, texts: str | Sequence[str] | Sequence[tuple[str, str]]) -> list[int]:
        """Tokens per text (special tokens included), untruncated and unchecked against the limit:
        for callers that word their own too-long error. Bad texts raise as in :meth:`__call__`."""
        batch = _normalize_texts(texts)
        with self._lock:
            self._tokenizer.no_truncation()
            try:
                return [len(enc.ids) for enc in self._tokenizer.encode_batch(batch, add_special_tokens=True)]
            except Exception as e:  # tokenizers raises a bare Exception
                raise InputError(f"tokenization failed: {e}") from e

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for decoding and token strings)."""
        return self._tokenizer

    def __call__(
        self,
        texts: str | Sequence[str] | Sequence[tuple[str, str]],
        max_length: int | None = None,
        truncation: bool = False,
    ) -> dict[str, np.ndarray]:
        """Tokenize a text, a list of texts or a list of (text_a, text_b) pairs.

        Returns ``input_ids``, ``attention_mask`` and ``token_type_ids`` as int64 (B, N).
        """
        batch = _normalize_texts(texts)
        limit = self._check_max_length(max_length) or self.limit
        with self._lock:
            if truncation:
                self._tokenizer.enable_truncation(
                    max_length=limit, strategy="longest_first", direction="right"
                )
            else:
                self._tokenizer.no_truncation()
            try:
                encodings = self._tokenizer.encode_batch(batch, add_special_tokens=True)
            except Exception as e:  # tokenizers raises a bare Exception, e.g. max_length < special tokens
                raise InputError(f"tokenization failed with max_length={limit}: {e}") from e
            finally:
                self._tokenizer.no_truncation()
        lengths = [len(enc.ids) for enc in encodings]
        if not truncation:
            for i, n in enumerate(lengths):
                if n > limit:
                    raise InputError(
                        f"text {i} is {n} tokens long, over the limit of {limit} tokens "
                        f"(model_max_length={self.model_max_length}); pass truncation=True to cut it"
                    )
        width = max(lengths)
        out = {
            "input_ids": np.full((len(batch), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(batch), width), dtype=np.int64),
            "token_type_ids": np.full((len(batch), width), self.pad_type_id, dtype=np.int64),
        }
        for i, enc in enumerate(encodings):
            n = lengths[i]
            out["input_ids"][i, :n] = enc.ids
            out["attention_mask"][i, :n] = enc.attention_mask
            out["token_type_ids"][i, :n] = enc.type_ids
        return out


def _normalize_texts(texts: Any) -> list[str] | list[tuple[str, str]]:
    """Accept a text, a list of texts, or a list of pairs; reject mixtures with a clear error."""
    if isinstance(texts, str):
        return [_unicode(texts, 0)]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InputTypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    items = list(texts)
    if not items:
        raise InputError("TextPreprocess got an empty list of texts; pass at least one text")
    if all(isinstance(t, str) for t in items):
        return [_unicode(t, i) for i, t in enumerate(items)]
    pairs: list[tuple[str, str]] = []
    for i, t in enumerate(items):
        if not (isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t)):
            raise InputTypeError(
                f"texts must be all strings or all (text_a, text_b) pairs of strings; item {i} is {t!r:.80}"
            )
        pairs.append((_unicode(t[0], i), _unicode(t[1], i)))
    return pairs


def _unicode(text: str, index: int) -> str:
    """Text the tokenizer can take: lone surrogates (how Python carries undecodable bytes, e.g. a
    non-UTF-8 command-line argument) would otherwise fail inside tokenizers with its raw message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"text {index} is not valid Unicode: {e.reason} at character {e.start} (undecodable bytes?); "
            "pass UTF-8 text"
        ) from None
    return text
