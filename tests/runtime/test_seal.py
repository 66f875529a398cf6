"""Issue #28, class 1: everything the runtime reads is sealed, and metadata is checked against the
graph. A tiny ViT and a tiny BERT are exported once per module by the real exporter; each test
edits a copy the way the audit did (labels, mean, a second entry, a sidecar, external data, the
tokenizer, sizes that contradict the graph) and the runtime must refuse it with one
ModelFileError line, never answer. Then property-based fuzzing: any edit of the metadata bytes
of an ONNX file or of a TFLite sidecar is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fuzz import FUZZ
from handmade import image_meta, word_tokenizer
from hypothesis import assume, given
from hypothesis import strategies as st
from onnx_metadata import metadata_entry, metadata_of, with_metadata
from tiny import text_batch, tiny_bert, tiny_vit

from sttabt_edge.errors import ModelFileError
from sttabt_edge.export.metadata import read_metadata, set_metadata, write_sidecar
from sttabt_edge.export.onnx import export_onnx
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.runtime import contract, load, modelfile, seal
from sttabt_edge.sparse_model import SparseClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
PIXELS = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Tiny dense ViT (32 px) and tiny STTABT BERT (64 positions), each with its own folder."""
    root = tmp_path_factory.mktemp("sealed")
    (root / "vit").mkdir()
    (root / "bert").mkdir()
    vit = export_onnx(
        SparseClassifier(tiny_vit(), DenseReducer()),
        root / "vit" / "vit.onnx",
        example_inputs={"pixel_values": torch.from_numpy(PIXELS)},
        simplify=False,
    ).path
    bert_model = tiny_bert()
    reducer = SttabtReducer(build_approxnet(bert_model, 4, "random").eval(), keep_ratio=0.5)
    bert = export_onnx(
        SparseClassifier(bert_model, reducer),
        root / "bert" / "bert.onnx",
        example_inputs=text_batch(),
        simplify=False,
        tokenizer_file=word_tokenizer(root / "words.json"),
    ).path
    return {"vit": vit, "bert": bert}


def copy_of(exported: dict[str, Path], family: str, folder: Path) -> Path:
    """The export and its companions (tokenizer) in ``folder``."""
    src = exported[family]
    for f in src.parent.iterdir():
        shutil.copy(f, folder / f.name)
    return folder / src.name


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def edited(path: Path, edit) -> Path:
    data = path.read_bytes()
    path.write_bytes(with_metadata(data, edit(metadata_of(data).decode()).encode()))
    return path


def resealed(path: Path, **changes) -> Path:
    """The metadata changed and sealed again with a valid seal, as a buggy exporter might (the real
    one refuses off-contract metadata before it seals)."""
    data = path.read_bytes()
    meta = {**json.loads(metadata_of(data)), **changes}
    layout = seal.onnx_layout(data)
    model = ("onnx", seal.onnx_model_sha256(data, layout))
    parts = seal.components(model, path.parent, layout.external, seal.tokenizer_name(meta))
    path.write_bytes(with_metadata(data, seal.sealed_text(meta, parts).encode()))
    return path


# ---- class 1 ------------------------------------------------------------------------------------


def _next_digit(text: str, after: str) -> str:
    """``text`` with the first digit after ``after`` changed (0.485 -> 0.985: one byte)."""
    at = text.index(after) + len(after)
    at += next(i for i, c in enumerate(text[at:]) if c.isdigit() and c != "0")
    return text[:at] + str((int(text[at]) + 4) % 10) + text[at + 1 :]


def _relabel_vit(text: str) -> str:
    return text.replace('"labels": ["', '"labels": ["toilet tissue", "', 1).replace('", "LABEL_4"]', '"]')


def _swap_bert_labels(text: str) -> str:
    return text.replace('"labels": ["LABEL_0", "LABEL_1"', '"labels": ["LABEL_1", "LABEL_0"', 1)


EDITS = {
    "labels": ("vit", _relabel_vit),
    "mean": ("vit", lambda t: _next_digit(t, '"mean": [')),
    "std": ("vit", lambda t: _next_digit(t, '"std": [')),
    "text labels": ("bert", _swap_bert_labels),
    "keep schedule": ("bert", lambda t: _next_digit(t, '"keep_schedule": [')),
    "additive key": ("vit", lambda t: t.replace("{", '{"note": "additive keys are sealed too", ', 1)),
    "whitespace": ("vit", lambda t: t.replace(", ", ",  ", 1)),  # the seal is over bytes, not meaning
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_metadata_is_refused(exported, tmp_path, name):
    """Labels, mean/std, schedules: an edit used to change the answer silently; now the seal refuses it."""
    family, edit = EDITS[name]
    path = copy_of(exported, family, tmp_path)
    assert load(path).metadata.raw["format_version"] == 1  # the export itself loads
    before = metadata_of(path.read_bytes())
    with pytest.raises(ModelFileError, match="digest mismatch") as err:
        load(edited(path, edit))
    assert metadata_of(path.read_bytes()) != before
    one_line(err)


def test_a_second_metadata_entry_is_refused(exported, tmp_path):
    """An appended second sttabt_edge entry used to win; any number but one is refused, sealed or not."""
    path = copy_of(exported, "vit", tmp_path)
    data = path.read_bytes()
    forged = json.loads(metadata_of(data))
    forged["labels"] = ["cucumber"] * len(forged["labels"])
    path.write_bytes(data + metadata_entry(json.dumps(forged).encode()))
    for verify in (True, False):
        with pytest.raises(ModelFileError, match="2 'sttabt_edge' metadata entries") as err:
            load(path, verify_digest=verify)
        one_line(err)


def test_metadata_size_is_bounded_before_it_is_decoded(exported, tmp_path):
    """A 300 MB metadata took 5 s and 1.27 GB; over 1 MiB is refused from its length alone."""
    path = copy_of(exported, "vit", tmp_path)
    meta = json.loads(metadata_of(path.read_bytes()))
    big = json.dumps({**meta, "pad": "x" * (8 << 20)}).encode()
    path.write_bytes(with_metadata(path.read_bytes(), big))
    side = tmp_path / "m.tflite.json"
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    side.write_bytes(big)
    for target in (path, tmp_path / "m.tflite"):
        for verify in (True, False):
            t0 = time.perf_counter()
            with pytest.raises(ModelFileError, match="over the 1048576-byte limit") as err:
                load(target, verify_digest=verify)
            assert time.perf_counter() - t0 < 2.0
            one_line(err)


@pytest.mark.parametrize(
    ("family", "changes", "match"),
    [
        ("vit", {"image_size": 16, "resize_size": 18}, "image_size 16 does not fit the graph's pixel_values"),
        ("vit", {"image_size": 32, "resize_size": 4096}, "resize_size 4096 is over 2 x image_size 32"),
        ("bert", {"max_length": 65536}, "max_length 65536 exceeds the graph's 64 position embeddings"),
    ],
)
def test_metadata_that_contradicts_the_graph_is_refused(exported, tmp_path, family, changes, match):
    """Sealed (as a buggy exporter would write them) or unsealed, sizes the graph cannot take are refused
    at load, before the first input reaches the engine."""
    path = copy_of(exported, family, tmp_path)
    meta = read_metadata(path)
    pre = meta["preprocess"]
    key = "image" if family == "vit" else "text"
    sealed = resealed(path, preprocess={key: {**pre[key], **changes}})
    for verify in (True, False):
        with pytest.raises(ModelFileError, match=match) as err:
            load(sealed, verify_digest=verify)
        one_line(err)


def test_static_sequence_length_bounds_max_length():
    """TFLite text graphs have a static length: max_length past it is refused (padding only goes up)."""
    meta = {"preprocess": {"text": {"tokenizer_file": "t.json", "max_length": 32}}}
    assert modelfile.graph_problems(meta, {"input_ids": (1, 24)}, None) == [
        "preprocess.text.max_length 32 exceeds the graph's 24 tokens"
    ]
    assert modelfile.graph_problems(meta, {"input_ids": (1, 32)}, None) == []
    assert modelfile.graph_problems(meta, {"input_ids": ("batch", "sequence")}, 64) == []


def test_files_sealed_before_this_version_are_refused_with_a_clear_message(exported, tmp_path):
    """Their digest covered only graph and weights: refused (re-export), never silently accepted."""
    path = copy_of(exported, "vit", tmp_path)
    data = path.read_bytes()
    meta = {k: v for k, v in json.loads(metadata_of(data)).items() if k != "digest"}
    old = {**meta, "digest": seal.legacy_onnx_digest(data)}  # what the previous exporter wrote
    path.write_bytes(with_metadata(data, json.dumps(old, ensure_ascii=False).encode()))
    with pytest.raises(ModelFileError, match="sealed by an older sttabt-edge.*re-export it") as err:
        load(path)
    one_line(err)
    assert load(path, verify_digest=False).metadata.labels == meta["labels"]
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3 old")
    legacy_side = {**image_meta(), "digest": contract.DIGEST_PREFIX + seal.file_sha256(tfl)}
    (tmp_path / "m.tflite.json").write_text(json.dumps(legacy_side, indent=2))
    with pytest.raises(ModelFileError, match="sealed by an older sttabt-edge"):
        load(tfl)


def test_external_data_is_sealed(exported, tmp_path):
    """Weights moved to an external-data file are covered: editing that file is refused."""
    path = copy_of(exported, "vit", tmp_path)
    reference = load(path).run({"pixel_values": PIXELS})["logits"]
    meta = read_metadata(path)
    onnx.save_model(
        onnx.load(str(path)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="vit.onnx.data",
        size_threshold=0,
    )
    data_file = tmp_path / "vit.onnx.data"
    assert data_file.stat().st_size > 10_000 and seal.onnx_layout(path.read_bytes()).external == (
        "vit.onnx.data",
    )
    with pytest.raises(ModelFileError, match="digest mismatch"):  # the graph changed: not the sealed one
        load(path)
    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, meta, tmp_path)
    onnx.save(proto, str(path))
    np.testing.assert_allclose(load(path).run({"pixel_values": PIXELS})["logits"], reference, atol=1e-6)
    weights = bytearray(data_file.read_bytes())
    weights[len(weights) // 2] ^= 0x40
    data_file.write_bytes(bytes(weights))
    with pytest.raises(ModelFileError, match="digest mismatch") as err:
        load(path)
    one_line(err)
    data_file.unlink()
    with pytest.raises(ModelFileError, match="external data file .*vit.onnx.data .* is missing"):
        load(path)
    for tensor in proto.graph.initializer:  # a location out of the model's folder, seal or no seal
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../vit.onnx.data"
    onnx.save(proto, str(path))
    for verify in (True, False):
        with pytest.raises(ModelFileError, match="external data location must be a plain file name") as err:
            load(path, verify_digest=verify)
        one_line(err)


def test_tokenizer_is_sealed(exported, tmp_path):
    """A text model answers through its tokenizer: a swapped vocabulary is refused too."""
    path = copy_of(exported, "bert", tmp_path)
    tok = tmp_path / read_metadata(path)["preprocess"]["text"]["tokenizer_file"]
    assert load(path).predict(texts="w2 w3", top_k=1).labels
    vocab = json.loads(tok.read_text())
    vocab["model"]["vocab"]["w2"], vocab["model"]["vocab"]["w3"] = 3, 2
    tok.write_text(json.dumps(vocab))
    with pytest.raises(ModelFileError, match="digest mismatch") as err:
        load(path)
    one_line(err)


def _fake_tflite(folder: Path, meta: dict) -> Path:
    """Bytes LiteRT cannot load, with a sidecar sealed by the exporter's writer: whatever the runtime
    refuses before "LiteRT cannot load it" was refused by the metadata checks."""
    path = folder / "m.tflite"
    path.write_bytes(b"TFL3" + bytes(range(256)) * 4)
    write_sidecar(modelfile.sidecar_path(path), meta, path.read_bytes())
    return path


def test_tflite_sidecar_and_model_are_sealed(tmp_path):
    path = _fake_tflite(tmp_path, image_meta())
    with pytest.raises(ModelFileError, match="LiteRT cannot load it"):  # every metadata check passed
        load(path)
    side = modelfile.sidecar_path(path)
    good = side.read_text()
    side.write_text(good.replace('"cat"', '"toilet tissue"'))
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load(path)
    side.write_text(good)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load(path)


# ---- fuzz: any edit of the metadata bytes is refused ---------------------------------------------


@st.composite
def byte_edits(draw, text: bytes) -> bytes:
    """One edit of ``text``: a bit flip, a byte set, inserted or deleted anywhere, a space after a
    separator (same JSON meaning), or one digit changed (same JSON validity)."""
    raw = bytearray(text)
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "space", "digit"]))
    if kind in ("space", "digit"):
        wanted = b",:" if kind == "space" else b"0123456789"
        spots = [i for i, c in enumerate(raw) if c in wanted]
        at = spots[draw(st.integers(0, len(spots) - 1))]
        if kind == "space":
            raw[at + 1 : at + 1] = b" "
        else:
            raw[at] = ord("0") + (raw[at] - ord("0") + draw(st.integers(1, 9))) % 10
        return bytes(raw)
    at = draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        raw[at] = draw(st.integers(0, 255))
    elif kind == "insert":
        raw[at:at] = bytes([draw(st.integers(0, 255))])
    else:
        del raw[at]
    return bytes(raw)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_fuzz_onnx_metadata_edits_are_refused(exported, tmp_path, family):
    path = copy_of(exported, family, tmp_path)
    data = path.read_bytes()
    original = metadata_of(data)
    load(path)  # the control: unedited, it loads

    @FUZZ
    @given(value=byte_edits(original))
    def check(value):
        assume(value != original)
        path.write_bytes(with_metadata(data, value))
        with pytest.raises(ModelFileError):
            load(path)

    check()


def test_fuzz_tflite_sidecar_edits_are_refused(tmp_path):
    path = _fake_tflite(tmp_path, {**image_meta(), "labels": ["cat", "dog"], "tflite": {"batch": 1}})
    side = modelfile.sidecar_path(path)
    original = side.read_bytes()

    @FUZZ
    @given(value=byte_edits(original))
    def check(value):
        assume(value != original)
        side.write_bytes(value)
        with pytest.raises(ModelFileError) as err:
            load(path)
        assert "LiteRT" not in str(err.value), "an edited sidecar reached the engine"

    check()
