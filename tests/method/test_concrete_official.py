"""Official concrete masking against a transcription of ``run_bert_with_concrete``.

``official_masks`` re-states the official mask computation for one unpadded sample in plain
loops, from the *pre-softmax* scores (as the official code reads them), independently of
``sttabt_edge.method.concrete_official``, which reads probabilities.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import text_batch, tiny_bert, tiny_vit

from sttabt_edge.method.concrete_official import OfficialConcrete, official_concrete_backtrack
from sttabt_edge.reducers import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier


def official_masks(
    scores: list[torch.Tensor], p_logit: list[float], temperature: float = 0.1, p: float = 0.1
):
    """scores: L tensors (H, T, T) pre-softmax. Returns (soft, hard) lists of L+1 masks (T,)."""
    eps = 1e-7
    t = scores[0].shape[-1]
    last_mask = torch.zeros(t, dtype=torch.float64)
    last_mask[0] = 1.0
    last_score = last_mask.clone()
    soft, hard = [last_mask.clone()], [last_mask.clone()]
    for layer in reversed(range(len(scores))):
        a = scores[layer].double()  # (H, T, T)
        mean = a.mean(-1, keepdim=True)
        std = torch.sqrt(((a - mean) ** 2).mean(-1, keepdim=True))
        phi = torch.distributions.Normal(0.0, 1.0).cdf((a - mean) / (std + eps)).mean(0)  # (T, T)
        s = torch.zeros(t, dtype=torch.float64)
        for q in range(t):
            s += phi[q] * last_mask[q] * (last_score[q] * p + (1 - p))
        s /= last_mask.sum() + eps
        s /= s.max() + eps
        s = 0.01 + 0.99 * s
        pl = torch.sigmoid(torch.tensor(p_logit[layer], dtype=torch.float64))
        logit = torch.log(pl + eps) - torch.log(1 - pl + eps) + torch.log(s + eps) - torch.log(1 - s + eps)
        mask = torch.sigmoid(logit / temperature)
        current = torch.maximum(mask, last_mask)
        soft.insert(0, current)
        hard.insert(0, (current >= 0.5).double())
        last_mask, last_score = current, s
    return soft, hard


def _random_scores(layers: int, heads: int, t: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(heads, t, t, generator=gen) * 2.0 for _ in range(layers)]


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_official_computation(seed):
    layers, heads, t = 4, 3, 11 + seed
    scores = _random_scores(layers, heads, t, seed)
    p_logit = [float(v) for v in torch.linspace(-1.0, 1.0, layers)]
    soft_ref, hard_ref = official_masks(scores, p_logit)
    maps = [torch.softmax(s, dim=-1).unsqueeze(0) for s in scores]  # (1, H, T, T) probabilities
    pad = torch.ones(1, t, dtype=torch.bool)
    logits = -torch.tensor(p_logit)  # θ = -p_logit
    soft = official_concrete_backtrack(maps, pad, logits, hard=False, min_keep=1)
    hard = official_concrete_backtrack(maps, pad, logits, hard=True, min_keep=1)
    for a, b in zip(soft.keep, soft_ref, strict=True):
        torch.testing.assert_close(a[0].double(), b, atol=2e-4, rtol=0)
    # hard masks: identical except where the soft mask sits within float error of 0.5
    for a, b, sref in zip(hard.keep, hard_ref, soft_ref, strict=True):
        differ = a[0].double() != b
        assert not (differ & ((sref - 0.5).abs() > 1e-3)).any()


def test_nested_prefix_kept_floor_and_padding():
    torch.manual_seed(1)
    maps = torch.softmax(torch.randn(3, 2, 2, 9, 9) * 2, dim=-1)
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[1, 3:] = False  # a 3-token input
    bt = official_concrete_backtrack(maps, pad, torch.full((3,), 8.0), min_keep=4)  # drop nearly all
    for upper, lower in zip(bt.keep[1:], bt.keep[:-1], strict=True):
        assert not (upper & ~lower).any()
    for k in bt.keep[:-1]:
        assert k[:, 0].all() and not (k & ~pad).any()
        assert k.sum(1).tolist()[1] == 3 and k.sum(1).tolist()[0] >= 4  # the floor
    full = official_concrete_backtrack(maps, pad, torch.full((3,), -8.0))
    assert all(torch.equal(k, pad) for k in full.keep[:-1])


def test_padded_batch_equals_single_samples():
    torch.manual_seed(2)
    maps = torch.softmax(torch.randn(3, 3, 2, 10, 10) * 2, dim=-1)
    pad = torch.ones(3, 10, dtype=torch.bool)
    pad[1, 6:] = False
    pad[2, 4:] = False
    maps = maps.masked_fill(~pad[None, :, None, None, :], 0.0)
    maps = maps / maps.sum(-1, keepdim=True)
    logits = torch.tensor([0.3, -0.2, 0.1])
    batch = official_concrete_backtrack(maps, pad, logits)
    for i in range(3):
        n = int(pad[i].sum())
        single = official_concrete_backtrack(maps[:, i : i + 1, :, :n, :n], pad[i : i + 1, :n], logits)
        for kb, ks in zip(batch.keep, single.keep, strict=True):
            assert torch.equal(kb[i, :n], ks[0])


@pytest.mark.parametrize("build", [tiny_vit, tiny_bert])
def test_remove_equals_mask_and_soft_masks_train(build):
    model = build()
    inputs = text_batch() if build is tiny_bert else {"pixel_values": torch.randn(3, 3, 32, 32)}
    th = OfficialConcrete(3, init=0.5).eval()
    with torch.no_grad():
        removed = SparseClassifier(model, SttabtReducer(thresholds=th))(**inputs)
        masked = SparseClassifier(model, SttabtReducer(thresholds=th), mode="mask")(**inputs)
    torch.testing.assert_close(removed.logits, masked.logits, atol=1e-5, rtol=0)
    assert (removed.retention < 1).any()
    th.train()
    out = SparseClassifier(model, SttabtReducer(thresholds=th), mode="mask")(**inputs)
    assert all(k.dtype.is_floating_point for k in out.keep)
    (out.logits.sum() + out.retention.mean() + th.regularizer()).backward()
    assert th.logits.grad is not None and th.logits.grad.abs().sum() > 0


def test_regularizer_pulls_toward_init():
    th = OfficialConcrete(2, init=0.5)
    assert float(th.regularizer()) == 0.0
    with torch.no_grad():
        th.logits.add_(1.0)
    assert float(th.regularizer()) == pytest.approx(1e-3 * 2)
    th.set_init()
    assert float(th.regularizer()) == 0.0


def test_onnx_export_matches_pytorch(tmp_path):
    from sttabt_edge.export.onnx import export_onnx
    from sttabt_edge.method.approxnet import build_approxnet
    from sttabt_edge.verify import reference_reducer

    model = tiny_bert()
    th = OfficialConcrete(3, init=0.3).eval()
    reducer = SttabtReducer(build_approxnet(model, 4, "random").eval(), thresholds=th)
    tok = tmp_path / "tokenizer.json"
    _tiny_tokenizer(tok)
    path = export_onnx(
        SparseClassifier(model, reducer),
        tmp_path / "c.onnx",
        example_inputs=text_batch(),
        tokenizer_file=tok,
        simplify=False,
    ).path
    import onnxruntime as ort

    from sttabt_edge.export.graph import example_args
    from sttabt_edge.export.metadata import read_metadata

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = text_batch(seed=3)
    names = ("input_ids", "attention_mask", "token_type_ids")
    feed = {n: v.numpy() for n, v in zip(names, example_args("bert", batch), strict=True)}
    logits, kept = sess.run(None, feed)
    with torch.no_grad():
        ref = SparseClassifier(model, reducer)(**batch)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)
    assert np.array_equal(kept, ref.n_in.numpy())
    meta = read_metadata(path)
    assert meta["sttabt"]["concrete"] == "official" and math.isclose(meta["sttabt"]["temperature"], 0.1)
    reducer.approx.save(tmp_path / "approx")  # verify rebuilds the official variant from the metadata
    rebuilt = reference_reducer(meta, model, approx_dir=tmp_path / "approx")
    assert type(rebuilt.thresholds) is OfficialConcrete and rebuilt.thresholds.temperature == 0.1
    with torch.no_grad():
        again = SparseClassifier(model, rebuilt.eval())(**batch)
    torch.testing.assert_close(again.logits, ref.logits, atol=1e-5, rtol=0)


def _tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(90)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
