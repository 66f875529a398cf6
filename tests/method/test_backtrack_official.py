"""The default top-k back-tracking against a transcription of the official algorithm.

``official_keep`` re-states, in plain loops, what ``update_input_mask`` and
``update_input_mask_from_previous_attention`` of the official code (gmlwns2000/sttabt,
``models/sparse_token.py``, with ``accumulate_indices=True``, head mean, p = 0.1) compute at
batch 1 without padding: k = ceil(r * T), top-k of the weighted column mean of the kept output
rows, united with the kept outputs, impacts = the scores at the kept set, normalised. It is
written from the algorithm's description, independently of ``sttabt_edge.method.backtrack``.
"""

from __future__ import annotations

import math

import pytest
import torch

from sttabt_edge.method.backtrack import topk_backtrack


def official_keep(maps: list[torch.Tensor], ratios: list[float], p: float = 0.1) -> list[set[int]]:
    """maps: L tensors (H, T, T) of one sample; returns the L+1 kept sets (inputs, then {CLS})."""
    t = maps[0].shape[-1]
    indices, impacts = [0], [1.0]
    sets = [{0}]
    for layer in reversed(range(len(maps))):
        att = maps[layer].double().mean(dim=0)  # (T, T) head mean
        col = torch.zeros(t, dtype=torch.float64)
        for idx, imp in zip(indices, impacts, strict=True):  # rows of the kept outputs
            col += att[idx] * imp * p + att[idx] * (1 - p)
        col /= len(indices)  # token mean
        k = math.ceil(ratios[layer] * t) if ratios[layer] < 1.0 else t
        top = torch.topk(col, k).indices.tolist()
        indices = sorted(set(top) | set(indices))  # torch.unique sorts
        total = sum(float(col[i]) for i in indices)
        impacts = [float(col[i]) / (total + 1e-8) for i in indices]
        sets.insert(0, set(indices))
    return sets


def _ours(maps: list[torch.Tensor], ratios: list[float]) -> list[set[int]]:
    attn = [m.unsqueeze(0) for m in maps]  # (1, H, T, T)
    pad = torch.ones(1, maps[0].shape[-1], dtype=torch.bool)
    bt = topk_backtrack(attn, pad, ratios, num_prefix_tokens=1, p=0.1, min_keep=1)
    return [set(torch.nonzero(k[0]).flatten().tolist()) for k in bt.keep]


def test_hand_checked_transcription():
    """The transcription itself on a map small enough to check by hand (see test_backtrack)."""
    a = torch.full((3, 5, 5), 0.2)
    a[2, 0] = torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1])
    assert official_keep([a[0:1], a[1:2], a[2:3]], [0.4] * 3)[2] == {0, 1, 2}


def test_random_maps_match_the_official_rule():
    """>= 99% of per-layer kept sets identical over many shapes and schedules (ties aside)."""
    gen = torch.Generator().manual_seed(0)
    same = total = 0
    for trial in range(150):
        layers = int(torch.randint(1, 9, (1,), generator=gen))
        heads = int(torch.randint(1, 5, (1,), generator=gen))
        t = int(torch.randint(4, 80, (1,), generator=gen))
        sharp = float(torch.rand(1, generator=gen)) * 4 + 0.5
        maps = [torch.softmax(torch.randn(heads, t, t, generator=gen) * sharp, dim=-1) for _ in range(layers)]
        if trial % 3 == 0:
            ratios = [float(torch.rand(1, generator=gen)) * 0.9 + 0.05] * layers
        else:
            ratios = [float(v) * 0.9 + 0.05 for v in torch.rand(layers, generator=gen)]
        for a, b in zip(_ours(maps, ratios), official_keep(maps, ratios), strict=True):
            same += a == b
            total += 1
    assert total > 500
    assert same / total >= 0.99, f"{same}/{total} kept sets match"


@pytest.mark.integration
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35])
def test_real_maps_match_the_official_rule(shared_dir, ratio):
    """DeiT-Tiny's own attention on shared images: identical kept sets at batch 1."""
    from sttabt_edge.compat import model_parts
    from sttabt_edge.data import batches, image_folder, image_preprocess_for, model_class_names
    from sttabt_edge.method.sparse import dense_forward
    from sttabt_edge.models.adapter import embed
    from sttabt_edge.models.loading import load_model

    path = shared_dir / "models" / "deit-tiny-imagenet"
    model = load_model(path).eval()
    parts = model_parts(model)
    examples = image_folder(shared_dir / "data" / "imagenet-sample", model_class_names(path))[:4]
    np_inputs, _ = next(batches(examples, 4, image_preprocess_for(model)))
    with torch.no_grad():
        x, pad = embed(parts, {k: torch.from_numpy(v) for k, v in np_inputs.items()})
        attn = dense_forward(parts, x, pad, need_attn=True).attentions
    ratios = [ratio] * len(attn)
    for b in range(x.shape[0]):
        maps = [a[b] for a in attn]
        assert _ours(maps, ratios) == official_keep(maps, ratios)
