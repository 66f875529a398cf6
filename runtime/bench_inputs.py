"""Real inputs for the latency benchmark (torch-free).

A token-pruning model's latency depends on its input: how long the text is, and how many
tokens its thresholds keep for it. Synthetic inputs (random vocabulary, noise images) keep a
different number of tokens than real ones do, so a benchmark of them can mislead either
way. ``bench --inputs`` times the user's own data instead: each run takes the next input,
and both models of a ``--vs`` pair see the same inputs in the same order.

Sources:

* a text file, one input per line (``a ||| b`` for a sentence pair, as ``run --text``); for an
  image model, each line is an image path, relative to the file's folder unless absolute;
* a folder of images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``, in name order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import InputError, InputNotFoundError
from sttabt_edge.runtime.predictor import Predictor

__all__ = ["IMAGE_SUFFIXES", "PAIR_SEP", "RealInputs", "read_inputs", "write_text_inputs"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PAIR_SEP = " ||| "


@dataclass
class RealInputs:
    feeds: list[dict[str, np.ndarray]]  # one batch each, in the source's order
    count: int  # inputs used (a whole number of batches)
    mean_tokens: float | None  # text: real tokens per input, special tokens included
    truncated: int  # text: inputs cut to the model's limit

    def summary(self, source: Path) -> dict[str, Any]:
        return {
            "source": str(source),
            "count": self.count,
            "mean_tokens": self.mean_tokens,
            "truncated": self.truncated,
        }


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--inputs {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _image_paths(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    paths = [Path(line) if Path(line).is_absolute() else source.parent / line for line in _lines(source)]
    for i, p in enumerate(paths):
        if not p.is_file():
            raise InputNotFoundError(f"--inputs {source}, line {i + 1}: image {p} not found")
    return paths


def read_inputs(pred: Predictor, source: str | Path, batch: int = 1, limit: int = 256) -> RealInputs:
    """The first ``limit`` inputs of ``source`` as ``batch``-sized feeds; a partial last batch is dropped."""
    src = Path(source)
    if not src.exists():
        raise InputNotFoundError(f"--inputs {src} not found")
    if pred.image is None and src.is_dir():
        raise InputError(
            f"--inputs {src} is a folder, but {pred.path.name} is a text model: give a text file"
        )
    if limit < batch:
        raise InputError(f"the input limit {limit} is below the batch size {batch}")
    items: list[Any] = _image_paths(src) if pred.image is not None else _lines(src)
    items = items[:limit]
    usable = len(items) - len(items) % batch
    if usable == 0:
        what = "images" if pred.image is not None else "non-empty lines"
        raise InputError(f"--inputs {src} has {len(items)} {what}; batch {batch} needs at least {batch}")
    items = items[:usable]
    groups = [items[i : i + batch] for i in range(0, usable, batch)]
    if pred.image is not None:
        return RealInputs([pred.preprocess(images=list(g)) for g in groups], usable, None, 0)
    assert pred.text is not None
    texts = [tuple(t.split(PAIR_SEP, 1)) if PAIR_SEP in t else t for t in items]
    kinds = [isinstance(t, tuple) for t in texts]
    if any(kinds) and not all(kinds):
        first = kinds.index(not kinds[0]) + 1
        raise InputError(f"--inputs {src} mixes single texts and '{PAIR_SEP.strip()}' pairs (input {first})")
    limit_tokens = pred.text.limit
    lengths = pred.text.token_lengths(texts)
    truncated = sum(n > limit_tokens for n in lengths)
    feeds = []
    for i in range(0, usable, batch):
        enc = pred.text(texts[i : i + batch], truncation=True)
        feeds.append({k: v for k, v in enc.items() if k in pred.input_names})
    mean = float(np.mean([min(n, limit_tokens) for n in lengths]))
    return RealInputs(feeds, usable, mean, truncated)


def write_text_inputs(inputs: list[str | tuple[str, str] | Path], path: Path) -> Path:
    """Write inputs in the format :func:`read_inputs` reads (line breaks inside a text become spaces)."""

    def line(x: str | tuple[str, str] | Path) -> str:
        if isinstance(x, tuple):
            return PAIR_SEP.join(" ".join(part.split()) for part in x)
        if isinstance(x, Path):
            return str(x.resolve())
        return " ".join(x.split())

    path.write_text("".join(line(x) + "\n" for x in inputs), encoding="utf-8")
    return path
