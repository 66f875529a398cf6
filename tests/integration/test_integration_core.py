"""Real checkpoints from ../shared: keep ratio 1.0 reproduces the dense model."""

import pytest
import torch

from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.runtime import ImagePreprocess, TextPreprocess
from sttabt_edge.sparse_model import SparseClassifier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deit(shared_dir):
    from sttabt_edge.models.loading import load_model

    return load_model(shared_dir / "models" / "deit-tiny-imagenet")


@pytest.fixture(scope="module")
def minilm(shared_dir):
    from sttabt_edge.models.loading import load_model

    return load_model(shared_dir / "models" / "minilm-l6-sst2")


def test_deit_tiny_keep_ratio_one_is_dense(deit, shared_dir):
    files = sorted((shared_dir / "data" / "imagenet-sample").glob("*.JPEG"))[:4]
    px = torch.from_numpy(ImagePreprocess()(files))
    with torch.no_grad():
        ref = deit(pixel_values=px).logits
        out = SparseClassifier(deit, SttabtReducer(keep_ratio=1.0))(pixel_values=px)
        pruned = SparseClassifier(deit, SttabtReducer(keep_ratio=0.25))(pixel_values=px)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    assert out.n_in[0, 0] == 197
    # union sets grow toward the input from ceil(0.25 * 197) = 50 + CLS at the top, really removed
    assert (pruned.n_in[:, -1] <= 51).all() and (pruned.n_in[:, 0] < 197).all()
    assert (pruned.n_in[:, :-1] >= pruned.n_in[:, 1:]).all()
    # the oracle keeps the dense prediction on these images
    assert (pruned.logits.argmax(1) == ref.argmax(1)).float().mean() >= 0.75


def test_minilm_keep_ratio_one_is_dense_padded(minilm, shared_dir):
    rows = (shared_dir / "data" / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:7]
    texts = [r.split("\t")[0] for r in rows]
    tok = TextPreprocess.from_file(shared_dir / "models" / "minilm-l6-sst2" / "tokenizer.json")
    enc = {k: torch.from_numpy(v) for k, v in tok(texts).items()}
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        ref = minilm(**enc).logits
        out = SparseClassifier(minilm, SttabtReducer(keep_ratio=1.0))(**enc)
        single = [
            SparseClassifier(minilm, SttabtReducer(keep_ratio=0.4))(
                **{k: v[i : i + 1, : int(enc["attention_mask"][i].sum())] for k, v in enc.items()}
            ).logits
            for i in range(len(texts))
        ]
        batch = SparseClassifier(minilm, SttabtReducer(keep_ratio=0.4))(**enc).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch, torch.cat(single), atol=1e-5, rtol=0)


def test_tflite_calibration_text_is_tokenized_to_the_static_length(minilm, shared_dir):
    """The TFLite export's calibration batch is tokenized at --seq-len (truncation keeps [SEP]),
    not cut after tokenization, which would drop [SEP] from long sentences."""
    from sttabt_edge.export.pipeline import calibration_batch
    from sttabt_edge.export.request import ExportRequest, GraphOptions, ModelSource, VerifyOptions

    model_dir = shared_dir / "models" / "minilm-l6-sst2"
    req = ExportRequest(
        source=ModelSource(model=str(model_dir)),
        out=shared_dir / "unused.tflite",
        graph=GraphOptions(target="tflite", seq_len=8),
        verify=VerifyOptions(calib=shared_dir / "data" / "glue" / "SST-2" / "dev.tsv", calib_samples=6),
    )
    calib, _ = calibration_batch(SparseClassifier(minilm, DenseReducer()), req, lambda msg: None)
    ids, mask = calib["input_ids"], calib["attention_mask"]
    assert ids.shape[1] <= 8 and (mask.sum(1) == 8).any()  # some dev sentences are longer than 8 tokens
    sep = TextPreprocess.from_file(model_dir / "tokenizer.json").tokenizer.token_to_id("[SEP]")
    last = ids.gather(1, (mask.sum(1, keepdim=True) - 1))
    assert (last == sep).all()


@pytest.mark.integration
def test_short_texts_keep_their_words_through_the_export(minilm, shared_dir, tmp_path):
    """k = ceil(0.3 n) would leave "[CLS] terrible [SEP]" with its CLS alone, and every short text
    would get the same answer; the min_keep floor (4, CLS included) keeps all their tokens, so the
    exported STTABT model classifies them exactly as the dense model does."""
    from sttabt_edge.export.onnx import export_onnx
    from sttabt_edge.method.approxnet import build_approxnet
    from sttabt_edge.runtime import load

    tok_file = shared_dir / "models" / "minilm-l6-sst2" / "tokenizer.json"
    tok = TextPreprocess.from_file(tok_file)
    texts = ["terrible", "awful", "not good", "a masterpiece"]
    reducer = SttabtReducer(build_approxnet(minilm, 4, "random").eval(), keep_ratio=0.3)
    example = {k: torch.from_numpy(v) for k, v in tok(["a fine film , all told", "bad"]).items()}
    path = export_onnx(
        SparseClassifier(minilm, reducer),
        tmp_path / "m.onnx",
        example_inputs=example,
        tokenizer_file=tok_file,
        simplify=False,
    ).path
    pred = load(path)  # the export wrote its digest: the normal, checked load
    outputs = pred.run(pred.preprocess(texts=texts))
    enc = tok(texts)
    with torch.no_grad():
        dense = minilm(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    n_real = enc["attention_mask"].sum(1)
    assert (n_real <= 4).all()
    assert (outputs["kept_counts"] == n_real[:, None]).all()  # every layer keeps every token
    assert (outputs["logits"].argmax(1) == dense.argmax(1)).all()
    assert abs(outputs["logits"] - dense).max() < 1e-4
    assert dense[0].argmax() != dense[3].argmax()  # "terrible" and "a masterpiece" differ
