"""TFLite (LiteRT) export: conversion, interpreter parity, the real shrink, padded text, int8.

Every conversion costs ~10-50 s on 2 shared cores, so the converted files are module
fixtures (4 conversions in all) and the cheap checks run on them. With xdist, run
``-n 2 --dist loadgroup`` so the shared ViT file is converted by one worker only.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import text_batch, tiny_bert, tiny_vit

pytest.importorskip("litert_torch", reason="TFLite export needs `pip install -e '.[tflite]'`")
pytest.importorskip("ai_edge_litert", reason="TFLite export needs `pip install -e '.[tflite]'`")

from sttabt_edge.compat import model_parts  # noqa: E402
from sttabt_edge.errors import ExportError  # noqa: E402
from sttabt_edge.export.graph import ExportModule, example_args  # noqa: E402
from sttabt_edge.export.tflite import (  # noqa: E402
    export_tflite,
    quantize_tflite,
    read_sidecar,
    verify_tflite,
)
from sttabt_edge.export.tflite_graph import StaticTopkReducer  # noqa: E402
from sttabt_edge.method.approxnet import build_approxnet  # noqa: E402
from sttabt_edge.method.backtrack import ratio_schedule  # noqa: E402
from sttabt_edge.method.concrete import ConcreteThresholds  # noqa: E402
from sttabt_edge.models.adapter import embed  # noqa: E402
from sttabt_edge.reducers import SttabtReducer  # noqa: E402
from sttabt_edge.reducers.dense import DenseReducer  # noqa: E402
from sttabt_edge.reducers.topk import TopkReducer  # noqa: E402
from sttabt_edge.runtime import load  # noqa: E402
from sttabt_edge.sparse_model import SparseClassifier  # noqa: E402

pytestmark = pytest.mark.tflite
# Tests sharing the converted tiny ViT: one xdist worker converts it once (`-n 2 --dist loadgroup`).
same_vit_file = pytest.mark.xdist_group("tflite_vit")
SEQ_LEN = 24  # static text length: wider than the batch (20), so every sample is padded


def softmax_widths(path: Path) -> list[int]:
    """Key count of every Softmax in the file: proof that the tensors (not only masks) shrink."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    return [
        int(tensors[op["inputs"][0]]["shape"][-1])
        for op in it._get_ops_details()
        if op["op_name"] == "SOFTMAX"
    ]


def torch_out(model, reducer, inputs) -> tuple[np.ndarray, np.ndarray]:
    module = ExportModule(SparseClassifier(model, reducer)).eval()
    with torch.no_grad():
        logits, kept = module(*example_args(module.parts.family, inputs))
    return logits.numpy(), kept.numpy()


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def vit_reducer(vit):
    return SttabtReducer(build_approxnet(vit, 4, "random").eval(), keep_ratio=0.5).eval()


@pytest.fixture(scope="module")
def pixels():
    return {"pixel_values": torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory, vit, vit_reducer, pixels):
    out = tmp_path_factory.mktemp("vit") / "vit_sttabt.tflite"
    return export_tflite(
        SparseClassifier(vit, vit_reducer),
        out,
        example_inputs=pixels,
        metadata={"source_model": "tiny-vit"},
        slots="bound",
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": i for i in range(5, 100)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.fixture(scope="module")
def bert_reducer(bert):
    return SttabtReducer(build_approxnet(bert, 4, "random").eval(), keep_ratio=0.5).eval()


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory, bert, bert_reducer, tokenizer):
    out = tmp_path_factory.mktemp("bert") / "bert_sttabt.tflite"
    return export_tflite(
        SparseClassifier(bert, bert_reducer),
        out,
        example_inputs=text_batch(),
        seq_len=SEQ_LEN,
        tokenizer_file=tokenizer,
        slots="bound",
    )


# ---- eager, no conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 0.5, [0.9, 0.6, 0.35]])
def test_static_backtrack_equals_library_on_padded_text(bert, ratio):
    """The constant k table replaces the float64 ceil without changing a single kept token."""
    approx = build_approxnet(bert, 4, "random").eval()
    lib = SttabtReducer(approx, keep_ratio=ratio).eval()
    batch = text_batch()
    static = StaticTopkReducer(lib, ratio_schedule(ratio, 3), 20, 1)
    parts = model_parts(bert)
    with torch.no_grad():
        x, pad = embed(parts, batch)
        a, b = lib.backtrack(parts, batch, x, pad), static.backtrack(parts, batch, x, pad)
    assert all(torch.equal(u, v) for u, v in zip(a.keep, b.keep, strict=True))
    assert [int(s) for s in a.sizes] == b.sizes


def test_unsupported_inputs_fail_clearly(vit, bert, bert_reducer, tmp_path):
    with pytest.raises(ExportError, match="ONNX instead"):
        export_tflite(
            SparseClassifier(vit, TopkReducer(keep_ratio=0.5)), tmp_path / "t.tflite", example_inputs={}
        )
    with pytest.raises(ExportError, match="ApproxNet"):
        export_tflite(
            SparseClassifier(vit, SttabtReducer(keep_ratio=0.5)), tmp_path / "t.tflite", example_inputs={}
        )
    with pytest.raises(ExportError, match="quantize"):
        export_tflite(
            SparseClassifier(vit, DenseReducer()), tmp_path / "t.tflite", example_inputs={}, quantize="int4"
        )
    with pytest.raises(ExportError, match="static length 8"):
        export_tflite(
            SparseClassifier(bert, bert_reducer),
            tmp_path / "t.tflite",
            example_inputs=text_batch(),
            seq_len=8,
        )
    with pytest.raises(ExportError, match="tokenizer.json"):  # before converting, not after
        export_tflite(
            SparseClassifier(bert, bert_reducer), tmp_path / "t.tflite", example_inputs=text_batch()
        )
    assert not list(tmp_path.iterdir())


# ---- converted files -----------------------------------------------------------------------------------


@same_vit_file
def test_vit_sparse_parity_and_real_shrink(vit_file, vit, vit_reducer, pixels):
    side = read_sidecar(vit_file)
    assert side["family"] == "vit" and side["method"] == "sttabt" and side["source_model"] == "tiny-vit"
    # union slots: min(17, ceil(0.5 * 17) + next), the kept counts are masked inside them
    assert side["tflite"]["batch"] == 1 and side["tflite"]["kept_sizes"] == [17, 17, 10, 1]
    report = verify_tflite(vit_file, SparseClassifier(vit, vit_reducer), pixels, atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4 and report["kept_counts_equal"] and report["top1_agreement"] == 1.0
    kept = report["kept_counts_mean"]
    assert kept == sorted(kept, reverse=True) and 9 <= kept[-1] <= 10 and kept[0] <= 17
    assert softmax_widths(vit_file) == [17, 17, 17, 17, 17, 10]  # ApproxNet dense, then the static slots


@same_vit_file
def test_vit_runtime_predictor_matches_torch(vit_file, vit, vit_reducer, tmp_path):
    pred = load(vit_file, threads=1)
    files = []
    for i, rgb in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 36), rgb).save(files[-1])
    feed = pred.preprocess(images=files)
    out = pred.run(feed)  # batch 3 on a batch-1 file: sample by sample
    logits, kept = torch_out(vit, vit_reducer, {"pixel_values": torch.from_numpy(feed["pixel_values"])})
    assert np.abs(out["logits"] - logits).max() <= 1e-4 and np.array_equal(out["kept_counts"], kept)
    assert pred.predict(images=files, top_k=2).to_json()[0]["kept_counts"] == kept[0].tolist()


@same_vit_file
def test_verify_fails_beyond_tolerance(vit_file, vit_reducer, pixels):
    other = tiny_vit(seed=1)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        verify_tflite(vit_file, SparseClassifier(other, vit_reducer), pixels, atol=1e-4)


def test_bert_padded_text_per_sample_counts(bert_file, bert, bert_reducer, tokenizer):
    side = read_sidecar(bert_file)
    assert side["preprocess"]["text"] == {
        "tokenizer_file": "bert_sttabt.tokenizer.json",
        "max_length": SEQ_LEN,
    }
    assert (bert_file.parent / "bert_sttabt.tokenizer.json").is_file()
    assert side["tflite"]["kept_sizes"] == [24, 24, 13, 1]  # union slots min(24, ceil(0.5 * 24) + next)
    report = verify_tflite(bert_file, SparseClassifier(bert, bert_reducer), text_batch(), atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4 and report["kept_counts_equal"]
    pred = load(bert_file, threads=1)
    batch = text_batch()  # lengths 20, 12, 5, padded to 20; the predictor pads to 24
    out = pred.run(
        {
            k: v.numpy()
            for k, v in zip(
                ("input_ids", "attention_mask", "token_type_ids"), example_args("bert", batch), strict=True
            )
        }
    )
    for i, n in enumerate((20, 12, 5)):  # each sample alone at its own length, no padding at all
        one = {k: v[i : i + 1, :n] for k, v in batch.items()}
        logits, kept = torch_out(bert, bert_reducer, one)
        assert np.abs(out["logits"][i] - logits[0]).max() <= 1e-4
        assert out["kept_counts"][i].tolist() == kept[0].tolist()  # per-sample counts from the real length
        k = max(math.ceil(0.5 * n), min(n, 4))
        assert k <= kept[0][-1] <= k + 1 and kept[0][0] <= n
    assert len(pred.predict(texts=["w5 w6 w7", "w9"], top_k=1).labels) == 2


def test_dense_parity(tmp_path, vit, pixels):
    path = export_tflite(
        SparseClassifier(vit, DenseReducer()), tmp_path / "dense.tflite", example_inputs=pixels
    )
    report = read_sidecar(path)["tflite"]["verification"]["float"]
    assert report["max_abs_diff"] <= 1e-4 and report["kept_counts_mean"] == [17.0] * 3
    side = read_sidecar(path)
    assert side["keep_schedule"] is None and side["tflite"]["approx_weights"] is None  # no ApproxNet
    assert softmax_widths(path) == [17, 17, 17]


def stored_weights(path: Path) -> set[tuple[bool, str]]:
    """(is it the ApproxNet's, the stored weight dtype) of every FULLY_CONNECTED and CONV_2D; a weight
    behind a DEQUANTIZE (float16 storage) counts as its stored constant."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    made_by = {i: op for op in ops for i in op["outputs"]}
    out = set()
    for op in ops:
        if op["op_name"] in ("FULLY_CONNECTED", "CONV_2D"):
            w = op["inputs"][1]
            if w in made_by and made_by[w]["op_name"] == "DEQUANTIZE":
                w = made_by[w]["inputs"][0]
            out.add(("approxnet" in tensors[op["outputs"][0]]["name"], tensors[w]["dtype"].__name__))
    return out


@same_vit_file
@pytest.mark.parametrize("approx_weights", ["float16", "float32"])
def test_int8_dynamic_range(tmp_path, vit_file, vit, vit_reducer, pixels, approx_weights):
    """Main weights int8; the ApproxNet's (they pick the tokens) float16 or float32, computed in float:
    either way the file keeps PyTorch's kept counts."""
    out = tmp_path / "vit_int8.tflite"
    sc = SparseClassifier(vit, vit_reducer)
    report = quantize_tflite(vit_file, out, sc=sc, inputs=pixels, approx_weights=approx_weights)
    assert report["kept_counts_equal"] and report["top1_agreement"] >= 0.75
    assert out.stat().st_size < vit_file.stat().st_size
    side = read_sidecar(out)
    assert side["tflite"]["quantize"] == "int8" and side["tflite"]["verification"]["int8"] == report
    assert side["tflite"]["approx_weights"] == approx_weights
    assert read_sidecar(vit_file)["tflite"]["approx_weights"] == "float32"
    assert stored_weights(vit_file) == {(True, "float32"), (False, "float32")}
    assert stored_weights(out) == {(True, approx_weights), (False, "int8")}
    assert verify_tflite(out, sc, pixels, atol=None)["kept_counts_equal"]  # the runtime's check, again
    assert load(out).run({"pixel_values": pixels["pixel_values"][:2].numpy()})["logits"].shape == (2, 5)


@same_vit_file
def test_int8_approx_weights_float32_by_default(tmp_path, vit_file, vit, vit_reducer, pixels):
    """float32 unless asked (float16 moved DeiT-Tiny's kept sets); an unknown storage fails, no file."""
    sc = SparseClassifier(vit, vit_reducer)
    quantize_tflite(vit_file, tmp_path / "int8.tflite", sc=sc, inputs=pixels)
    assert read_sidecar(tmp_path / "int8.tflite")["tflite"]["approx_weights"] == "float32"
    with pytest.raises(ExportError, match="approx_weights must be one of"):
        quantize_tflite(vit_file, tmp_path / "bad.tflite", sc=sc, inputs=pixels, approx_weights="int4")
    assert not (tmp_path / "bad.tflite").exists()


def test_thresholds_export_as_trained_inside_calibrated_slots(tmp_path, vit, vit_reducer, pixels):
    """The thresholds themselves run in the file (no fixed-count approximation), cut to slots sized
    from their own sizes on the calibration batch (tests/export/test_tflite_slots.py checks the sizes)."""
    th = SttabtReducer(vit_reducer.approx, thresholds=ConcreteThresholds(3, init=0.0).eval()).eval()
    path = export_tflite(SparseClassifier(vit, th), tmp_path / "th.tflite", example_inputs=pixels)
    side = read_sidecar(path)
    assert side["thresholds"] == [0.0] * 3 and side["keep_schedule"] is None
    slots = side["tflite"]["slots"]
    assert slots["sizing"] == "calibrated" and slots["bounds"] == [17, 17, 17, 1]
    assert side["tflite"]["kept_sizes"] == slots["sizes"] and slots["calibration_samples"] == 16
    report = verify_tflite(path, SparseClassifier(vit, th), pixels, atol=1e-4)
    assert report["kept_counts_equal"] and report["max_abs_diff"] <= 1e-4


# ---- real checkpoint -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_deit_tiny_interpolate_approx_keep_03(tmp_path, shared_dir):
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.runtime import ImagePreprocess

    model = load_model(shared_dir / "models" / "deit-tiny-imagenet").eval()
    reducer = SttabtReducer(build_approxnet(model, 4, "interpolate").eval(), keep_ratio=0.3).eval()
    files = sorted((shared_dir / "data" / "imagenet-sample").glob("*.JPEG"))[::62][:16]
    px = {"pixel_values": torch.from_numpy(ImagePreprocess()(files))}
    path = export_tflite(SparseClassifier(model, reducer), tmp_path / "deit.tflite", example_inputs=px)
    report = read_sidecar(path)["tflite"]["verification"]["float"]
    print(
        f"DeiT-Tiny keep 0.3 TFLite vs PyTorch: max |dlogit| {report['max_abs_diff']:.2e}, "
        f"top-1 agreement {report['top1_agreement']:.3f} on {report['num_samples']} images, "
        f"kept {report['kept_counts_mean']}"
    )
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0 and report["num_samples"] == 16
    kept = report["kept_counts_mean"]  # union: ceil(0.3 * 197) + CLS at the top, growing toward the input
    assert kept == sorted(kept, reverse=True) and 60 <= kept[-1] <= 61 and report["kept_counts_equal"]
