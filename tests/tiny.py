"""Tiny random HF models (hidden 32, 3 layers) and the tiny data folders they run on, shared by the
unit tests."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

WORDS = tuple(
    "a the film movie good bad great dull fun boring plot actor story is was not very and of it".split()
)

VISION = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


def tiny_vit(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**VISION, attn_implementation="eager")).eval()


def tiny_deit_distilled(seed: int = 0) -> DeiTForImageClassificationWithTeacher:
    torch.manual_seed(seed)
    model = DeiTForImageClassificationWithTeacher(DeiTConfig(**VISION, attn_implementation="eager")).eval()
    with torch.no_grad():  # HF inits these to zero; random values make the prefix tokens matter
        model.deit.embeddings.distillation_token.normal_()
        model.deit.embeddings.cls_token.normal_()
    return model


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(cfg).eval()


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three right-padded sequences of lengths 20, 12 and 5."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def padded_text(lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random ids (B, width) with the given real lengths."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return {
        "input_ids": torch.randint(5, 100, (len(lengths), width), generator=g) * mask,
        "attention_mask": mask,
    }


def save_tiny_text_model(path, words, num_labels: int = 3, seed: int = 0, model=None):
    """A text model directory as the CLI takes it: ``model`` (default: :func:`tiny_bert` with
    ``num_labels``) saved with a WordLevel tokenizer.json over ``words`` (ids within its
    100-token vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    if model is None:
        model = tiny_bert(seed)
        if num_labels != model.config.num_labels:
            torch.manual_seed(seed)
            config = model.config.__class__(**{**model.config.to_dict(), "num_labels": num_labels})
            model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path


def write_sst2_dir(
    path: Path, n_train: int, n_dev: int, seed: int, lengths: tuple[int, int] = (3, 14)
) -> Path:
    """A GLUE SST-2 folder of random WORDS rows (label i % 2) that a tiny model over WORDS can read."""
    path.mkdir()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [" ".join(rng.choice(WORDS, rng.integers(*lengths))) + f"\t{i % 2}" for i in range(n)]
        (path / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return path


def write_image_dir(path: Path, per_class: int, hw: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Class folders a/ and b/ of random PNGs: the ImageFolder layout that eval, calib and train read."""
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (path / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path / cls / f"{i}.png")
    return path
