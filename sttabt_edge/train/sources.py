"""Where training examples come from, and the fixed splits.

GLUE TSV files or task folders (``train.tsv`` / ``dev.tsv``; ``test.tsv`` and ``.txt``
files as unlabeled text), image folders (class subfolders or flat
``<wnid>_<name>.JPEG``; one folder is split in half by :func:`split_half`), and
``datasets.save_to_disk`` folders when the optional ``datasets`` package is installed.
Everything returns :class:`sttabt_edge.data.Example` lists (label None = unlabeled).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sttabt_edge.data import GLUE_TASKS, Example, glue_tsv, image_folder
from sttabt_edge.errors import InputError

HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("sentence",),
    ("text",),
)


# ---- splits ------------------------------------------------------------------------------------


def split_half(examples: Sequence[Example], seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Fixed half/half split (train, held-out), e.g. of imagenet-sample for distillation vs eval.

    Each example is ranked by SHA-256 of ``f"{seed}:{file name}"`` (the name only, not the
    folder, so the split is the same on every machine and with any numpy version); the
    first half of that ranking (rounded down) trains, the rest is held out. Both halves keep
    the input order. Non-path inputs are keyed by their ``str``.
    """

    def key(i: int) -> str:
        x = examples[i].inputs
        name = x.name if isinstance(x, Path) else str(x)
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    ranked = sorted(range(len(examples)), key=lambda i: (key(i), i))
    train = set(ranked[: len(examples) // 2])
    return (
        [e for i, e in enumerate(examples) if i in train],
        [e for i, e in enumerate(examples) if i not in train],
    )


def unlabeled(examples: Sequence[Example]) -> list[Example]:
    return [Example(e.inputs, None) for e in examples]  # type: ignore[arg-type]


def glue_unlabeled(path: Path, task: str | None = None) -> list[Example]:
    """Sentences of a GLUE file without labels (test.tsv, or any split when labels are unwanted)."""
    task = task or path.parent.name
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    cols = ("sentence",) if task == "CoLA" else GLUE_TASKS.get(task, (("sentence",), ""))[0]
    if task == "MRPC" and rows and "#1 String" not in rows[0]:
        cols = ("sentence1", "sentence2")
    if not rows or any(c not in rows[0] for c in cols):
        raise InputError(f"{path}: expected columns {cols} for task {task!r}")
    return [Example(r[cols[0]] if len(cols) == 1 else (r[cols[0]], r[cols[1]]), None) for r in rows]  # type: ignore[arg-type]


def read_text_file(path: Path) -> list[Example]:
    """One unlabeled sentence per non-empty line."""
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    return [Example(s, None) for s in lines if s]  # type: ignore[arg-type]


def read_glue(path: Path) -> list[Example]:
    """Labeled when the file has labels (train/dev), unlabeled otherwise (test)."""
    try:
        return glue_tsv(path)
    except (KeyError, IndexError):
        return glue_unlabeled(path)


def read_hf_disk(path: Path, split: str) -> list[Example]:
    """A ``datasets.save_to_disk`` folder (needs the optional ``datasets`` package)."""
    try:
        import datasets
    except ImportError as e:
        raise InputError(
            f"{path} is a `datasets.save_to_disk` folder; reading it needs `pip install datasets` "
            "(or pass a GLUE TSV / image folder instead)"
        ) from e
    return hf_examples(datasets.load_from_disk(str(path)), split, str(path))


def hf_examples(ds: Any, split: str, where: str) -> list[Example]:
    """Examples from a ``Dataset`` (or a ``DatasetDict``'s ``split``): image or text columns + label."""
    if not hasattr(ds, "column_names"):  # a DatasetDict: pick the split
        if split not in ds:
            raise InputError(f"{where} has splits {sorted(ds.keys())}, not {split!r}")
        ds = ds[split]
    cols = list(ds.column_names)
    label_col = next((c for c in ("label", "labels", "score") if c in cols), None)
    labels = [None] * len(ds) if label_col is None else [None if v == -1 else v for v in ds[label_col]]
    image_col = next((c for c in ("image", "img") if c in cols), None)
    if image_col is not None:
        return [Example(HFImage(ds, image_col, i), y) for i, y in enumerate(labels)]  # type: ignore[arg-type]
    text_cols = next((c for c in _TEXT_COLUMNS if all(k in cols for k in c)), None)
    if text_cols is None:
        raise InputError(f"{where}: no image column and no known text columns in {cols}")
    texts = list(zip(*(ds[c] for c in text_cols), strict=True))
    return [Example(t[0] if len(t) == 1 else (t[0], t[1]), y) for t, y in zip(texts, labels, strict=True)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class HFImage:
    """Lazy reference to an image inside a ``datasets.Dataset`` (decoded when a batch needs it)."""

    ds: Any
    column: str
    index: int

    def load(self) -> Any:
        return self.ds[self.index][self.column]


def modality_of(examples: Sequence[Example]) -> str:
    x = examples[0].inputs
    return "text" if isinstance(x, (str, tuple)) else "image"


@dataclass
class Splits:
    train: list[Example]
    eval: list[Example] | None
    modality: str  # "image" | "text"
    task: str | None  # GLUE task name (metric, and MSE loss for STS-B)


def read_source(path: Path, split: str = "train", class_names: Sequence[str] | None = None) -> list[Example]:
    """All examples of one file or folder (no splitting)."""
    if path.is_file():
        if path.suffix.lower() == ".tsv":
            return read_glue(path)
        if path.suffix.lower() == ".txt":
            return read_text_file(path)
        raise InputError(f"{path}: expected a GLUE .tsv, a .txt (one sentence per line) or a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"data not found: {path}")
    if any((path / m).is_file() for m in HF_MARKERS):
        return read_hf_disk(path, split)
    return image_folder(path, class_names)


def load_splits(
    path: str | Path,
    eval_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    labeled: bool = True,
    seed: int = 0,
) -> Splits:
    """Train and eval examples for ``--data`` (and optional ``--eval-data``).

    * GLUE task folder: ``train.tsv`` / ``dev.tsv``. A .tsv/.txt file: that file, no eval set.
    * ``save_to_disk`` folder: its ``train`` / ``validation`` splits.
    * Image folder: :func:`split_half` (train half, held-out half) unless ``eval_path`` is given.
    ``labeled=False`` drops the training labels (ApproxNet distillation needs none).
    """
    path = Path(path)
    task = path.name if path.is_dir() else path.parent.name
    if path.is_dir() and (path / "train.tsv").is_file():
        train = read_glue(path / "train.tsv")
        held = read_glue(path / "dev.tsv") if (path / "dev.tsv").is_file() else None
    elif path.is_dir() and any((path / m).is_file() for m in HF_MARKERS):
        train = read_hf_disk(path, "train")
        try:
            held = read_hf_disk(path, "validation")
        except InputError:
            held = None
    else:
        train, held = read_source(path, class_names=class_names), None
        if modality_of(train) == "image" and eval_path is None:
            train, held = split_half(train, seed)
    if eval_path is not None:
        held = read_source(Path(eval_path), "validation", class_names)
    if not train:
        raise InputError(f"no training examples in {path}")
    if not labeled or any(e.label is None for e in train):
        train = unlabeled(train)
    if held is not None and any(e.label is None for e in held):
        held = None  # an unlabeled split cannot be scored
    return Splits(train, held, modality_of(train), task if task in (*GLUE_TASKS, "CoLA") else None)


def open_image(item: Any) -> Any:
    """Path, PIL image or :class:`HFImage` -> PIL image."""
    from PIL import Image

    if isinstance(item, HFImage):
        return item.load()
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as im:
        im.load()
        return im.convert("RGB")
