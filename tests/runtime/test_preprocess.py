"""Torch-free preprocessing: image geometry/normalization and tokenizer parity with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sttabt_edge.runtime import ImagePreprocess, TextPreprocess

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (256, 256), (224, 224), (1000, 100), (7, 5)])
def test_image_shapes_for_aspect_ratios(size: tuple[int, int]) -> None:
    out = ImagePreprocess()([Image.new("RGB", size, (1, 2, 3)), Image.new("RGB", size, (4, 5, 6))])
    assert out.shape == (2, 3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]


def test_image_paths_single_and_mixed_inputs(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.new("RGB", (300, 260), (9, 9, 9)).save(p)
    pre = ImagePreprocess()
    single_path = pre(p)
    single_str = pre(str(p))
    mixed = pre([p, Image.open(p)])
    assert single_path.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(single_path, single_str)
    np.testing.assert_array_equal(mixed[0], mixed[1])


def test_constant_colour_normalization_is_exact() -> None:
    rgb = (200, 100, 50)
    out = ImagePreprocess()(Image.new("RGB", (333, 250), rgb))
    for c in range(3):
        expected = (np.float32(rgb[c]) / np.float32(255.0) - np.float32(MEAN[c])) / np.float32(STD[c])
        assert np.all(out[0, c] == expected), (c, out[0, c].min(), out[0, c].max(), expected)


def test_grayscale_and_rgba_are_converted_to_rgb() -> None:
    pre = ImagePreprocess()
    grey = pre(Image.new("L", (256, 256), 128))
    rgba = pre(Image.new("RGBA", (256, 256), (128, 128, 128, 7)))
    np.testing.assert_array_equal(grey, rgba)
    assert grey.shape == (1, 3, 224, 224)


def _red(px: np.ndarray) -> bool:
    """A pixel of the output that was pure red (255, 0, 0) in the input."""
    expected = (np.array([1.0, 0.0, 0.0], np.float32) - np.array(MEAN, np.float32)) / np.array(
        STD, np.float32
    )
    return bool(np.allclose(px, expected, atol=1e-6))


@pytest.mark.parametrize("height", [320, 321])
def test_center_crop_offsets_follow_torchvision(height: int) -> None:
    # Width 256 is the shorter side, so the resize is the identity and only the crop acts.
    top = int(round((height - 224) / 2.0))  # 48 for both 320 and 321 (round half to even)
    left = (256 - 224) // 2
    arr = np.zeros((height, 256, 3), np.uint8)
    arr[top, left] = (255, 0, 0)  # first pixel inside the crop
    arr[top + 223, left + 223] = (255, 0, 0)  # last pixel inside the crop
    arr[top - 1, left - 1] = (0, 255, 0)  # just outside: must not appear
    out = ImagePreprocess()(Image.fromarray(arr))[0]
    assert _red(out[:, 0, 0])
    assert _red(out[:, 223, 223])
    green = (np.array([0.0, 1.0, 0.0], np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    assert not np.any(np.all(np.isclose(out, green[:, None, None]), axis=0))


def test_center_crop_is_centered_after_resize() -> None:
    # 600x300: left half red, right half blue. Resized to 512x256, cropped at left=144,
    # so the colour boundary (x=256) lands at column 112 of the 224 crop.
    arr = np.zeros((300, 600, 3), np.uint8)
    arr[:, :300] = (255, 0, 0)
    arr[:, 300:] = (0, 0, 255)
    out = ImagePreprocess()(Image.fromarray(arr))[0]
    red_cols = out[0].mean(axis=0) > 0  # red channel is far above the mean only on the red side
    assert red_cols[:108].all()
    assert not red_cols[117:].any()
    assert red_cols.sum() in (111, 112, 113)


def test_resize_sizes_follow_torchvision_convention() -> None:
    pre = ImagePreprocess(image_size=10, resize_size=10, interpolation="nearest")
    img = Image.new("RGB", (30, 17))
    assert pre._resize_shorter(img).size == (int(10 * 30 / 17), 10)
    assert pre._resize_shorter(img.transpose(Image.Transpose.ROTATE_90)).size == (10, int(10 * 30 / 17))


def test_to_dict_round_trip_through_json() -> None:
    pre = ImagePreprocess(image_size=192, resize_size=220, interpolation="bilinear", mean=(0.5, 0.5, 0.5))
    back = ImagePreprocess.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back == pre
    assert isinstance(back.mean, tuple)
    with pytest.raises(ValueError, match="unknown ImagePreprocess keys"):
        ImagePreprocess.from_dict({**pre.to_dict(), "crop_pct": 0.875})


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 300}, {"interpolation": "cubic"}, {"std": (0.2, 0.0, 0.2)}, {"mean": (0.5, 0.5)}],
)
def test_invalid_image_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ImagePreprocess(**kwargs)


def test_corrupt_image_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        ImagePreprocess()([bad])


def test_truncated_image_file_names_the_path(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.jpg"):
        ImagePreprocess()(cut)


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ImagePreprocess()(tmp_path / "nope.png")


def test_empty_image_batch() -> None:
    with pytest.raises(ValueError, match="empty"):
        ImagePreprocess()([])


def test_bad_image_type() -> None:
    with pytest.raises(TypeError, match="int"):
        ImagePreprocess()([3])


# --------------------------------------------------------------------------- text (synthetic tokenizer)

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "a", "b", "c", "d", "##s"]


def _tiny_tokenizer_dir(tmp_path: Path, model_max_length: int | None = 12) -> Path:
    """A small BERT-style WordPiece tokenizer written like a real checkpoint folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.enable_truncation(max_length=5)  # baked-in config, like the real tokenizer.json: must be ignored
    tok.save(str(tmp_path / "tokenizer.json"))
    if model_max_length is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": model_max_length}))
    return tmp_path


def test_text_padding_and_mask(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path))
    out = pre(["Hello world", "a", "a b c d"])
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == (3, 6) for v in out.values())
    np.testing.assert_array_equal(out["input_ids"][1], [2, 6, 3, 0, 0, 0])
    np.testing.assert_array_equal(out["attention_mask"][1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["input_ids"][2], [2, 6, 7, 8, 9, 3])
    assert not out["token_type_ids"].any()


def test_text_single_string_and_unknown_words(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path) / "tokenizer.json")
    out = pre("Worlds zebra")
    np.testing.assert_array_equal(out["input_ids"], [[2, 5, 10, 1, 3]])


def test_text_pairs_type_ids(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path))
    out = pre([("hello", "world a"), ("a", "b")])
    np.testing.assert_array_equal(out["input_ids"], [[2, 4, 3, 5, 6, 3], [2, 6, 3, 7, 3, 0]])
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])


def test_text_too_long_raises_with_length_and_limit(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path, model_max_length=12))
    assert pre.model_max_length == 12
    with pytest.raises(ValueError, match=r"13 tokens long.*limit of 12"):
        pre(["a", "a " * 11])


def test_text_truncation(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path, model_max_length=12))
    out = pre(["a " * 20], truncation=True)
    assert out["input_ids"].shape == (1, 12)
    assert out["input_ids"][0, -1] == 3  # [SEP] kept after truncation
    out = pre([("a b c d a b c d", "c d")], max_length=7, truncation=True)
    # longest_first as the tokenizers backend (and so AutoTokenizer) does it: 4 slots -> 2 + 2.
    np.testing.assert_array_equal(out["input_ids"], [[2, 6, 7, 3, 8, 9, 3]])
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="over the limit of 7"):
        pre(["a b c d a b c d"], max_length=7)


def test_text_default_max_length_and_limits(tmp_path: Path) -> None:
    d = _tiny_tokenizer_dir(tmp_path, model_max_length=None)
    assert TextPreprocess.from_file(d).model_max_length == 512
    pre = TextPreprocess.from_file(d, max_length=4)
    assert pre(["a b c d"], truncation=True)["input_ids"].shape == (1, 4)
    with pytest.raises(ValueError, match="exceeds"):
        TextPreprocess.from_file(d, max_length=513)


def test_text_pad_id_from_tokenizer_padding_config(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_tiny_tokenizer_dir(tmp_path) / "tokenizer.json"))
    tok.enable_padding(pad_id=1, pad_token="[UNK]")
    out = TextPreprocess(tok)(["a", "a b"])
    np.testing.assert_array_equal(out["input_ids"], [[2, 6, 3, 1], [2, 6, 7, 3]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_text_bad_inputs(tmp_path: Path) -> None:
    pre = TextPreprocess.from_file(_tiny_tokenizer_dir(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        pre([])
    with pytest.raises(TypeError, match="pairs"):
        pre(["a", ("a", "b")])
    with pytest.raises(FileNotFoundError):
        TextPreprocess.from_file(tmp_path / "missing.json")


# --------------------------------------------------------------------------- text parity with transformers


def _read_tsv(path: Path, n: int) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [line.split("\t") for line in lines]


@pytest.fixture(scope="module")
def minilm(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "minilm-l6-sst2"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {path}")
    return path


@pytest.mark.integration
def test_parity_with_autotokenizer_sst2(minilm: Path, shared_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm))
    pre = TextPreprocess.from_file(minilm / "tokenizer.json")
    sentences = [row[0] for row in _read_tsv(shared_dir / "data/glue/SST-2/dev.tsv", 24)]
    sentences += ["Ünïcödé Café — naïve résumé!", "東京 is big", "  spaces   everywhere  ", ""]
    expected = hf(sentences, padding=True, return_tensors="np")
    got = pre(sentences)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got[key], expected[key].astype(np.int64), err_msg=key)


@pytest.mark.integration
def test_parity_with_autotokenizer_pairs_and_truncation(minilm: Path, shared_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm))
    pre = TextPreprocess.from_file(minilm)
    rows = _read_tsv(shared_dir / "data/glue/MRPC/dev.tsv", 12)
    pairs = [(r[3], r[4]) for r in rows]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    for kwargs in ({}, {"max_length": 24, "truncation": True}):
        expected = hf(a, b, padding=True, return_tensors="np", **kwargs)
        got = pre(pairs, **kwargs)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(got[key], expected[key].astype(np.int64), err_msg=f"{key} {kwargs}")


@pytest.mark.integration
def test_real_tokenizer_limit(minilm: Path) -> None:
    pre = TextPreprocess.from_file(minilm)
    assert pre.model_max_length == 512
    long_text = "good " * 600
    with pytest.raises(ValueError, match=r"602 tokens long.*limit of 512"):
        pre([long_text])
    assert pre([long_text], truncation=True)["input_ids"].shape == (1, 512)
