"""Evaluation data: ImageNet-style image folders and GLUE TSV files.

Both return plain Python lists so batching, tokenization and preprocessing stay in one
place (:func:`batches`) and reuse the torch-free runtime preprocessing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import InputTypeError
from sttabt_edge.runtime import ImagePreprocess, TextPreprocess

IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}

# task -> (sentence columns, label column, has header); column names when there is a header
GLUE_TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "SST-2": (("sentence",), "label"),
    "QNLI": (("question", "sentence"), "label"),
    "RTE": (("sentence1", "sentence2"), "label"),
    "WNLI": (("sentence1", "sentence2"), "label"),
    "STS-B": (("sentence1", "sentence2"), "score"),
    "MRPC": (("#1 String", "#2 String"), "Quality"),
}


@dataclass
class Example:
    inputs: str | tuple[str, str] | Path
    label: int | float


def image_folder(path: str | Path, class_names: Sequence[str] | None = None) -> list[Example]:
    """Class-per-subfolder (ImageFolder) or flat ``<wnid>_<name>.JPEG`` layout.

    The class index is the position of the subfolder name / wnid in ``class_names``
    (e.g. the model's ``synsets.json``), else in the sorted list of those found.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        items = [(d.name, f) for d in subdirs for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    else:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        items = [(f.name.split("_", 1)[0], f) for f in files]
    if not items:
        raise ValueError(f"no images found in {root}")
    names = list(class_names) if class_names is not None else sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(names)}
    missing = sorted({c for c, _ in items} - index.keys())
    if missing:
        raise ValueError(f"{len(missing)} classes in {root} are not known to the model, e.g. {missing[:3]}")
    return [Example(f, index[c]) for c, f in items]


def model_class_names(model_dir: str | Path) -> list[str] | None:
    """``synsets.json`` beside a checkpoint (wnids in label order), if present."""
    p = Path(model_dir) / "synsets.json"
    return json.loads(p.read_text()) if p.is_file() else None


def image_preprocess_for(model: object) -> ImagePreprocess:
    """DeiT/ViT evaluation preprocessing for a model's input size (crop ratio 0.875: 224 <- 256)."""
    hf: Any = model  # a transformers ViT/DeiT: its config fields have no static types
    size = int(hf.config.image_size)
    return ImagePreprocess(image_size=size, resize_size=int(size / 0.875))


def glue_tsv(path: str | Path, task: str | None = None) -> list[Example]:
    """A GLUE TSV file (dev.tsv/train.tsv); the task is taken from the parent folder name."""
    path = Path(path)
    task = task or path.parent.name
    if task == "CoLA":  # no header: source, label, star, sentence
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [Example(r[3], int(r[1])) for r in lines]
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: CoLA, {', '.join(GLUE_TASKS)}")
    cols, label_col = GLUE_TASKS[task]
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = sorted({r[label_col] for r in rows}) if task in {"QNLI", "RTE", "WNLI"} else None
    out = []
    for r in rows:
        text = r[cols[0]] if len(cols) == 1 else (r[cols[0]], r[cols[1]])
        raw = r[label_col]
        label = float(raw) if task == "STS-B" else (labels.index(raw) if labels else int(raw))
        out.append(Example(text, label))
    return out


def batches(
    examples: Sequence[Example],
    batch_size: int,
    image: ImagePreprocess | None = None,
    text: TextPreprocess | None = None,
    max_length: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Yield (numpy inputs, labels) batches; text is padded per batch (dynamic padding)."""
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        labels = np.asarray([e.label for e in chunk])
        if image is not None:
            yield {"pixel_values": image(image_batch([e.inputs for e in chunk]))}, labels
        elif text is not None:
            texts = text_batch([e.inputs for e in chunk])
            enc = text(texts, max_length=max_length, truncation=max_length is not None)
            yield enc, labels
        else:
            raise ValueError("give an image or a text preprocessor")


def image_batch(items: Sequence[str | tuple[str, str] | Path]) -> list[str | Path]:
    """``items`` as :class:`ImagePreprocess` takes them: image paths (or images). A text pair raises
    the InputTypeError ImagePreprocess raises for it; anything else is left to ImagePreprocess."""
    images = [x for x in items if not isinstance(x, tuple)]
    if len(images) != len(items):
        raise InputTypeError("expected an image path or a PIL.Image.Image, got tuple")
    return images


def text_batch(items: Sequence[str | tuple[str, str] | Path]) -> list[str] | list[tuple[str, str]]:
    """``items`` as :class:`TextPreprocess` takes them: all texts, or all (text_a, text_b) pairs.

    A mixture (or a path) raises the InputTypeError TextPreprocess raises for it; the texts
    themselves are checked by TextPreprocess.
    """
    texts = [x for x in items if isinstance(x, str)]
    if len(texts) == len(items):
        return texts
    pairs = [x for x in items if isinstance(x, tuple)]
    if len(pairs) == len(items):
        return pairs
    i = next(i for i, x in enumerate(items) if not isinstance(x, tuple))
    raise InputTypeError(
        f"texts must be all strings or all (text_a, text_b) pairs of strings; item {i} is {items[i]!r:.80}"
    )


def longest_length(
    examples: Sequence[Example], text: TextPreprocess, max_length: int | None = None, batch_size: int = 256
) -> int:
    """Tokens in the longest example (after truncation to ``max_length``): the padded length T of
    the paper's occupancy, as the official GLUE evaluation pads a chunk to its longest sentence."""
    longest = 0
    for enc, _ in batches(examples, batch_size, text=text, max_length=max_length):
        longest = max(longest, int(enc["attention_mask"].sum(1).max()))
    return longest
