"""The sparse forward against the dense HF model, on tiny random models."""

import pytest
import torch
from tiny import text_batch, tiny_bert, tiny_deit_distilled, tiny_vit

from sttabt_edge.compat import model_parts
from sttabt_edge.errors import InputError
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.method.sparse import KeepPlan, plan_forward
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers import DenseReducer, SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier, patch

assert_close = torch.testing.assert_close
VISION_MODELS = [tiny_vit, tiny_deit_distilled]


def _pixels(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


@pytest.mark.parametrize("build", VISION_MODELS)
def test_vision_keep_ratio_one_is_dense(build):
    model, inputs = build(), _pixels()
    with torch.no_grad():
        ref = model(**inputs).logits
        for reducer in (SttabtReducer(keep_ratio=1.0), DenseReducer()):
            assert_close(SparseClassifier(model, reducer)(**inputs).logits, ref, atol=1e-5, rtol=0)


def test_text_keep_ratio_one_is_dense_with_padding():
    model, inputs = tiny_bert(), text_batch()
    with torch.no_grad():
        out = SparseClassifier(model, SttabtReducer(keep_ratio=1.0))(**inputs)
        assert_close(out.logits, model(**inputs).logits, atol=1e-5, rtol=0)
    assert out.n_in[:, 0].tolist() == [20, 12, 5]


@pytest.mark.parametrize("build", [tiny_vit, tiny_deit_distilled, tiny_bert])
@pytest.mark.parametrize("ratio", [0.7, 0.4, [0.9, 0.6, 0.3], [0.5, 0.8, 0.3]])
def test_removal_equals_mask_mode(build, ratio):
    model = build()
    inputs = text_batch() if build is tiny_bert else _pixels(3)
    with torch.no_grad():
        removed = SparseClassifier(model, SttabtReducer(keep_ratio=ratio), mode="remove")(**inputs)
        masked = SparseClassifier(model, SttabtReducer(keep_ratio=ratio), mode="mask")(**inputs)
    assert_close(removed.logits, masked.logits, atol=1e-5, rtol=0)
    for a, b in zip(removed.keep, masked.keep, strict=True):
        assert torch.equal(a, b.bool())
    assert (removed.n_in <= removed.n_in[:, :1]).all()


@pytest.mark.parametrize("build", VISION_MODELS)
@pytest.mark.parametrize("ratio", [0.7, 0.3, [0.9, 0.5, 0.2]])
def test_vit_topk_plans_are_exact(build, ratio):
    """Count-nested ViT top-k keeps exactly the static size in every sample and layer, which lets
    remove mode skip the padding bias (``KeepPlan.exact``); the shortcut gives the same logits."""
    model, inputs = build(), _pixels(3)
    parts, reducer = model_parts(model), SttabtReducer(keep_ratio=ratio, nesting="count")
    with torch.no_grad():
        x, pad = embed(parts, inputs)
        bt = reducer.backtrack(parts, inputs, x, pad)
        assert reducer.exact_counts(parts)
        for k, size in zip(bt.keep, bt.sizes, strict=True):
            assert k.sum(1).tolist() == [size] * 3
        fast = plan_forward(parts, x, pad, KeepPlan(bt.keep, bt.sizes, exact=True, same=bt.same))
        general = plan_forward(parts, x, pad, KeepPlan(bt.keep, bt.sizes))
    assert_close(fast.prefix_hidden, general.prefix_hidden, atol=1e-6, rtol=0)
    assert not SttabtReducer(thresholds=ConcreteThresholds(3)).exact_counts(parts)
    assert not SttabtReducer(keep_ratio=ratio).exact_counts(parts), "union counts depend on the data"
    assert not reducer.exact_counts(model_parts(tiny_bert()))


@pytest.mark.parametrize(
    ("ratio", "nesting"), [(0.4, "count"), ([0.5, 0.8, 0.3], "count"), ([0.3, 1.0, 0.2], "union")]
)
def test_text_same_layers_skip_compaction(ratio, nesting):
    """On padded text, layers whose set equals the next one's (KeepPlan.same) skip compaction and
    gathers; the result equals the general path that compacts every layer."""
    model, inputs = tiny_bert(), text_batch()
    parts, reducer = model_parts(model), SttabtReducer(keep_ratio=ratio, nesting=nesting)
    with torch.no_grad():
        x, pad = embed(parts, inputs)
        bt = reducer.backtrack(parts, inputs, x, pad)
        assert any(bt.same)
        fast = plan_forward(parts, x, pad, KeepPlan(bt.keep, bt.sizes, same=bt.same))
        general = plan_forward(parts, x, pad, KeepPlan(bt.keep, bt.sizes))
    assert_close(fast.prefix_hidden, general.prefix_hidden, atol=1e-6, rtol=0)
    assert torch.equal(fast.n_in, general.n_in)


@pytest.mark.parametrize("ratio", [0.4, [0.9, 0.6, 0.3]])
def test_static_bounds_equal_mask_mode_on_padded_text(ratio):
    """Static compact bounds (the LiteRT graphs' shapes) leave slots of tokens a layer does not
    keep inside each depth-ordered prefix, and padding after it; the per-layer padding bias must
    hide them, so the result equals mask mode, and the batch-maximum sizes of the ONNX path."""
    model, inputs = tiny_bert(), text_batch()
    parts, reducer = model_parts(model), SttabtReducer(keep_ratio=ratio)
    with torch.no_grad():
        x, pad = embed(parts, inputs)
        bt = reducer.backtrack(parts, inputs, x, pad)
        static = reducer.keep_plan(parts, bt, static=True)
        assert static.sizes is not None and static.sizes[0] > int(bt.keep[0].sum(1).max())
        bounded = plan_forward(parts, x, pad, static)
        batch_max = plan_forward(parts, x, pad, reducer.keep_plan(parts, bt))
        masked = plan_forward(parts, x, pad, static, mode="mask")
    assert_close(bounded.prefix_hidden, masked.prefix_hidden, atol=1e-5, rtol=0)
    assert_close(batch_max.prefix_hidden, masked.prefix_hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_single_padded_sample_skips_the_bias_and_equals_unpadded(ratio):
    """At batch 1 removal sizes every layer to the sample's own count (no padding bias); a padded
    single sample must still equal the same text unpadded, and mask mode."""
    model, inputs = tiny_bert(), text_batch()
    sc = SparseClassifier(model, SttabtReducer(keep_ratio=ratio))
    one = {k: v[1:2] for k, v in inputs.items()}  # 12 real tokens of 20
    with torch.no_grad():
        padded = sc(**one)
        unpadded = sc(input_ids=one["input_ids"][:, :12])
        masked = SparseClassifier(model, SttabtReducer(keep_ratio=ratio), mode="mask")(**one)
    assert_close(padded.logits, unpadded.logits, atol=1e-5, rtol=0)
    assert_close(padded.logits, masked.logits, atol=1e-5, rtol=0)
    assert torch.equal(padded.n_in, unpadded.n_in)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25])
def test_padded_batch_equals_unpadded_runs(ratio):
    model, inputs = tiny_bert(), text_batch()
    sc = SparseClassifier(model, SttabtReducer(keep_ratio=ratio))
    with torch.no_grad():
        batch = sc(**inputs)
        for i, n in enumerate(inputs["attention_mask"].sum(1).tolist()):
            single = sc(input_ids=inputs["input_ids"][i : i + 1, :n])
            assert_close(batch.logits[i : i + 1], single.logits, atol=1e-5, rtol=0)
            assert torch.equal(batch.n_in[i], single.n_in[0])


@pytest.mark.parametrize("build", VISION_MODELS)
def test_prefix_tokens_never_dropped(build):
    model = build()
    num_prefix = 2 if build is tiny_deit_distilled else 1
    with torch.no_grad():
        out = SparseClassifier(model, SttabtReducer(keep_ratio=0.1))(**_pixels(4))
    for k in out.keep:
        assert k[:, :num_prefix].all()
    assert out.keep[-1].sum(1).tolist() == [num_prefix] * 4  # the head reads only the prefix
    assert (out.n_out[:, -1] == num_prefix).all()  # the last layer computes only those rows


def test_keep_masks_are_nested_and_sparse_really_shrinks():
    model = tiny_vit()
    with torch.no_grad():
        out = SparseClassifier(model, SttabtReducer(keep_ratio=[1.0, 0.6, 0.3], nesting="count"))(**_pixels())
        union = SparseClassifier(model, SttabtReducer(keep_ratio=[1.0, 0.6, 0.3]))(**_pixels())
    for keep in (out.keep, union.keep):
        for upper, lower in zip(keep[1:], keep[:-1], strict=True):
            assert not (upper & ~lower).any()
    assert out.n_in[0].tolist() == [17, 11, 6]  # ceil(ratio * 17)
    assert_close(out.retention[0], torch.tensor([1.0, 11 / 17, 6 / 17]))
    # union: topk(ceil(r * 17)) ∪ the next layer's set, between max(k, next) and k + next
    n = union.n_in[0].tolist()
    assert n[0] == 17 and 6 <= n[2] <= 6 + 1 and max(11, n[2]) <= n[1] <= 11 + n[2]


@pytest.mark.parametrize("build", [tiny_vit, tiny_bert])
def test_concrete_thresholds_remove_equals_mask(build):
    model = build()
    inputs = text_batch() if build is tiny_bert else _pixels(3)
    th = ConcreteThresholds(3, init=0.0).eval()
    with torch.no_grad():
        removed = SparseClassifier(model, SttabtReducer(thresholds=th))(**inputs)
        masked = SparseClassifier(model, SttabtReducer(thresholds=th), mode="mask")(**inputs)
    assert_close(removed.logits, masked.logits, atol=1e-5, rtol=0)
    assert (removed.retention < 1).any()


def test_mask_mode_trains_model_and_thresholds():
    model = tiny_vit().train()
    th = ConcreteThresholds(3, init=0.0).train()
    out = SparseClassifier(model, SttabtReducer(thresholds=th), mode="mask")(**_pixels())
    (out.logits.sum() + out.retention.mean()).backward()
    assert th.logits.grad is not None and th.logits.grad.abs().sum() > 0
    assert model.classifier.weight.grad is not None


def test_patch_is_undoable():
    model, inputs = tiny_vit(), _pixels()
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(**inputs).logits
        handle = patch(model, SttabtReducer(keep_ratio=0.15))
        pruned = model(**inputs)
        assert pruned.retention.mean() < 0.5
        assert set(model.state_dict()) == keys
        handle.remove()
        assert_close(model(**inputs).logits, ref, atol=0, rtol=0)
        with patch(model, SttabtReducer(keep_ratio=1.0)):
            assert_close(model(**inputs).logits, ref, atol=1e-5, rtol=0)
        assert type(model(**inputs)).__name__ == "ImageClassifierOutput"


def test_oracle_beats_random_keep_on_fidelity():
    """Back-tracking the model's own attention keeps logits closer to dense than a random keep set."""
    model, inputs = tiny_vit(), _pixels(8)
    with torch.no_grad():
        ref = model(**inputs).logits
        oracle = SparseClassifier(model, SttabtReducer(keep_ratio=0.5))(**inputs).logits
        errs = []
        for seed in range(5):
            g = torch.Generator().manual_seed(seed)
            rand_attn = torch.softmax(torch.randn(3, 8, 4, 17, 17, generator=g) * 5, -1)

            class Rand(torch.nn.Module):
                def attentions(self, _inputs, a=rand_attn):
                    return a

            rand = SparseClassifier(model, SttabtReducer(approx=Rand(), keep_ratio=0.5))(**inputs).logits
            errs.append((rand - ref).abs().mean())
    assert (oracle - ref).abs().mean() < torch.stack(errs).mean()


class TestBadInput:
    def test_wrong_image_size(self):
        sc = SparseClassifier(tiny_vit(), SttabtReducer(keep_ratio=0.5))
        with pytest.raises(InputError, match=r"wrong image size.*\(3, 32, 32\)"):
            sc(pixel_values=torch.randn(1, 3, 64, 64))
        with pytest.raises(InputError, match="wrong image size"):
            sc(pixel_values=torch.randn(1, 1, 32, 32))

    def test_empty_batch(self):
        with pytest.raises(InputError, match="empty batch"):
            SparseClassifier(tiny_vit(), DenseReducer())(pixel_values=torch.randn(0, 3, 32, 32))
        with pytest.raises(InputError, match="empty batch"):
            SparseClassifier(tiny_bert(), DenseReducer())(input_ids=torch.zeros(0, 4, dtype=torch.long))

    def test_text_longer_than_positions(self):
        with pytest.raises(InputError, match="longer than the model allows"):
            SparseClassifier(tiny_bert(), DenseReducer())(input_ids=torch.ones(1, 65, dtype=torch.long))

    def test_left_padding_rejected(self):
        with pytest.raises(InputError, match="right padding"):
            SparseClassifier(tiny_bert(), DenseReducer())(
                input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]])
            )

    def test_missing_inputs_and_bad_mode(self):
        with pytest.raises(InputError, match="pixel_values"):
            SparseClassifier(tiny_vit(), DenseReducer())(input_ids=torch.ones(1, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="mode"):
            SparseClassifier(tiny_vit(), SttabtReducer(keep_ratio=0.5), mode="soft")(**_pixels())

    def test_reducer_needs_exactly_one_rule(self):
        with pytest.raises(ValueError, match="exactly one"):
            SttabtReducer()


@pytest.mark.parametrize("heads", [1, 4])
def test_dense_forward_attentions_match_hf_for_one_and_many_heads(heads):
    """One head (the default ApproxNet) takes its own split-heads path (an unsqueeze, no reshape):
    its logits and probabilities must still be the HF model's."""
    from transformers import BertConfig, BertForSequenceClassification

    from sttabt_edge.method.sparse import dense_forward

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model, inputs = BertForSequenceClassification(cfg).eval(), text_batch()
    parts = model_parts(model)
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        x, pad = embed(parts, inputs)
        res = dense_forward(parts, x, pad, need_attn=True)
        assert_close(SparseClassifier(model, DenseReducer())(**inputs).logits, ref.logits, atol=1e-5, rtol=0)
    real = pad[:, None, :, None] & pad[:, None, None, :]  # HF's rows of padding queries differ: unused
    for ours, theirs in zip(res.attentions, ref.attentions, strict=True):
        assert ours.shape == theirs.shape == (3, heads, 20, 20)
        assert_close(ours * real, theirs * real, atol=1e-6, rtol=0)
