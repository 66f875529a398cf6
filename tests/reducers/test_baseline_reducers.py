"""Baseline reducers (EViT-style top-k, LTP, ToMe) on tiny random HF models."""

import math

import pytest
import torch
from tiny import VISION, tiny_bert
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from sttabt_edge.compat import model_parts
from sttabt_edge.method.sparse import dense_forward, online_forward
from sttabt_edge.models.adapter import classify, embed
from sttabt_edge.reducers import (
    DenseReducer,
    LtpReducer,
    SttabtReducer,
    TomeReducer,
    TopkReducer,
    make_reducer,
)
from sttabt_edge.reducers.tome import bipartite_soft_matching, merge_wavg, tome_schedule, tome_step
from sttabt_edge.reducers.topk import evit_schedule
from sttabt_edge.sparse_model import SparseClassifier

assert_close = torch.testing.assert_close
SCHEDULE = [0.7, 0.5, 0.3]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**VISION, attn_implementation="eager")).eval()


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(1)
    model = DeiTForImageClassificationWithTeacher(DeiTConfig(**VISION, attn_implementation="eager")).eval()
    with torch.no_grad():  # HF inits both prefix tokens to zero; random ones make them distinct
        model.deit.embeddings.cls_token.normal_()
        model.deit.embeddings.distillation_token.normal_()
    return model


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(seed=2)


def pixels(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def text(seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded sequences of real lengths 20, 13 and 6."""
    ids = torch.randint(5, 100, (3, 20), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(params=["vit", "deit", "bert"])
def case(request):
    """(model, inputs) for every family; BERT with padding."""
    model = request.getfixturevalue(request.param)
    return model, text() if request.param == "bert" else pixels()


def run(model, reducer, inputs, mode="remove"):
    with torch.no_grad():
        return SparseClassifier(model, reducer, mode)(**inputs)


def real_lengths(out) -> list[int]:
    return out.pad_mask.sum(1).tolist()


# ---------------------------------------------------------------- no-op settings are the dense model


@pytest.mark.parametrize(
    "reducer,mode",
    [
        (lambda: TopkReducer(keep_ratio=1.0), "remove"),
        (lambda: TopkReducer(keep_ratio=1.0), "mask"),
        (lambda: TomeReducer(r=0), "remove"),
        (lambda: LtpReducer(thresholds=float("-inf"), num_layers=3), "remove"),
        (lambda: LtpReducer(thresholds=float("-inf"), num_layers=3), "mask"),
    ],
    ids=["topk", "topk-mask", "tome", "ltp", "ltp-mask"],
)
def test_noop_settings_reproduce_dense_logits(case, reducer, mode):
    model, inputs = case
    out = run(model, reducer(), inputs, mode)
    with torch.no_grad():
        assert_close(out.logits, model(**inputs).logits, atol=1e-5, rtol=0)
    assert (out.retention == 1).all()


# ---------------------------------------------------------------- top-k (EViT-style)


@pytest.mark.parametrize("ratio", [0.5, SCHEDULE])
def test_topk_counts_follow_real_length_and_keep_prefix(case, ratio):
    model, inputs = case
    out = run(model, TopkReducer(keep_ratio=ratio), inputs)
    ratios = ratio if isinstance(ratio, list) else [ratio] * 3
    prefix = model_parts(model).num_prefix_tokens
    for layer, r in enumerate(ratios):
        want = [max(prefix, math.ceil(r * n)) for n in real_lengths(out)]
        assert out.keep[layer + 1].sum(1).tolist() == want
        assert (out.keep[layer + 1] <= out.keep[layer]).all()  # dropped tokens never come back
    for keep in out.keep:
        assert keep[:, :prefix].all()
        assert not (keep & ~out.pad_mask).any()
    counts = torch.stack([k.sum(1) for k in out.keep[:-1]], 1)  # (B, L) tokens entering each layer
    assert torch.equal(out.n_in, counts.to(out.n_in.dtype))


def test_topk_keeps_the_tokens_cls_attends_to_most(vit):
    inputs = pixels(2)
    parts = model_parts(vit)
    with torch.no_grad():
        x, pad = embed(parts, inputs)
        attn0 = dense_forward(parts, x, pad, need_attn=True).attentions[0]  # (B, H, N, N)
    out = run(vit, TopkReducer(keep_ratio=0.5, prune_layers=[0]), inputs)
    score = attn0[:, :, 0].mean(1)[:, 1:]  # (B, N - 1), CLS row of layer 0 over patches
    want = score.topk(math.ceil(0.5 * 17) - 1, dim=1).indices + 1
    for b in range(2):
        assert sorted(out.keep[1][b].nonzero().flatten().tolist()) == [0] + sorted(want[b].tolist())
    assert torch.equal(out.keep[1], out.keep[3])  # only layer 0 prunes


def test_topk_padded_batch_equals_unpadded_runs(bert):
    inputs = text()
    reducer = TopkReducer(keep_ratio=SCHEDULE)
    batch = run(bert, reducer, inputs)
    for i, n in enumerate(inputs["attention_mask"].sum(1).tolist()):
        single = run(bert, reducer, {"input_ids": inputs["input_ids"][i : i + 1, :n]})
        assert_close(batch.logits[i : i + 1], single.logits, atol=1e-5, rtol=0)
        assert torch.equal(batch.n_in[i], single.n_in[0])
        for a, b in zip(batch.keep, single.keep, strict=True):
            assert torch.equal(a[i, :n], b[0])


@pytest.mark.parametrize("ratio", [0.4, SCHEDULE])
def test_topk_mask_mode_equals_remove(case, ratio):
    model, inputs = case
    removed = run(model, TopkReducer(keep_ratio=ratio), inputs, "remove")
    masked = run(model, TopkReducer(keep_ratio=ratio), inputs, "mask")
    assert_close(masked.logits, removed.logits, atol=1e-5, rtol=0)
    for a, b in zip(removed.keep, masked.keep, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(removed.n_in, masked.n_in.to(removed.n_in.dtype))


def test_evit_schedule_compounds():
    assert evit_schedule(0.5, [1, 2], 4) == [1.0, 0.5, 0.25, 0.25]


# ---------------------------------------------------------------- LTP


def test_ltp_higher_thresholds_keep_fewer_tokens(case):
    model, inputs = case
    means = [
        run(model, LtpReducer(t, num_layers=3), inputs).retention.mean().item() for t in (0.0, 0.6, 1.0, 2.0)
    ]
    assert means[0] == 1.0
    assert all(a >= b for a, b in zip(means, means[1:], strict=False)) and means[-1] < means[0]


def test_ltp_hard_mask_mode_equals_remove(case):
    model, inputs = case
    reducer = LtpReducer([0.8, 1.0, 1.0]).eval()
    removed = run(model, reducer, inputs, "remove")
    masked = run(model, reducer, inputs, "mask")
    assert removed.retention.min() < 1  # it prunes
    assert_close(masked.logits, removed.logits, atol=1e-5, rtol=0)
    for a, b in zip(removed.keep, masked.keep, strict=True):
        assert torch.equal(a, b)
    prefix = model_parts(model).num_prefix_tokens
    assert all(k[:, :prefix].all() for k in removed.keep)
    assert (removed.keep[-1].sum(1) >= prefix + 1).all()  # min_keep=1 real token


def test_ltp_soft_mask_gradient_reaches_thresholds(bert):
    reducer = LtpReducer([0.8, 1.0, 1.0], soft=True)
    out = SparseClassifier(bert, reducer, mode="mask")(**text())
    (out.logits.square().sum() + out.retention.sum()).backward()
    grad = reducer.thresholds.grad
    assert torch.isfinite(grad).all()
    assert (grad[:-1].abs() > 0).all()  # θ of the last layer prunes after it: no effect on logits
    assert 0 < out.retention[:, 1:].mean() < 1  # soft retention is differentiable and below 1


def test_ltp_calibrate_reaches_target_retention(case):
    """On the calibration batch the target is met to rounding: θ_l sits midway between two
    consecutive importances, so the re-run makes the same decisions; the pooled count is
    round(target * total), i.e. within half a token (we allow one)."""
    model, inputs = case
    parts = model_parts(model)
    reducer = LtpReducer(0.0, num_layers=3)
    theta = reducer.calibrate(parts, inputs, SCHEDULE)
    assert theta.shape == (3,) and torch.isfinite(theta).all()
    out = run(model, reducer, inputs)
    total = out.pad_mask.sum().item()
    for layer, r in enumerate(SCHEDULE):
        assert abs(out.keep[layer + 1].sum().item() - r * total) <= 1.0


# ---------------------------------------------------------------- ToMe


def test_bipartite_matching_merges_identical_pair_with_size_weights():
    metric = torch.eye(7).unsqueeze(0)  # (1, 7, 7): all orthogonal ...
    metric[0, 2] = metric[0, 5] = torch.tensor([0, 0, 1.0, 0, 0, 1.0, 0])  # ... but A slot 2 == B slot 5
    x = torch.randn(1, 7, 3)
    size = torch.tensor([[1.0, 1, 2, 1, 1, 3, 1]])
    merge = bipartite_soft_matching(metric, r=1, num_prefix_tokens=1)
    assert merge.keep_idx.tolist() == [[0, 1, 3, 4, 5, 6]]
    merged, new_size = merge_wavg(merge, x, size)
    assert new_size.tolist() == [[1.0, 1, 1, 1, 5, 1]]
    assert_close(merged[0, 4], (2 * x[0, 2] + 3 * x[0, 5]) / 5)  # slot 5 now sits at index 4
    assert_close(merged[0, [0, 1, 2, 3, 5]], x[0, [0, 1, 3, 4, 6]])
    assert_close(merge(x, "mean")[0, 4], (x[0, 2] + x[0, 5]) / 2)


@pytest.mark.parametrize("num_prefix", [1, 2])
def test_bipartite_matching_never_merges_prefix(num_prefix):
    metric = torch.eye(8).unsqueeze(0)
    metric[0, 1] = metric[0, 0]  # prefix slot 0 (A) == slot 1 (B, prefix when P=2)
    metric[0, 2] = metric[0, 1]  # slot 2 (A) == slot 1
    metric[0, 4] = metric[0, 7] * 0.9 + metric[0, 4] * 0.1  # a weaker legal pair: 4 (A) -> 7 (B)
    x = torch.randn(1, 8, 3)
    merge = bipartite_soft_matching(metric, r=1, num_prefix_tokens=num_prefix)
    out, size = merge_wavg(merge, x, torch.ones(1, 8))
    assert_close(out[0, :num_prefix], x[0, :num_prefix])  # untouched, still in front
    assert size[0, :num_prefix].tolist() == [1.0] * num_prefix
    removed = sorted(set(range(8)) - set(merge.keep_idx[0].tolist()))
    assert removed == ([2] if num_prefix == 1 else [4])


def test_bipartite_matching_keeps_padding_apart():
    metric = torch.eye(8).unsqueeze(0)
    metric[0, 6] = metric[0, 3]  # padding A slot 6 == real B slot 3
    metric[0, 4] = metric[0, 7]  # real A slot 4 == padding B slot 7
    metric[0, 2] = metric[0, 1] * 0.8 + metric[0, 2] * 0.2  # the best real pair: 2 (A) -> 1 (B)
    valid = torch.tensor([[True] * 6 + [False] * 2])
    x, size = torch.randn(1, 8, 3), torch.ones(1, 8)
    # A = {0 prefix, 2, 4, 6 padding}; 4 may only join a real B (similarity 0): merged before padding goes
    merge = bipartite_soft_matching(metric, r=3, num_prefix_tokens=1, valid=valid)
    out, new_size = merge_wavg(merge, x, size)
    new_valid = valid[0, merge.keep_idx[0]]
    assert new_size[0][new_valid].sum().item() == 6  # real sizes preserved
    removed = set(range(8)) - set(merge.keep_idx[0].tolist())
    assert removed == {2, 4, 6}  # real tokens merge, the padding token is dropped, not merged
    slot3 = merge.keep_idx[0].tolist().index(3)
    assert_close(out[0, slot3], x[0, 3])  # padding never flowed into a real token


def test_tome_schedule_semantics():
    assert tome_schedule(17, 3, 1, r=2) == [2, 2, 2]
    assert tome_schedule(17, 3, 1, keep_ratio=0.5) == [3, 3, 3]  # round(0.5 * 17 / 3)
    assert tome_schedule(17, 3, 1, keep_ratio=SCHEDULE) == [5, 3, 3]  # 17 -> 12 -> 9 -> 6 (ceil)
    assert tome_schedule(5, 2, 1, r=10) == [2, 1]  # clamped to non-prefix A slots


def test_tome_ratio_schedule_merges_more_as_ratios_fall():
    """Ratios below what a layer can merge carry over to the next layers (count after the clamp).

    Before, the running count ignored the clamp: q = 0.02 gave [25, 1, 0, 0, 0, 0], fewer merges
    than q = 0.5, so retention rose again as q fell and a bisection on q stalled above ToMe's floor."""
    most = tome_schedule(52, 6, 1, r=1000)
    assert most == [25, 13, 6, 3, 2, 1]
    totals = []
    for q in (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.02):
        totals.append(sum(tome_schedule(52, 6, 1, keep_ratio=[q ** (layer + 1) for layer in range(6)])))
    assert totals == sorted(totals) and totals[-1] == sum(most)
    assert tome_schedule(52, 6, 1, keep_ratio=[0.02 ** (layer + 1) for layer in range(6)]) == most


def test_tome_bisection_reaches_its_floor_and_flags_unreachable(bert):
    from sttabt_edge.train.sweep import mean_retention, training_free

    inputs = text()
    floor = mean_retention(bert, TomeReducer(r=1000), inputs)  # every layer merges the most it can
    reducer, reached = training_free("tome", bert, None, 0.05, inputs)  # below ToMe's floor
    assert reached == pytest.approx(floor) and mean_retention(bert, reducer, inputs) == pytest.approx(floor)
    target = (1.0 + floor) / 2
    reducer, reached = training_free("tome", bert, None, target, inputs)
    assert abs(reached - target) < 0.1 and reached == pytest.approx(mean_retention(bert, reducer, inputs))


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_tome_count_drops_by_r_and_prefix_survives(request, name):
    model = request.getfixturevalue(name)
    out = run(model, TomeReducer(r=3), pixels())
    n = 17 if name == "vit" else 18
    assert out.n_in.tolist() == [[n, n - 3, n - 6]] * 3
    prefix = model_parts(model).num_prefix_tokens
    assert all(k[:, :prefix].all() for k in out.keep)
    assert out.keep[-1].sum(1).tolist() == [n - 9] * 3


def test_tome_sizes_sum_to_real_tokens_with_padding(bert):
    parts, inputs = model_parts(bert), text()
    step, states = tome_step([4, 3, 3], parts.num_prefix_tokens), []

    def record(layer, state, out):
        new = step(layer, state, out)
        states.append(new)
        return new

    with torch.no_grad():
        x, pad = embed(parts, inputs)
        res = online_forward(parts, x, pad, record, need_attn=False, need_keys=True, size_bias=True)
        ref = run(bert, TomeReducer(r=[4, 3, 3]), inputs)
    assert_close(classify(parts, res.prefix_hidden), ref.logits, atol=0, rtol=0)
    n_real = pad.sum(1).to(torch.float32)
    for s in states:
        assert_close((s.size * s.valid).sum(1), n_real)
        assert (s.pos[:, 0] == 0).all() and (s.size[:, 0] == 1).all()
    assert states[-1].hidden.shape[1] == 20 - 10


def test_tome_rejects_mask_mode(vit):
    with pytest.raises(NotImplementedError, match="ToMe"):
        run(vit, TomeReducer(r=1), pixels(1), "mask")


# ---------------------------------------------------------------- factory


def test_make_reducer():
    assert isinstance(make_reducer("dense"), DenseReducer)
    assert isinstance(make_reducer("sttabt", keep_ratio=0.5), SttabtReducer)
    assert isinstance(make_reducer("topk", keep_ratio=0.5), TopkReducer)
    assert make_reducer("ltp", thresholds=0.5, num_layers=4).thresholds.shape == (4,)
    assert isinstance(make_reducer("ToMe", r=2), TomeReducer)
    with pytest.raises(ValueError, match="unknown reducer"):
        make_reducer("evit")
