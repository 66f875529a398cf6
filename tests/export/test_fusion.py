"""export/fusion.py: fused files (MultiHeadAttention, residual Sum) match the unfused export,
keep the contract (inputs, outputs, metadata, digest) and quantize like any export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from tiny import padded_text as padded
from tiny import text_batch, tiny_bert, tiny_vit

from sttabt_edge.errors import ExportError
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.fusion import fuse_onnx
from sttabt_edge.export.onnx import export_onnx
from sttabt_edge.export.quantize import quantize_onnx
from sttabt_edge.method.approxnet import APPROX_SCOPE, build_approxnet
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.runtime import load
from sttabt_edge.runtime.contract import METADATA_KEY
from sttabt_edge.sparse_model import SparseClassifier

LAYERS = 3  # tiny models: 3 layers, 4 heads, hidden 32


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


TEXT_SETS = (text_batch(), padded([9], 9), padded([33, 21, 4], 33, seed=1), padded([2], 2, seed=2))


def images(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def outputs(path, inputs) -> list[np.ndarray]:
    session = ort_utils.open_session(path)
    return ort_utils.run(session, ort_utils.to_feeds([i.name for i in session.get_inputs()], inputs))


def assert_same(ref, fused, input_sets) -> None:
    """Logits within 1e-4 and identical kept counts, on every input set."""
    for inputs in input_sets:
        (la, ka), (lb, kb) = outputs(ref, inputs)[:2], outputs(fused, inputs)[:2]
        assert np.abs(la - lb).max() <= 1e-4, (ref, fused)
        np.testing.assert_array_equal(ka, kb)


def ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory, tokenizer):
    """Tiny BERT exported dense and STTABT (keep 0.5; this one slimmed, as the CLI does)."""
    d = tmp_path_factory.mktemp("bert")
    model = tiny_bert()
    dense = export_onnx(
        SparseClassifier(model, DenseReducer()),
        d / "dense.onnx",
        example_inputs=text_batch(),
        tokenizer_file=tokenizer,
        simplify=False,
    ).path
    reducer = SttabtReducer(build_approxnet(model, 4, "random").eval(), keep_ratio=0.5)
    sparse = export_onnx(
        SparseClassifier(model, reducer),
        d / "sttabt.onnx",
        example_inputs=text_batch(),
        tokenizer_file=tokenizer,
    ).path
    return dense, sparse


@pytest.mark.parametrize("method", ["dense", "sttabt"])
def test_bert_fused_matches_unfused(bert_files, method):
    src = bert_files[0] if method == "dense" else bert_files[1]
    dst = src.with_name(f"{method}.fused.onnx")
    report = fuse_onnx(src, dst, check_inputs=text_batch())
    assert report.attention_sites == report.attention_fused == LAYERS
    assert report.ops_after["MultiHeadAttention"] == LAYERS and "MultiHeadAttention" not in report.ops_before
    # attention and FFN residuals and the embeddings' sum (and the ApproxNet's, in STTABT)
    assert (
        report.residual_sums == 2 * LAYERS + 1 if method == "dense" else report.residual_sums > 2 * LAYERS + 1
    )
    assert report.nodes_after < report.nodes_before
    found = ops(dst)
    assert found.count("MultiHeadAttention") == LAYERS and "SkipLayerNormalization" not in found
    # the main model's softmaxes are gone; the ApproxNet's (its maps feed the back-tracking) stay
    softmaxes = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == (0 if method == "dense" else LAYERS)
    assert all(n.name.startswith(APPROX_SCOPE) for n in softmaxes)
    assert_same(src, dst, TEXT_SETS)


def test_bert_fused_keeps_the_contract(bert_files):
    src = bert_files[1]
    dst = src.with_name("other_name.onnx")
    fuse_onnx(src, dst)
    a, b = onnx.load(str(src)), onnx.load(str(dst))
    assert [v.SerializeToString() for v in (*a.graph.input, *a.graph.output)] == [
        v.SerializeToString() for v in (*b.graph.input, *b.graph.output)
    ]
    meta_a = json.loads({p.key: p.value for p in a.metadata_props}[METADATA_KEY])
    meta_b = json.loads({p.key: p.value for p in b.metadata_props}[METADATA_KEY])
    assert meta_a.pop("digest") != meta_b.pop("digest")  # the graph changed, so its digest did
    # the tokenizer follows the file (as quantize_onnx does); nothing else in the metadata changes
    assert meta_b["preprocess"]["text"]["tokenizer_file"] == "other_name.tokenizer.json"
    assert dst.with_name("other_name.tokenizer.json").is_file()
    meta_b["preprocess"]["text"]["tokenizer_file"] = meta_a["preprocess"]["text"]["tokenizer_file"]
    assert meta_a == meta_b
    pred = load(dst)  # the runtime checks the digest and the contract
    out = pred.predict(texts=["a short text", "and another one"], top_k=1)
    assert out.kept_counts is not None


def test_fused_file_quantizes(bert_files, tmp_path):
    src = bert_files[1]
    fused = tmp_path / "f.onnx"
    fuse_onnx(src, fused)
    r_plain = quantize_onnx(src, tmp_path / "plain.int8.onnx", calibration_inputs=text_batch())
    r_fused = quantize_onnx(fused, tmp_path / "fused.int8.onnx", calibration_inputs=text_batch())
    assert r_fused.fp32_nodes == r_plain.fp32_nodes > 0  # the ApproxNet's matmuls stay fp32 in both
    assert r_fused.int8_embeddings == r_plain.int8_embeddings > 0
    assert "MultiHeadAttention" in ops(tmp_path / "fused.int8.onnx")
    (la, ka), (lb, kb) = (
        outputs(tmp_path / f, text_batch())[:2] for f in ("plain.int8.onnx", "fused.int8.onnx")
    )
    assert np.abs(la - lb).max() <= 1e-3  # same weights, same 8-bit rounding
    np.testing.assert_array_equal(ka, kb)


def test_unslimmed_fused_file_quantizes(bert_files, tmp_path):
    """ONNX shape inference skips contrib ops: the fused outputs' declared type lets ORT quantize
    the projections after them in a file with no value_info (an unslimmed export)."""
    fused = tmp_path / "f.onnx"
    fuse_onnx(bert_files[0], fused)
    report = quantize_onnx(fused, tmp_path / "q.onnx", calibration_inputs=text_batch())
    assert report.kept_counts_equal and "MatMulInteger" in ops(tmp_path / "q.onnx")
    assert "MultiHeadAttention" in ops(tmp_path / "q.onnx")


@pytest.mark.parametrize("method", ["dense", "sttabt"])
def test_vit_fused_matches_unfused(tmp_path, method):
    model = tiny_vit()
    reducer = (
        DenseReducer()
        if method == "dense"
        else SttabtReducer(build_approxnet(model, 4, "random").eval(), keep_ratio=0.5)
    )
    src = export_onnx(
        SparseClassifier(model, reducer),
        tmp_path / "vit.onnx",
        example_inputs=images(2),
        simplify=method == "sttabt",
    ).path
    dst = tmp_path / "vit.fused.onnx"
    report = fuse_onnx(src, dst, check_inputs=images(2))
    assert report.attention_fused == LAYERS
    # dense ViT has no padding bias; sparse layers mask the padded slots of their compact sets
    masks = [len(n.input) == 5 for n in onnx.load(str(dst)).graph.node if n.op_type == "MultiHeadAttention"]
    assert masks == [method == "sttabt"] * LAYERS
    assert_same(src, dst, [images(1, seed=1), images(3, seed=2)])


def test_fuse_in_place(bert_files, tmp_path):
    """What the exporter would do: fuse the verified file where it lies (same name, same tokenizer)."""
    import shutil

    src = bert_files[1]
    copy = tmp_path / src.name
    shutil.copyfile(src, copy)
    shutil.copyfile(src.with_name("sttabt.tokenizer.json"), tmp_path / "sttabt.tokenizer.json")
    before = outputs(copy, text_batch())
    report = fuse_onnx(copy, copy, check_inputs=text_batch())
    assert report.attention_fused == LAYERS and "MultiHeadAttention" in ops(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sttabt.onnx", "sttabt.tokenizer.json"]
    after = outputs(copy, text_batch())
    assert np.abs(before[0] - after[0]).max() <= 1e-4 and np.array_equal(before[1], after[1])
    load(copy)


def test_options_and_refusals(bert_files, tmp_path):
    src = bert_files[0]
    plain = fuse_onnx(src, tmp_path / "none.onnx", attention=False, residual_sum=False)
    assert plain.attention_fused == 0 and plain.residual_sums == 0 and plain.ops_after == plain.ops_before
    with pytest.raises(ExportError, match="differ"):  # a parity check that cannot pass writes nothing
        fuse_onnx(src, tmp_path / "bad.onnx", check_inputs=text_batch(), atol=-1.0)
    assert not (tmp_path / "bad.onnx").exists()
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ExportError, match="metadata"):
        fuse_onnx(foreign, tmp_path / "x.onnx")
