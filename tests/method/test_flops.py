"""Analytic FLOPs (sttabt_edge.method.flops) against torch's FlopCounterMode, exactly.

Counting convention of the check: FlopCounterMode sees every matmul/linear/conv we
count. One reconciliation is needed: on CPU, ``F.scaled_dot_product_attention`` (used by
the sparse block when no attention probabilities are needed) dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode has no
formula for and silently counts as 0. We pass it the standard SDPA formula
(2·B·H·Nq·Nk·D for q·kᵀ plus the same for p·v) through ``custom_mapping``, without
touching torch's global registry. The HF forwards here are eager (plain matmuls).

The oracle STTABT reducer (approx=None) first runs a dense pass with attentions. To
count only the sparse path we run the pieces of ``sparse_forward`` ourselves: embed
and plan_forward + classify inside the counter, the back-track (oracle pass + masks)
outside it. ``test_whole_wrapper_reconciles`` then counts the full wrapper and checks
that it is exactly: oracle dense pass + sparse path + the back-track's matvec part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from tiny import VISION
from torch.utils.flop_counter import FlopCounterMode

from sttabt_edge.compat import ModelParts, model_parts
from sttabt_edge.method.flops import (
    backtrack_flops,
    dense_flops,
    embedding_flops,
    flops_summary,
    head_flops,
    layer_flops,
    model_flops,
    output_flops,
)
from sttabt_edge.method.sparse import dense_forward, plan_forward
from sttabt_edge.models.adapter import classify, embed
from sttabt_edge.reducers import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

transformers = pytest.importorskip("transformers")

aten = torch.ops.aten
RATIOS = (1.0, 0.5, 0.3)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """Standard SDPA count (as torch's sdpa_flop_count) for the CPU flash kernel."""
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * d + 2 * b * h * n_q * n_k * d_v


def counted(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs FlopCounterMode sees while running fn, fn's result)."""
    mode = FlopCounterMode(
        display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
    )
    with torch.no_grad(), mode:
        result = fn()
    return mode.get_total_flops(), result


def _vit(cls_name: str = "ViTForImageClassification") -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(VISION)
    if cls_name.startswith("DeiT"):
        cfg = transformers.DeiTConfig(**kw)
    else:
        cfg = transformers.ViTConfig(**kw)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(cfg)
    model.set_attn_implementation("eager")
    return model.eval()


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg)
    model.set_attn_implementation("eager")
    return model.eval()


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return _vit()


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    return _bert()


def _vit_inputs(batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}


def _bert_inputs(lengths: tuple[int, ...] = (12,)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    n = max(lengths)
    ids = torch.randint(5, 100, (len(lengths), n), generator=g)
    ids[:, 0] = 1  # [CLS]
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def _family(request: pytest.FixtureRequest, name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    if name == "vit":
        return request.getfixturevalue("vit"), _vit_inputs()
    return request.getfixturevalue("bert"), _bert_inputs()


def _sparse_path_counted(parts: ModelParts, reducer: SttabtReducer, inputs: dict[str, torch.Tensor]):
    """Counted FLOPs of embed + plan_forward + classify; the back-track runs uncounted."""
    n_embed, (x, pad) = counted(lambda: embed(parts, inputs))
    with torch.no_grad():
        bt = reducer.backtrack(parts, inputs, x, pad)
    plan = reducer.keep_plan(parts, bt)  # the plan the reducer runs (batch-max compaction for union)

    def sparse() -> tuple[Any, torch.Tensor]:
        res = plan_forward(parts, x, pad, plan, "remove")
        return res, classify(parts, res.prefix_hidden)

    n_sparse, (res, logits) = counted(sparse)
    return n_embed + n_sparse, res, logits


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_dense_matches_hf_forward(request: pytest.FixtureRequest, family: str) -> None:
    model, inputs = _family(request, family)
    parts = model_parts(model)
    n_hf, _ = counted(lambda: model(**inputs))
    n_tokens = 17 if family == "vit" else 12
    assert dense_flops(parts, n_tokens).tolist() == [n_hf]
    # our own dense loop (SDPA path, reconciled above) counts the same
    n_ours, _ = counted(lambda: classify(parts, dense_forward(parts, *embed(parts, inputs)).prefix_hidden))
    assert n_ours == n_hf


def test_dense_matches_hf_deit_with_teacher() -> None:
    model = _vit("DeiTForImageClassificationWithTeacher")
    parts = model_parts(model)
    n_hf, _ = counted(lambda: model(**_vit_inputs()))
    assert head_flops(parts) == 2 * (2 * 32 * 5)  # two classifiers, one prefix token each
    assert dense_flops(parts, 18).tolist() == [n_hf]


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_sparse_path_matches_counter_exactly(request: pytest.FixtureRequest, family: str) -> None:
    model, inputs = _family(request, family)
    wrapper = SparseClassifier(model, SttabtReducer(keep_ratio=1.0))
    parts = wrapper.parts
    flops = []
    for ratio in RATIOS:
        reducer = SttabtReducer(keep_ratio=ratio)
        n_counted, res, logits = _sparse_path_counted(parts, reducer, inputs)
        analytic = model_flops(parts, res.n_in, res.n_out)
        assert analytic.tolist() == [n_counted], ratio
        with torch.no_grad():  # the wrapper runs the very same plan
            out = SparseClassifier(model, reducer)(**inputs)
        assert torch.equal(out.n_in, res.n_in) and torch.equal(out.n_out, res.n_out)
        torch.testing.assert_close(out.logits, logits)
        assert out.n_out[0, -1].item() == parts.num_prefix_tokens  # last layer: only CLS rows
        flops.append(analytic.item())
    dense = dense_flops(parts, 17 if family == "vit" else 12).item()
    assert dense > flops[0] > flops[1] > flops[2]  # even r=1 saves the last layer's non-CLS rows


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_whole_wrapper_reconciles(request: pytest.FixtureRequest, family: str) -> None:
    """Full oracle wrapper = oracle dense pass + sparse path + back-track matvecs (bmm)."""
    model, inputs = _family(request, family)
    reducer = SttabtReducer(keep_ratio=0.5)
    wrapper = SparseClassifier(model, reducer)
    parts = wrapper.parts
    n_total, out = counted(lambda: wrapper(**inputs))
    with torch.no_grad():
        x, pad = embed(parts, inputs)  # the wrapper embeds once: keep it out of the oracle's count
    n_oracle, _ = counted(lambda: dense_forward(parts, x, pad, need_attn=True))
    n_tokens = int(out.pad_mask.sum())
    n_layers, n_heads = len(parts.layers), parts.num_heads
    # FlopCounterMode counts the per-head weighted row sums exactly: a matmul, 2·H·N² per layer,
    # 2·H·P·N in the top layer (only its prefix rows carry weight)
    assert n_total - n_oracle == output_flops(parts, out, reducer, inputs).item()
    p = parts.num_prefix_tokens
    expect = (n_layers - 1) * 2 * n_heads * n_tokens**2 + 2 * n_heads * p * n_tokens
    assert backtrack_flops(n_layers, n_heads, n_tokens, p) == expect


def test_batch_padding_per_sample(bert: torch.nn.Module) -> None:
    lengths = (12, 7)
    for ratio in RATIOS:
        reducer = SttabtReducer(keep_ratio=ratio)
        wrapper = SparseClassifier(bert, reducer)
        with torch.no_grad():
            inputs = _bert_inputs(lengths)
            batched = output_flops(wrapper.parts, wrapper(**inputs), reducer)
            single = []
            for i, n in enumerate(lengths):
                one = {k: v[i : i + 1, :n] for k, v in inputs.items()}
                single.append(output_flops(wrapper.parts, wrapper(**one), reducer).item())
        assert batched.tolist() == single, ratio
        assert single[0] > single[1]


def test_vit_batch_per_sample(vit: torch.nn.Module) -> None:
    reducer = SttabtReducer(keep_ratio=0.3)
    wrapper = SparseClassifier(vit, reducer)
    inputs = _vit_inputs(batch=2)
    with torch.no_grad():
        batched = output_flops(wrapper.parts, wrapper(**inputs), reducer)
        single = [
            output_flops(wrapper.parts, wrapper(pixel_values=inputs["pixel_values"][i : i + 1]), reducer)
            for i in range(2)
        ]
    assert batched.tolist() == torch.cat(single).tolist()


def test_pieces_and_scalars(vit: torch.nn.Module, bert: torch.nn.Module) -> None:
    vparts, bparts = model_parts(vit), model_parts(bert)
    assert embedding_flops(vparts) == 2 * 16 * 32 * 3 * 8 * 8
    assert embedding_flops(vparts, torch.tensor([17.0])).tolist() == [2 * 16 * 32 * 3 * 8 * 8]
    assert embedding_flops(bparts) == 0.0
    assert head_flops(vparts) == 2 * 32 * 5
    assert head_flops(bparts) == 2 * 32 * 32 + 2 * 32 * 3
    # floats and tensors agree; attention term is quadratic only in the product n_q·n_k
    f = layer_flops(3.0, 5.0, 32, 64)
    t = layer_flops(torch.tensor([3.0, 4.0]), torch.tensor([5.0, 5.0]), 32, 64)
    assert t[0].item() == f == 2 * (3 * 32 * 32 * 2 + 5 * 32 * 32 * 2 + 3 * 5 * 32 * 2 + 3 * 32 * 64 * 2)
    assert t[1] > t[0]
    with pytest.raises(ValueError):
        model_flops(vparts, torch.ones(1, 2), torch.ones(1, 2))
    s = flops_summary(torch.tensor([1e9, 3e9]), torch.tensor([4e9, 4e9]))
    assert s == {"gflops": 2.0, "dense_gflops": 4.0, "ratio": 0.5, "saving": 0.5}
