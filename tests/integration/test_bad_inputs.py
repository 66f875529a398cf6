"""Issue #15: bad and edge-case inputs get a correct answer or one clear error line, never a
traceback, a silent wrong answer or an unbounded allocation. One test per audited failure
(images, files and metadata, out-of-contract tensors, API edges, checkpoints), then
property-based fuzzing of token counts and padding: every row of a batch equals the row run
alone and equals PyTorch, for top-k and concrete-threshold exports of both families.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from handmade import (
    image_graph,
    image_meta,
    png_header,
    save_sealed,
    text_graph,
    text_meta,
    word_tokenizer,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sttabt_edge.errors import InputError, ModelFileError
from sttabt_edge.runtime import ImagePreprocess, load
from sttabt_edge.runtime import images as images_mod
from sttabt_edge.sparse_model import SparseClassifier

W = np.eye(3, 4, dtype=np.float32) * 10  # red -> label 0, green -> 1, blue -> 2


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture()
def image_model(tmp_path) -> Path:
    return save_sealed(image_graph(W), tmp_path / "img.onnx", image_meta())


@pytest.fixture()
def text_model(tmp_path) -> Path:
    word_tokenizer(tmp_path / "m.tokenizer.json")
    return save_sealed(text_graph(), tmp_path / "m.onnx", text_meta("m.tokenizer.json"))


# ---- 1. unbounded image decode --------------------------------------------------------------------

_BOUNDED = textwrap.dedent(
    """
    import resource, sys, time
    from sttabt_edge.errors import InputError
    from sttabt_edge.runtime import load
    pred = load(sys.argv[1], threads=1)
    pred.predict(images=sys.argv[2])  # warm: the model and the decoders are in memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        pred.predict(images=sys.argv[3])
        outcome = "answered"
    except InputError as e:
        outcome = str(e)
    took = time.perf_counter() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{took:.3f} {grew_mb:.1f} {outcome}")
    """
)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (1, 3000)])
def test_long_thin_image_is_refused_in_bounded_time_and_memory(image_model, tmp_path, size):
    """The 1x3000 PNG took 19.6 s and 1 GB (256 x 768000 after the resize); now the header is
    enough to refuse it: <= 2 s and <= 300 MB above the loaded model, measured in a fresh process."""
    bad = tmp_path / "thin.png"
    Image.new("RGB", size, (200, 10, 10)).save(bad)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (20, 16), (0, 200, 0)).save(ok)
    proc = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(image_model), str(ok), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    took, grew, outcome = proc.stdout.strip().split(" ", 2)
    assert float(took) <= 2.0 and float(grew) <= 300
    assert "aspect ratio over 32:1" in outcome


def test_header_only_images_are_refused_before_decoding(tmp_path):
    """69-byte PNGs that claim 1x100000 or 30000x30000 pixels: refused from the header."""
    pre = ImagePreprocess()
    for (w, h), match in [((1, 100_000), "aspect ratio"), ((30_000, 30_000), "pixel limit|pixels")]:
        path = tmp_path / f"{w}x{h}.png"
        path.write_bytes(png_header(w, h))
        with pytest.raises(InputError, match=match) as err:
            pre([path])
        assert path.name in one_line(err)


def test_resized_size_and_metadata_sizes_are_bounded(tmp_path):
    """resize_size 100000 in metadata reached 18 GB: the contract refuses it on load; the resize of
    a legal but large configuration is bounded too."""
    for bad in ({"image_size": 8, "resize_size": 100_000}, {"image_size": 100_000, "resize_size": 100_000}):
        path = save_sealed(image_graph(W), tmp_path / "big.onnx", image_meta(preprocess={"image": bad}))
        with pytest.raises(ModelFileError, match="resize_size|image_size") as err:
            load(path)
        one_line(err)
    with pytest.raises(InputError, match="resize_size"):
        ImagePreprocess(image_size=8, resize_size=100_000)
    wide = ImagePreprocess(image_size=224, resize_size=4096)
    with pytest.raises(InputError, match="pixel limit"):
        wide.check_geometry((3000, 200), "wide.png")  # 4096 x 61440 after the resize


def test_big_jpeg_decodes_at_reduced_scale_and_other_formats_are_refused(tmp_path):
    """Over the pixel limit a JPEG uses libjpeg's DCT scaling (never decoded at full size); a PNG
    over it is refused. A small limit stands in for MAX_IMAGE_PIXELS."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.jpg") as im:
        images_mod.bound_pixels(im, "a.jpg", limit=40_000)
        assert im.size == (200, 150)  # 1/2 scale: 30000 pixels
        im.load()
        assert im.size == (200, 150)
    with Image.open(tmp_path / "a.png") as im, pytest.raises(InputError, match="over the 40,000-pixel limit"):
        images_mod.bound_pixels(im, "a.png", limit=40_000)
    with Image.open(tmp_path / "a.jpg") as im, pytest.raises(InputError, match="pixel limit"):
        images_mod.bound_pixels(im, "a.jpg", limit=1_000)  # even 1/8 scale is too big


# ---- 2. 16-bit and float images ------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    """A 16-bit PNG came out all white (Pillow clips I;16 at 255); now it equals its 8-bit version."""
    grad = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))
    Image.fromarray(grad).save(tmp_path / "g16.png")
    Image.fromarray((grad >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    pre = ImagePreprocess(image_size=16, resize_size=20)
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        from_memory = pre(im.copy())
    got, want = pre([tmp_path / "g16.png"]), pre([tmp_path / "g8.png"])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(from_memory, want)
    assert got.std() > 0.5  # a gradient, not a white square


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_int_and_float_images_are_refused(tmp_path, mode):
    arr = np.linspace(0, 1000, 30 * 40).reshape(30, 40).astype(np.int32 if mode == "I" else np.float32)
    path = tmp_path / f"x_{mode}.tif"
    Image.fromarray(arr).save(path)
    with pytest.raises(InputError, match=f"mode {mode}") as err:
        ImagePreprocess(image_size=16, resize_size=20)([path])
    one_line(err)


# ---- 3. files and metadata are not trusted --------------------------------------------------------


def test_byte_corrupted_onnx_is_refused(image_model, tmp_path):
    """Two of three byte-corrupted files loaded and answered wrongly: every flipped byte outside
    the metadata is now caught by the digest (or by the framing check)."""
    data = image_model.read_bytes()
    weight = data.index(np.float32(10).tobytes())  # W's first 10.0
    meta = data.index(b'"labels"')
    for at, match in [
        (20, "digest mismatch|not a loadable ONNX model"),
        (len(data) // 3, "digest mismatch"),
        (weight + 3, "digest mismatch"),
        (meta + 3, "metadata"),
    ]:
        bad = bytearray(data)
        bad[at] ^= 0x40
        path = tmp_path / f"flip{at}.onnx"
        path.write_bytes(bytes(bad))
        with pytest.raises(ModelFileError, match=match) as err:
            load(path)
        one_line(err)


def test_tampered_weights_refused_unless_digest_check_bypassed(image_model, tmp_path):
    from onnx import numpy_helper

    m = onnx.load(image_model)
    w = next(t for t in m.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), "W"))
    path = tmp_path / "tampered.onnx"
    onnx.save(m, path)
    with pytest.raises(ModelFileError, match="digest mismatch.*--no-verify-digest") as err:
        load(path)
    one_line(err)
    assert load(path, verify_digest=False).input_names == ["pixel_values"]
    unsealed = save_sealed(image_graph(W), tmp_path / "old.onnx", image_meta(), digest=False)
    with pytest.raises(ModelFileError, match="no digest"):
        load(unsealed)
    assert load(unsealed, verify_digest=False).metadata.labels[0] == "cat"


def test_tflite_sidecar_digest_is_checked(tmp_path):
    """The .tflite bytes must match the sidecar's seal (checked before LiteRT is imported)."""
    import hashlib

    from sttabt_edge.runtime import seal

    path = tmp_path / "m.tflite"
    path.write_bytes(b"TFL3 not really a flatbuffer")
    side = tmp_path / "m.tflite.json"
    other = ("tflite", hashlib.sha256(b"other bytes").hexdigest())
    side.write_text(seal.sealed_text(image_meta(), [other], indent=2))
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load(path)
    side.write_text(json.dumps(image_meta()))
    with pytest.raises(ModelFileError, match="no digest"):
        load(path)


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../outside.json", "sub/tok.json", "..", "C:\\tok.json", "a\\..\\b.json", ""]
)
def test_tokenizer_file_must_be_a_plain_name_beside_the_model(tmp_path, name):
    (tmp_path / "outside.json").write_text("{}")
    path = save_sealed(text_graph(), tmp_path / "m.onnx", text_meta(name))
    with pytest.raises(ModelFileError, match="tokenizer_file") as err:
        load(path)
    one_line(err)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ([], "must be a JSON object"),
        (None, "must be a JSON object"),
        ("abc", "must be a JSON object"),
        ({**image_meta(), "labels": "abc"}, "labels must be a list"),
        ({**image_meta(), "labels": []}, "labels must have 1"),
        ({**image_meta(), "labels": ["a", "b"]}, "4 logits but its metadata 2 labels"),
        ({**image_meta(), "format_version": 2}, "format_version 2"),
        ({**image_meta(), "num_layers": "2"}, "num_layers must be an integer"),
        ({**image_meta(), "keep_schedule": [0.5, 1.5]}, r"keep_schedule \[1\] must be in"),
        ({**image_meta(), "keep_schedule": [0.5]}, "keep_schedule has 1 entries for 2 layers"),
        ({**image_meta(), "family": "bert"}, "does not match family|preprocess must hold"),
        ({**image_meta(), "family": ["vit"]}, r"family must be one of \['vit', 'bert'\], got list"),
        ({**image_meta(), "family": {"vit": 1}}, "family must be one of"),
        ({k: v for k, v in image_meta().items() if k != "preprocess"}, "preprocess is missing"),
        (
            {**image_meta(), "preprocess": {"image": {"image_size": 8, "resize_size": 8, "std": [0, 1, 1]}}},
            r"std \[0\] must be in",
        ),
        ({**image_meta(), "preprocess": {"image": {"image_sise": 8}}}, "unknown keys"),
    ],
)
def test_metadata_is_validated_with_one_clear_error(tmp_path, meta, match):
    """labels "abc" became ['a','b','c'] and metadata [] an AttributeError; now the schema refuses."""
    path = save_sealed(image_graph(W), tmp_path / "m.onnx", meta)
    with pytest.raises(ModelFileError, match=match) as err:
        load(path)
    one_line(err)


def test_extra_method_keys_are_allowed(tmp_path):
    """Additive keys (a method's own settings) keep format_version 1 and load."""
    meta = image_meta(sttabt={"nesting": "union", "min_keep": 4}, concrete={"p": 0.1}, future_key=[1, 2])
    assert load(save_sealed(image_graph(W), tmp_path / "m.onnx", meta)).metadata.raw["future_key"] == [1, 2]


def test_stray_tokenizer_config_does_not_change_the_limit(text_model):
    """Only the exported tokenizer counts: a tokenizer_config.json beside the model used to set max length."""
    (text_model.parent / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 3}))
    pred = load(text_model)
    assert pred.text.model_max_length == 16
    out = pred.predict(texts="w2 w3 w4 w5 w6 w7", top_k=1)
    assert out.logits.shape == (1, 2)


# ---- 4. out-of-contract tensors --------------------------------------------------------------------


def _text_feed(**change: np.ndarray) -> dict[str, np.ndarray]:
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    feed = {
        "input_ids": np.array([[2, 3, 4, 0], [5, 6, 0, 0]]),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
    }
    return {**feed, **change}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"attention_mask": np.array([[1, 1, 1, 0], [0, 0, 0, 0]])}, r"rows? \[1\] are all padding"),
        ({"attention_mask": np.array([[0, 0, 0, 0], [0, 0, 0, 0]])}, r"\[0, 1\] are all padding"),
        ({"attention_mask": np.array([[0, 1, 1, 1], [1, 1, 0, 0]])}, r"\[0\] are not right-padded"),
        ({"attention_mask": np.array([[1, 2, 1, 0], [1, 1, 0, 0]])}, "only 0 .padding. and 1"),
        (
            {"input_ids": np.array([[2, -1, 4, 0], [5, 6, 0, 0]])},
            r"input_ids row \[0\] hold token ids not in \[0, 9\]",
        ),
        ({"input_ids": np.array([[2, 3, 4, 0], [5, 10, 0, 0]])}, r"row \[1\] hold token ids not in \[0, 9\]"),
        (
            {"token_type_ids": np.array([[0, 2, 0, 0], [0, 0, 0, 0]])},
            r"token_type_ids row \[0\] hold token types",
        ),
        ({"input_ids": np.array([[2.5, 3, 4, 0], [5, 6, 0, 0]])}, "must hold integers, got dtype float64"),
        ({"input_ids": np.zeros((2, 5), np.int64)}, "must be .B, N. like input_ids|disagree|shape"),
        ({"token_type_ids": np.zeros((3, 4), np.int64)}, "disagree on the batch size"),
    ],
)
def test_out_of_contract_text_tensors_are_refused_before_the_engine(text_model, change, match):
    pred = load(text_model)
    with pytest.raises(InputError, match=match) as err:
        pred.run(_text_feed(**change))
    one_line(err)


def test_lengths_over_the_position_table_and_empty_batches(text_model):
    pred = load(text_model)
    wide = {k: np.ones((1, 17), np.int64) for k in ("input_ids", "attention_mask")}
    with pytest.raises(InputError, match="17 tokens wide, over the model's 16 positions"):
        pred.run({**wide, "token_type_ids": np.zeros((1, 17), np.int64)})
    with pytest.raises(InputError, match="empty batch"):
        pred.run({k: np.zeros((0, 4), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    np.testing.assert_allclose(pred.run(_text_feed())["logits"].shape, (2, 2))  # in-contract still answers


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_pixels_are_refused(image_model, bad):
    pred = load(image_model)
    x = np.zeros((3, 3, 8, 8), np.float32)
    x[2, 1, 4, 4] = bad
    with pytest.raises(InputError, match=r"pixel_values row \[2\] hold NaN or infinite") as err:
        pred.run({"pixel_values": x})
    one_line(err)
    with pytest.raises(InputError, match=r"\(1, 3, 9, 8\); the model takes \(B, 3, 8, 8\)"):
        pred.run({"pixel_values": np.zeros((1, 3, 9, 8), np.float32)})
    with pytest.raises(InputError, match="floating-point"):
        pred.run({"pixel_values": np.zeros((1, 3, 8, 8), np.uint8)})


# ---- 5. API edges --------------------------------------------------------------------------------


def test_single_image_path_and_text_are_a_batch_of_one(image_model, text_model, tmp_path):
    img = tmp_path / "red.png"
    Image.new("RGB", (10, 12), (250, 0, 0)).save(img)
    pred = load(image_model)
    for one in (str(img), img):
        out = pred.predict(images=one, top_k=1)
        assert out.labels == [["cat"]]
    text = load(text_model).predict(texts="w2 w3", top_k=2)
    assert len(text.labels) == 1 and text.logits.shape == (1, 2)


@pytest.mark.parametrize("top_k", [-1, 0, True, 1.5, "2"])
def test_top_k_must_be_a_positive_integer(image_model, top_k):
    pred = load(image_model)
    with pytest.raises(InputError, match="top_k must be a positive integer"):
        pred.predict(images=[Image.new("RGB", (8, 8))], top_k=top_k)


def test_top_k_over_the_label_count_gives_every_label(image_model):
    out = load(image_model).predict(images=Image.new("RGB", (8, 8), (0, 0, 255)), top_k=100)
    assert [len(r) for r in out.labels] == [4] and out.labels[0][0] == "fish"


def test_run_takes_a_dict_and_load_checks_its_options(image_model):
    pred = load(image_model)
    with pytest.raises(InputError, match="takes a dict of input name -> array, got list"):
        pred.run([np.zeros((1, 3, 8, 8), np.float32)])
    with pytest.raises(InputError, match=r"unknown input\(s\) \['pixels'\]"):
        pred.run({"pixels": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(InputError, match="optimization must be one of"):
        load(image_model, optimization="fast")
    with pytest.raises(InputError, match="threads must be"):
        load(image_model, threads=-1)
    with pytest.raises(InputError, match="not both"):
        pred.predict(images=[Image.new("RGB", (8, 8))], texts=["x"])


def test_missing_tokenizer_is_a_model_file_error(tmp_path):
    no_key = text_meta("m.tokenizer.json")
    del no_key["preprocess"]["text"]["tokenizer_file"]
    path = save_sealed(text_graph(), tmp_path / "m.onnx", no_key)
    with pytest.raises(ModelFileError, match="preprocess.text.tokenizer_file is missing"):
        load(path)
    path = save_sealed(text_graph(), tmp_path / "m.onnx", text_meta("m.tokenizer.json"))
    with pytest.raises(ModelFileError, match="tokenizer .*m.tokenizer.json .* is missing"):
        load(path)


@pytest.mark.parametrize("text", ["w2 \ud800 w3", "bad \udcff bytes", ("ok", "\udce9")])
def test_lone_surrogates_and_undecodable_text_are_input_errors(text_model, text):
    with pytest.raises(InputError, match="not valid Unicode") as err:
        load(text_model).predict(texts=[text])
    one_line(err)


def test_cli_run_errors_are_one_line(image_model, text_model, tmp_path):
    from typer.testing import CliRunner

    from sttabt_edge.cli import app

    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 3000)).save(thin)
    tampered = tmp_path / "t.onnx"
    data = bytearray(image_model.read_bytes())
    data[len(data) // 3] ^= 1
    tampered.write_bytes(bytes(data))
    runner = CliRunner()
    for args, match in [
        (["run", str(image_model), "--image", str(thin)], "aspect ratio"),
        (["run", str(tampered), "--image", str(thin)], "digest mismatch|not a loadable"),
        (["run", str(image_model), "--image", str(tmp_path / "missing.png")], "missing.png"),
        (["run", str(text_model), "--text", "w2 \udcff w3"], "not valid Unicode"),  # non-UTF-8 argv bytes
        (["run", str(text_model), "--text", "w2 \udcff w3", "--truncate"], "not valid Unicode"),
    ]:
        res = runner.invoke(app, args)
        lines = res.output.strip().splitlines()  # a warning may come first; the error is the one last line
        assert res.exit_code == 2 and lines[-1].startswith("error: ") and re.search(match, lines[-1]), (
            res.output
        )
        assert "Traceback" not in res.output and sum(ln.startswith("error: ") for ln in lines) == 1
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8), (0, 250, 0)).save(ok)
    res = runner.invoke(app, ["run", str(tampered), "--image", str(ok), "--no-verify-digest", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["top"], res.output


# ---- 6. checkpoints ------------------------------------------------------------------------------


def _evil_pickle(path: Path, marker: Path) -> Path:
    """A torch pickle whose load would call os.mkdir(marker): weights_only=True must refuse it."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"weight": Evil()}, path)
    return path


def _reseal(ckpt: Path) -> None:
    """Record the planted files' digests, as whoever rewrites a whole checkpoint can: what is left
    to stop them is the loader itself (the digest alone is tested in test_integrity.py)."""
    from sttabt_edge.train.checkpoint import read_state, write_state

    write_state(ckpt, read_state(ckpt))


def _run_with_checkpoint(tmp_path: Path) -> Path:
    from torch import nn

    from sttabt_edge.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, 2, {"m": nn.Linear(2, 2)}, {"optimizer": {}}, {"fingerprint": {"kind": "t"}})
    return run


@pytest.mark.parametrize("pointer", ["../../outside", "/tmp", "ckpt-000002/../../x", "ckpt-2", "x" * 300])
def test_latest_pointer_outside_the_run_is_refused(tmp_path, pointer):
    from sttabt_edge.errors import CheckpointMismatchError
    from sttabt_edge.train.checkpoint import latest_checkpoint

    run = _run_with_checkpoint(tmp_path)
    (run / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(CheckpointMismatchError, match="refusing to follow it") as err:
        latest_checkpoint(run)
    one_line(err)


def test_latest_pointer_through_a_symlink_out_is_refused(tmp_path):
    import shutil

    from sttabt_edge.errors import CheckpointMismatchError
    from sttabt_edge.train.checkpoint import latest_checkpoint

    run = _run_with_checkpoint(tmp_path)
    outside = tmp_path / "elsewhere" / "ckpt-000009"
    shutil.copytree(run / "checkpoints" / "ckpt-000002", outside)
    (run / "checkpoints" / "ckpt-000009").symlink_to(outside, target_is_directory=True)
    (run / "checkpoints" / "latest").write_text("ckpt-000009")
    with pytest.raises(CheckpointMismatchError, match="leads outside"):
        latest_checkpoint(run)


def test_tmp_files_of_killed_writes_are_cleaned_up(tmp_path):
    from torch import nn

    from sttabt_edge.train.checkpoint import latest_checkpoint, save_checkpoint

    run = _run_with_checkpoint(tmp_path)
    stale = [
        run / "checkpoints" / ".latest.k1ll3d.tmp",
        run / ".report.json.x7.tmp",
        run / ".train_config.json.a.tmp",
    ]
    for p in stale:
        p.write_text("half a file")
    mine = run / "notes.tmp"  # not an atomic-write temp file: left alone
    mine.write_text("keep")
    save_checkpoint(run, 4, {"m": nn.Linear(2, 2)}, {"optimizer": {}}, {"fingerprint": {"kind": "t"}})
    assert not [p for p in stale if p.exists()] and mine.exists()
    assert latest_checkpoint(run).name == "ckpt-000004"


def test_malicious_checkpoint_files_are_one_line_errors(tmp_path):
    from torch import nn

    from sttabt_edge.errors import CheckpointMismatchError
    from sttabt_edge.train.checkpoint import latest_checkpoint, load_checkpoint

    run = _run_with_checkpoint(tmp_path)
    ckpt = latest_checkpoint(run)
    marker = tmp_path / "pwned"
    _evil_pickle(ckpt / "trainer.pt", marker)
    _reseal(ckpt)
    with pytest.raises(CheckpointMismatchError, match="pickled code .*posix.mkdir.*refuses to run") as err:
        load_checkpoint(ckpt, {"m": nn.Linear(2, 2)}, {"kind": "t"})
    one_line(err)
    (ckpt / "m.safetensors").write_bytes((ckpt / "trainer.pt").read_bytes())
    _reseal(ckpt)
    with pytest.raises(CheckpointMismatchError, match="not a readable safetensors file") as err:
        load_checkpoint(ckpt, {"m": nn.Linear(2, 2)}, {"kind": "t"})
    one_line(err)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(CheckpointMismatchError, match="unreadable checkpoint state") as err:
        load_checkpoint(ckpt, {"m": nn.Linear(2, 2)}, {"kind": "t"})
    one_line(err)
    assert not marker.exists()


@pytest.fixture()
def vit_dir(tmp_path) -> Path:
    from tiny import tiny_vit

    d = tmp_path / "vit"
    tiny_vit().save_pretrained(d)
    return d


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(
            d / f"n0000{i % 2}_img{i}.png"
        )
    return d


def test_malicious_pth_and_approxnet_are_one_line_cli_errors(tmp_path, vit_dir, image_dir):
    """`info` on a pickle with code, `export --approx` on an ApproxNet whose weights are that pickle:
    refused without running it, as one `error:` line and exit 2."""
    from typer.testing import CliRunner

    from sttabt_edge.cli import app
    from sttabt_edge.errors import CheckpointMismatchError
    from sttabt_edge.method.approxnet import ApproxNet, build_approxnet
    from sttabt_edge.models.loading import load_model, load_weights

    marker = tmp_path / "pwned"
    evil = _evil_pickle(tmp_path / "evil.pth", marker)
    with pytest.raises(InputError, match="evil.pth: holds pickled code") as err:
        load_weights(evil)
    one_line(err)
    approx_dir = tmp_path / "approx"
    build_approxnet(load_model(vit_dir), 4, "random").save(approx_dir)
    (approx_dir / "model.safetensors").write_bytes(evil.read_bytes())
    with pytest.raises(CheckpointMismatchError, match="not a readable safetensors file") as err:
        ApproxNet.load(approx_dir)
    one_line(err)
    runner = CliRunner()
    for args, match in [
        (["info", "--model", str(evil)], "holds pickled code"),
        (
            [
                "export",
                "--model",
                str(vit_dir),
                "--out",
                str(tmp_path / "x.onnx"),
                "--approx",
                str(approx_dir),
                "--calib",
                str(image_dir),
                "--calib-samples",
                "2",
                "--latency-runs",
                "0",
            ],
            "not a readable safetensors",
        ),
    ]:
        res = runner.invoke(app, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and lines[-1].startswith("error: ") and match in lines[-1], res.output
        assert "Traceback" not in res.output
    (approx_dir / "approxnet.json").write_text("[]")
    with pytest.raises(CheckpointMismatchError, match="not an ApproxNet description") as err:
        ApproxNet.load(approx_dir)
    one_line(err)
    assert not marker.exists()


def test_resume_keeps_heldout_kl_before_and_refuses_a_malicious_trainer_state(tmp_path, vit_dir, image_dir):
    """A run killed before it wrote report.json, then resumed: the report still has the
    ApproxNet's held-out KL at init (the same number). A trainer.pt with code: one line, not run."""
    from sttabt_edge.errors import CheckpointMismatchError
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.train.approx import train_approx
    from sttabt_edge.train.checkpoint import latest_checkpoint
    from sttabt_edge.train.config import TrainConfig
    from sttabt_edge.train.data import prepare_data

    teacher = load_model(vit_dir)
    data = prepare_data(image_dir, teacher)
    assert data.eval, "the held-out split is what the KL is measured on"
    out = tmp_path / "ax"

    def cfg(**kw):
        return TrainConfig.of(
            **{
                "lr": 1e-3,
                "steps": 4,
                "batch_size": 2,
                "warmup": 0.0,
                "progress": False,
                "eval_batch_size": 4,
                **kw,
            }
        )

    train_approx(teacher, data, init="random", cfg=cfg(stop_after=2), out=out)
    before = json.loads((out / "report.json").read_text())["heldout_attention_kl_before"]
    assert before is not None
    (out / "report.json").unlink()  # killed after the checkpoint, before the report
    train_approx(teacher, data, init="random", cfg=cfg(), out=out, resume=True)
    report = json.loads((out / "report.json").read_text())
    assert report["finished"] and report["heldout_attention_kl_before"] == pytest.approx(before, rel=1e-6)
    marker = tmp_path / "pwned"
    _evil_pickle(latest_checkpoint(out) / "trainer.pt", marker)
    _reseal(latest_checkpoint(out))
    with pytest.raises(CheckpointMismatchError, match="trainer.pt: holds pickled code") as err:
        train_approx(teacher, data, init="random", cfg=cfg(steps=6), out=out, resume=True)
    one_line(err)
    from typer.testing import CliRunner

    from sttabt_edge.cli import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            "approx",
            "--model",
            str(vit_dir),
            "--data",
            str(image_dir),
            "--out",
            str(out),
            "--init",
            "random",
            "--steps",
            "6",
            "--resume",
        ],
    )
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and lines[-1].startswith("error: ") and "holds pickled code" in lines[-1], (
        res.output
    )
    assert "Traceback" not in res.output and not marker.exists()


def test_quantized_export_carries_a_valid_digest(fuzz_exports, tmp_path):
    """quantize_onnx rewrites the graph; set_metadata seals the new one, so the INT8 file loads."""
    from sttabt_edge.export.quantize import quantize_onnx

    pred = fuzz_exports["bert", "topk-0.6"][0]
    quantize_onnx(pred.path, tmp_path / "q.onnx")
    q = load(tmp_path / "q.onnx")
    assert q.metadata.raw["quantization"] == "int8-dynamic"
    assert q.metadata.raw["digest"] != pred.metadata.raw["digest"]


# ---- fuzz: token counts and padding, both families, top-k and concrete exports -------------------

TEXT_PLANS = {
    "topk-0.25": 0.25,
    "topk-0.6": 0.6,
    "concrete-a": [-0.3, 0.0, 0.2],
    "concrete-b": [0.5, -0.4, 0.1],
}
IMAGE_PLANS = {"topk-0.4": 0.4, "topk-0.8": 0.8, "concrete": [-0.2, 0.1, 0.3]}


def _reducer(model, plan):
    """STTABT with a fixed (seeded) ApproxNet: top-k at one keep ratio, or concrete thresholds."""
    import torch

    from sttabt_edge.method.approxnet import build_approxnet
    from sttabt_edge.method.concrete import ConcreteThresholds
    from sttabt_edge.reducers.sttabt import SttabtReducer

    approx = build_approxnet(model, 4, "random").eval()
    if isinstance(plan, float):
        return SttabtReducer(approx, keep_ratio=plan)
    th = ConcreteThresholds(len(plan)).eval()
    with torch.no_grad():
        th.logits.copy_(torch.tensor(plan))
    return SttabtReducer(approx, thresholds=th)


@pytest.fixture(scope="module")
def fuzz_exports(tmp_path_factory) -> dict:
    """Tiny BERT (64 positions, vocab 100) and ViT (16 patches) exported once per plan (~1 s each)."""
    import torch
    from tiny import text_batch, tiny_bert, tiny_vit

    from sttabt_edge.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("fuzz")
    tok = word_tokenizer(root / "tok.json")
    images = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    graphs = {}
    for family, model, plans, example in (
        ("bert", tiny_bert(), TEXT_PLANS, text_batch()),
        ("vit", tiny_vit(), IMAGE_PLANS, images),
    ):
        for name, plan in plans.items():
            reducer = _reducer(model, plan)
            path = export_onnx(
                SparseClassifier(model, reducer),
                root / f"{family}-{name}.onnx",
                example_inputs=example,
                simplify=False,
                tokenizer_file=tok if family == "bert" else None,
            ).path
            graphs[family, name] = (load(path, threads=1), model, reducer)
    return graphs


def test_fuzz_text_rows_equal_alone_and_pytorch(fuzz_exports):
    from fuzz import FUZZ, assert_rows_match, text_batches

    @FUZZ
    @given(plan=st.sampled_from(sorted(TEXT_PLANS)), batch=text_batches(max_len=64, vocab=100))
    def check(plan, batch):
        assert_rows_match(*fuzz_exports["bert", plan], *batch, atol=1e-4)

    check()


def test_fuzz_image_rows_equal_alone_and_pytorch(fuzz_exports):
    from fuzz import FUZZ, assert_rows_match, image_batches

    @FUZZ
    @given(plan=st.sampled_from(sorted(IMAGE_PLANS)), batch=image_batches(size=32))
    def check(plan, batch):
        assert_rows_match(*fuzz_exports["vit", plan], *batch, atol=1e-4)

    check()


def test_all_padding_batch_on_the_threshold_graph_is_an_input_error(fuzz_exports):
    """It crashed inside the graph (Reshape); now the runtime refuses it before the session runs."""
    pred = fuzz_exports["bert", "concrete-a"][0]
    zeros = {k: np.zeros((2, 6), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with pytest.raises(InputError, match=r"rows \[0, 1\] are all padding") as err:
        pred.run(zeros)
    one_line(err)


@pytest.mark.integration
def test_fuzz_real_minilm_rows_equal_alone_and_pytorch(shared_dir, tmp_path):
    """The same property on the shared MiniLM-SST2 (384 hidden, 6 layers, 512 positions) exported with
    an untrained ApproxNet at keep 0.3: [CLS] ... [SEP] rows of real vocabulary ids up to 128 tokens."""
    import torch
    from fuzz import FUZZ, assert_rows_match, text_batches

    from sttabt_edge.export.onnx import export_onnx
    from sttabt_edge.method.approxnet import build_approxnet
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.sttabt import SttabtReducer
    from sttabt_edge.runtime import TextPreprocess

    model_dir = shared_dir / "models" / "minilm-l6-sst2"
    model = load_model(model_dir)
    reducer = SttabtReducer(build_approxnet(model, 4, "interpolate").eval(), keep_ratio=0.3)
    enc = TextPreprocess.from_file(model_dir)(["a gripping, funny film", "dull", "not bad at all, really"])
    path = export_onnx(
        SparseClassifier(model, reducer),
        tmp_path / "minilm.onnx",
        simplify=False,
        example_inputs={k: torch.from_numpy(v) for k, v in enc.items()},
        tokenizer_file=model_dir / "tokenizer.json",
    ).path
    pred = load(path, threads=1)
    ids = pred.text.tokenizer.token_to_id("[CLS]"), pred.text.tokenizer.token_to_id("[SEP]")

    @settings(FUZZ, max_examples=20)
    @given(batch=text_batches(max_len=128, vocab=int(model.config.vocab_size), cls_sep=ids, max_batch=4))
    def check(batch):
        assert_rows_match(pred, model, reducer, *batch, atol=2e-4)

    check()


@pytest.mark.integration
def test_fuzz_real_deit_rows_equal_alone_and_pytorch(shared_dir, tmp_path):
    """DeiT-Tiny (distilled: two prefix tokens, 196 patches) at keep 0.3, untrained ApproxNet."""
    import torch
    from fuzz import FUZZ, assert_rows_match, image_batches

    from sttabt_edge.export.onnx import export_onnx
    from sttabt_edge.method.approxnet import build_approxnet
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.sttabt import SttabtReducer

    model = load_model(shared_dir / "models" / "deit-tiny-imagenet")
    reducer = SttabtReducer(build_approxnet(model, 4, "interpolate").eval(), keep_ratio=0.3)
    example = {"pixel_values": torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))}
    pred = load(
        export_onnx(
            SparseClassifier(model, reducer), tmp_path / "deit.onnx", simplify=False, example_inputs=example
        ).path,
        threads=1,
    )

    @settings(FUZZ, max_examples=8)
    @given(batch=image_batches(size=224, max_batch=4))
    def check(batch):
        assert_rows_match(pred, model, reducer, *batch, atol=2e-4)

    check()
