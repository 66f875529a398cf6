"""What a command is fed must suit its model: images for an image model, texts for a text model.

Checked from ``config.json`` alone (no weights read) before a PyTorch model loads, and from an
exported file's metadata right after the runtime opens it; a mismatch is one ``error:`` line
instead of an ``AttributeError`` deep inside preprocessing. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from sttabt_edge.cli_common import fail
from sttabt_edge.runtime.contract import FAMILY_IO, family_io

if TYPE_CHECKING:
    from sttabt_edge.runtime import Predictor

Family = Literal["vit", "bert"]
# what a family's model is called in messages; images or text from the contract's FAMILY_IO
KIND = {f: "a text model" if io.text else "an image model" for f, io in FAMILY_IO.items()}


def _text(family: str | None) -> bool | None:
    """Whether ``family``'s model reads text (True) or images (False); None when unknown."""
    io = family_io(family)
    return None if io is None else io.text


def model_family(model: str | Path) -> Family | None:
    """``vit`` or ``bert`` from a model dir's config.json (a trained dir's model/ included); a timm
    checkpoint file is a ViT; None for an alias or hub id (known only once it loads)."""
    from sttabt_edge.model_info import FAMILIES, config_file, read_config

    cfg = config_file(model)
    if cfg is None:
        return "vit" if Path(model).is_file() else None
    family = FAMILIES.get(str(read_config(cfg).get("model_type")))
    return cast(Family, family) if family_io(family) is not None else None


def model_positions(model: str | Path) -> int | None:
    """A text model's position table (``max_position_embeddings``), from config.json; else None."""
    from sttabt_edge.model_info import config_file, read_config

    cfg = config_file(model)
    if cfg is None:
        return None
    value = read_config(cfg).get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def loaded_family(model: object) -> Family:
    """The family of a loaded PyTorch classifier (an image model's config has an image size)."""
    return "vit" if hasattr(getattr(model, "config", None), "image_size") else "bert"


def check_data_kind(family: Family | None, data: Path, option: str = "--data") -> None:
    """An image model reads an image folder, a text model a GLUE TSV file."""
    text = _text(family)
    if family is not None and text is False and not data.is_dir():
        fail(f"{option} {data}: the model is {KIND[family]}; give an image folder, not a file")
    if family is not None and text is True and data.is_dir():
        fail(f"{option} {data}: the model is {KIND[family]}; give a GLUE TSV file (e.g. SST-2/dev.tsv)")


def check_input_kind(family: Family | None, image: bool, text: bool, name: str = "the model") -> None:
    """``--image`` for an image model, ``--text`` for a text model."""
    reads_text = _text(family)
    if family is not None and reads_text is False and text:
        fail(f"{name} is {KIND[family]}: pass --image, not --text")
    if family is not None and reads_text is True and image:
        fail(f"{name} is {KIND[family]}: pass --text, not --image")


def predictor_family(pred: Predictor) -> Family:
    """An opened file's family (its metadata, checked against the contract when it opened)."""
    return cast(Family, pred.metadata.family)


def check_texts(texts: Sequence[str]) -> None:
    """Every text has a word: an empty one would be answered from its special tokens alone."""
    for i, t in enumerate(texts):
        parts = t.split(" ||| ", 1) if " ||| " in t else [t]
        if any(not p.strip() for p in parts):
            which = "a part of text" if len(parts) > 1 else "text"
            fail(f"{which} {i + 1} is empty or only whitespace; give a text with words in it")


def check_model(model: str) -> None:
    """A --model that is meant as a local path must exist (aliases and hub ids are left to the loader)."""
    from sttabt_edge.model_info import config_file

    config_file(model)  # raises ModelNotFoundError (-> one error line) for a missing path


def training_data_kind(data: Path) -> Family | None:
    """What `train` and `compress` will read ``data`` as (the rule of ``train.sources``): a .tsv or
    .txt file or a GLUE task folder is text, another folder an image folder; a saved HF dataset is
    known only once read (None)."""
    from sttabt_edge.train.sources import HF_MARKERS

    if data.is_file():
        return "bert" if data.suffix.lower() in (".tsv", ".txt") else None
    if not data.is_dir() or any((data / m).is_file() for m in HF_MARKERS):
        return None
    return "bert" if (data / "train.tsv").is_file() else "vit"


def check_training_data(model: str, data: Path | None, option: str = "--data") -> None:
    """Training data of the model's kind: images for an image model, texts for a text model."""
    family = model_family(model)
    kind = training_data_kind(data) if data is not None else None
    if family is None or kind is None or kind == family:
        return
    what = "text data" if _text(kind) else "an image folder"
    wanted = "a GLUE task folder, a .tsv or a .txt file" if _text(family) else "an image folder"
    fail(f"{option} {data} is {what} but the model is {KIND[family]}; give {wanted}")


def check_approx_shape(model: str, factor: int, heads: int | None, options: str) -> None:
    """The ApproxNet a command will build (widths / ``factor``, ``heads`` heads; None: the model's)
    fits the model of config.json: refused here, not after the ~10 s torch import and the load.
    ``options``: the options that set them, for the message. A model without config.json passes."""
    from sttabt_edge.model_info import approx_shape_problem, config_file, read_config

    cfg_path = config_file(model)
    if cfg_path is None:
        return
    cfg = read_config(cfg_path)
    try:
        hidden, teacher_heads, intermediate = (
            int(cfg[k]) for k in ("hidden_size", "num_attention_heads", "intermediate_size")
        )
    except (KeyError, TypeError, ValueError):
        return  # the loader words a broken config.json
    if problem := approx_shape_problem(hidden, teacher_heads, intermediate, factor, heads):
        fail(f"{options}: {problem}")


def check_approx_dir(option: str, path: Path | None) -> None:
    """An ApproxNet folder to load: one `train approx` wrote (its approxnet.json), checked up front."""
    if path is not None and not (path / "approxnet.json").is_file():
        fail(
            f"{option} {path}: not an ApproxNet folder (no approxnet.json); pass DIR from `sttabt-edge train approx`"
        )
