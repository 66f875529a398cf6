"""Back-tracking on hand-built attention maps with answers worked out by hand."""

import pytest
import torch

from sttabt_edge.method import backtrack
from sttabt_edge.method.backtrack import retention, row_weights, same_as_next, topk_backtrack
from sttabt_edge.method.concrete import ConcreteThresholds, concrete_backtrack, retention_loss
from sttabt_edge.method.tokens import compact_indices, depth_order, rank_topk_mask


def _attn(rows_per_layer: list[dict[int, list[float]]], n: int = 5) -> torch.Tensor:
    """(L, 1, 1, N, N) with the given query rows; other rows uniform."""
    layers = []
    for rows in rows_per_layer:
        a = torch.full((n, n), 1.0 / n)
        for q, row in rows.items():
            a[q] = torch.tensor(row)
        layers.append(a)
    return torch.stack(layers)[:, None, None]


# Layer 2 (top): CLS attends mostly to token 1. Layer 1: token 0 -> 3, token 1 -> 2.
# Layer 0 with outputs {0, 1, 3} (p=0): scores (row0+row1+row3)/3 -> token 2 (0.6/3) beats token 4 (0.4/3).
A2 = {0: [0.1, 0.5, 0.2, 0.1, 0.1]}
A1 = {0: [0.1, 0.1, 0.1, 0.6, 0.1], 1: [0.2, 0.2, 0.5, 0.05, 0.05]}
A0 = {0: [0.2] * 5, 1: [0.1, 0.1, 0.1, 0.6, 0.1], 2: [0.1, 0.1, 0.1, 0.2, 0.5], 3: [0.1, 0.1, 0.3, 0.4, 0.1]}
PAD = torch.ones(1, 5, dtype=torch.bool)


def _sets(keep: list[torch.Tensor]) -> list[set[int]]:
    return [set(torch.nonzero(k[0]).flatten().tolist()) for k in keep]


def test_hand_built_union_p0_sets_grow_toward_the_input():
    # union, p=0, k = ceil(0.4 * 5) = 2 per layer (floor off). Top: CLS row of A2 -> {1, 2} ∪ {0}.
    # Layer 1, rows {0, 1, 2} weigh 1/3: (A1[0] + A1[1] + uniform) / 3 = [.5, .5, .8, .85, .35] / 3
    # -> {3, 2} ∪ {0, 1, 2}. Layer 0, rows {0..3} weigh 1/4: [.5, .5, .7, 1.4, .9] / 4 -> {3, 4} ∪ ...
    bt = topk_backtrack(_attn([A0, A1, A2]), PAD, 0.4, num_prefix_tokens=1, p=0.0, min_keep=1)
    assert _sets(bt.keep) == [{0, 1, 2, 3, 4}, {0, 1, 2, 3}, {0, 1, 2}, {0}]
    torch.testing.assert_close(bt.scores[1][0], torch.tensor([0.5, 0.5, 0.8, 0.85, 0.35]) / 3)
    torch.testing.assert_close(bt.scores[0][0], torch.tensor([0.5, 0.5, 0.7, 1.4, 0.9]) / 4)
    # the earlier counted-in rule keeps the top layer's choice in every layer at one ratio
    count = topk_backtrack(
        _attn([A0, A1, A2]), PAD, 0.4, num_prefix_tokens=1, p=0.0, nesting="count", min_keep=1
    )
    assert _sets(count.keep) == [{0, 1}, {0, 1}, {0, 1}, {0}]


def test_hand_built_union_p1_importance_weighted():
    # p=1: rows weigh imp / |kept|. Top: k=2 -> {1, 2} ∪ {0}, imp (.1, .5, .2) / .8 over {0, 1, 2}.
    # Layer 1 scores = (.125 A1[0] + .625 A1[1] + .25 uniform) / 3; k = ceil(0.2*5) = 1 -> token 2.
    bt = topk_backtrack(_attn([A0, A1, A2]), PAD, [0.4, 0.2, 0.4], num_prefix_tokens=1, p=1.0, min_keep=1)
    expect = (0.125 * torch.tensor(A1[0]) + 0.625 * torch.tensor(A1[1]) + 0.25 * torch.full((5,), 0.2)) / 3
    torch.testing.assert_close(bt.scores[1][0], expect)
    assert _sets(bt.keep)[1:] == [{0, 1, 2}, {0, 1, 2}, {0}]


def test_hand_built_count_rule_p0_and_p1():
    """The counted-in rule (``nesting="count"``), kept for comparison."""
    bt = topk_backtrack(_attn([A0, A1, A2]), PAD, [0.8, 0.6, 0.4], 1, p=0.0, nesting="count", min_keep=1)
    assert _sets(bt.keep) == [{0, 1, 2, 3}, {0, 1, 3}, {0, 1}, {0}]
    torch.testing.assert_close(bt.scores[1][0], torch.tensor([0.15, 0.15, 0.3, 0.325, 0.075]))
    # p=1: rows weigh importance from layer 2 (token 0: 0.1, token 1: 0.5 -> 1/6, 5/6) over 2 rows
    bt = topk_backtrack(_attn([A0, A1, A2]), PAD, [0.8, 0.6, 0.4], 1, p=1.0, nesting="count", min_keep=1)
    assert _sets(bt.keep)[1:] == [{0, 1, 2}, {0, 1}, {0}]
    torch.testing.assert_close(bt.scores[1][0], (torch.tensor(A1[0]) + 5 * torch.tensor(A1[1])) / 12)


def test_min_keep_floor_on_short_inputs():
    """k = ceil(0.3 * 3) = 1 would keep CLS alone; the floor keeps min(n_real, min_keep) tokens."""
    torch.manual_seed(5)
    attn = torch.softmax(torch.randn(3, 2, 2, 6, 6), dim=-1)
    pad = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    for nesting in ("union", "count"):
        bt = topk_backtrack(attn, pad, 0.3, nesting=nesting, min_keep=4)
        for k in bt.keep[:-1]:
            assert k.sum(1).tolist()[0] == 3, "a 3-token input keeps all 3"
            assert k.sum(1).tolist()[1] >= 4
        off = topk_backtrack(attn, pad, 0.3, nesting=nesting, min_keep=1)
        assert off.keep[-2].sum(1).tolist()[0] <= 2
    with pytest.raises(ValueError, match="min_keep"):
        topk_backtrack(attn, pad, 0.3, min_keep=0)


def test_nesting_and_prefix_always_kept():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(4, 3, 2, 12, 12), dim=-1)
    pad = torch.ones(3, 12, dtype=torch.bool)
    pad[1, 9:] = False
    bt = topk_backtrack(attn, pad, 0.3, num_prefix_tokens=2, p=0.1)
    for upper, lower in zip(bt.keep[1:], bt.keep[:-1], strict=True):
        assert not (upper & ~lower).any(), "a layer's inputs must contain its kept outputs"
    for k in bt.keep:
        assert k[:, :2].all(), "prefix tokens are never dropped"
        assert not (k & ~pad).any(), "padding is never kept"


def test_k_from_real_length_per_sample():
    torch.manual_seed(1)
    attn = torch.softmax(torch.randn(3, 2, 2, 10, 10), dim=-1)
    pad = torch.ones(2, 10, dtype=torch.bool)
    pad[1, 4:] = False  # 4 real tokens
    bt = topk_backtrack(attn, pad, 0.5, p=0.1, nesting="count", min_keep=1)
    assert bt.keep[0].sum(1).tolist() == [5, 2]  # ceil(0.5*10), ceil(0.5*4)
    union = topk_backtrack(attn, pad, 0.5, p=0.1, min_keep=1)
    top = union.keep[-2].sum(1).tolist()  # top layer: topk(5 or 2) ∪ {CLS}
    assert top[0] in (5, 6) and top[1] in (2, 3)


def test_batch_equals_single_samples():
    """Per-sample correctness at batch > 1 (a union over the batch would be wrong)."""
    torch.manual_seed(2)
    attn = torch.softmax(torch.randn(3, 3, 2, 9, 9) * 3, dim=-1)
    pad = torch.ones(3, 9, dtype=torch.bool)
    pad[2, 6:] = False
    batch = topk_backtrack(attn, pad, [0.7, 0.5, 0.3], p=0.1)
    for i in range(3):
        n = int(pad[i].sum())
        single = topk_backtrack(attn[:, i : i + 1, :, :n, :n], pad[i : i + 1, :n], [0.7, 0.5, 0.3], p=0.1)
        for kb, ks in zip(batch.keep, single.keep, strict=True):
            assert torch.equal(kb[i, :n], ks[0])


def test_same_as_next_flags():
    assert same_as_next([0.3] * 4, "count") == [True, True, True, False]
    assert same_as_next([0.9, 0.5, 0.2], "count") == [False, False, False]
    assert same_as_next([0.5, 0.8, 0.6, 0.3], "count") == [True, False, False, False]
    # union: only a layer below a full layer is known to equal it
    assert same_as_next([0.3] * 4) == [False] * 4
    assert same_as_next([0.2, 1.0, 1.0, 0.3]) == [True, True, False, False]


@pytest.mark.parametrize("nesting", ["union", "count"])
@pytest.mark.parametrize(
    "ratio", [0.3, [0.5, 0.8, 0.6, 0.3], [0.2, 0.4, 0.6, 0.8], [0.9, 0.5, 0.5, 0.2], [0.3, 1.0, 1.0, 0.2]]
)
def test_same_layers_equal_the_full_topk(monkeypatch, ratio, nesting):
    """Layers flagged by same_as_next reuse the next layer's set instead of running the top-k;
    with the shortcut switched off every layer runs it, and the masks must be identical."""
    torch.manual_seed(4)
    attn = torch.softmax(torch.randn(4, 3, 2, 11, 11) * 2, dim=-1)
    pad = torch.ones(3, 11, dtype=torch.bool)
    pad[1, 7:] = False
    pad[2, 3:] = False
    fast = topk_backtrack(attn, pad, ratio, num_prefix_tokens=1, p=0.1, nesting=nesting)
    monkeypatch.setattr(backtrack, "same_as_next", lambda ratios, nesting: [False] * len(ratios))
    full = topk_backtrack(attn, pad, ratio, num_prefix_tokens=1, p=0.1, nesting=nesting)
    for a, b in zip(fast.keep, full.keep, strict=True):
        assert torch.equal(a, b)
    for layer, same in enumerate(fast.same):
        if same:
            assert torch.equal(fast.keep[layer], fast.keep[layer + 1])


def test_ratio_one_keeps_every_real_token():
    attn = torch.softmax(torch.randn(2, 2, 1, 6, 6), dim=-1)
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    bt = topk_backtrack(attn, pad, 1.0)
    assert torch.equal(bt.keep[0], pad) and torch.equal(bt.keep[1], pad)
    torch.testing.assert_close(retention(bt.keep, pad), torch.ones(2, 2))


def test_bad_schedule_is_rejected():
    attn = torch.softmax(torch.randn(2, 1, 1, 4, 4), dim=-1)
    with pytest.raises(ValueError, match="schedule"):
        topk_backtrack(attn, torch.ones(1, 4, dtype=torch.bool), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        topk_backtrack(attn, torch.ones(1, 4, dtype=torch.bool), 0.0)


def test_row_weights_interpolate_uniform_and_importance():
    keep = torch.tensor([[True, True, False]])
    imp = torch.tensor([[0.3, 0.1, 0.6]])
    torch.testing.assert_close(row_weights(keep, imp, 0.0), torch.tensor([[0.5, 0.5, 0.0]]))
    # official: ((1 - p) + p * imp) / |kept|, imp normalised over the kept set (0.75, 0.25)
    torch.testing.assert_close(row_weights(keep, imp, 1.0), torch.tensor([[0.375, 0.125, 0.0]]))
    torch.testing.assert_close(row_weights(keep, imp, 0.1), torch.tensor([[0.4875, 0.4625, 0.0]]))


def test_token_helpers():
    keep = torch.tensor([[True, False, True, True], [True, True, False, False]])
    idx, valid = compact_indices(keep, 3)
    assert idx[0].tolist() == [0, 2, 3] and valid[0].tolist() == [True, True, True]
    assert idx[1, :2].tolist() == [0, 1] and valid[1].tolist() == [True, True, False]
    # deepest first, ties in position order; depth 0 (dropped, padding) last
    depth = torch.tensor([[3, 0, 1, 3, 2], [3, 1, 1, 0, 0]])
    assert depth_order(depth, 4).tolist() == [[0, 3, 4, 2], [0, 1, 2, 3]]
    m = rank_topk_mask(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), torch.tensor([2]), 3)
    assert m.tolist() == [[False, True, False, True]]


class TestConcrete:
    def setup_method(self):
        torch.manual_seed(3)
        self.attn = torch.softmax(torch.randn(3, 2, 2, 8, 8) * 2, dim=-1)
        self.pad = torch.ones(2, 8, dtype=torch.bool)
        self.pad[1, 5:] = False

    def test_low_threshold_keeps_all_high_keeps_floor(self):
        low = concrete_backtrack(self.attn, self.pad, torch.full((3,), -30.0))
        assert all(torch.equal(k, self.pad) for k in low.keep[:-1])
        high = concrete_backtrack(self.attn, self.pad, torch.full((3,), 30.0), min_keep=2)
        # the floor: min_keep tokens (CLS included) in every layer; the token picked for the top layer's
        # input is reused below (nesting), not topped up with one more per layer
        assert [int(k[0].sum()) for k in high.keep] == [2, 2, 2, 1]
        high2 = concrete_backtrack(self.attn, self.pad, torch.full((3,), 30.0), min_keep=3)
        assert [int(k[1].sum()) for k in high2.keep] == [3, 3, 3, 1]

    def test_inference_masks_are_bool_and_nested(self):
        bt = concrete_backtrack(self.attn, self.pad, torch.tensor([0.0, 0.2, 0.4]))
        assert all(k.dtype == torch.bool for k in bt.keep)
        for upper, lower in zip(bt.keep[1:], bt.keep[:-1], strict=True):
            assert not (upper & ~lower).any()
        assert all(k[:, 0].all() for k in bt.keep)

    def test_training_straight_through_reaches_thresholds(self):
        th = ConcreteThresholds(3, init=0.0)
        th.train()
        bt = th(self.attn, self.pad)
        for k in bt.keep:
            assert ((k - k.round()).abs() < 1e-6).all(), "forward masks are hard (straight-through)"
        loss = retention_loss(bt.keep, self.pad, target=0.2)
        loss.backward()
        assert th.logits.grad is not None and th.logits.grad.abs().sum() > 0
        # keeping too much -> raising thresholds lowers the loss -> gradient is negative
        if retention(bt.keep, self.pad).mean() > 0.2:
            assert th.logits.grad.sum() < 0
