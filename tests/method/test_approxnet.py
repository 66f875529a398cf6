"""ApproxNet: narrow attention predictor, its init, distillation loss and persistence."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from sttabt_edge import compat
from sttabt_edge.errors import CheckpointMismatchError, InputError
from sttabt_edge.method.approxnet import (
    ApproxNet,
    approx_config,
    build_approxnet,
    group_heads,
    teacher_targets,
)
from sttabt_edge.method.distill import (
    DistillWeights,
    approx_distill_loss,
    attention_kl,
    backtrack_kl,
    components_to_floats,
)
from sttabt_edge.method.flops import dense_flops
from sttabt_edge.reducers.sttabt import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

SHARED = Path(__file__).resolve().parents[3] / "shared"
L, H, C = 3, 4, 32


def vit_config(**kw) -> ViTConfig:
    return ViTConfig(
        hidden_size=C,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
        **kw,
    )


def bert_config(**kw) -> BertConfig:
    return BertConfig(
        hidden_size=C,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=3,
        **kw,
    )


def make(cls: type[nn.Module], cfg, seed: int = 0) -> nn.Module:
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return cls(cfg).eval()


def vit_inputs() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


def bert_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


FAMILIES = {
    "vit": (ViTForImageClassification, vit_config, vit_inputs),
    "bert": (BertForSequenceClassification, bert_config, bert_inputs),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(params=sorted(FAMILIES))
def case(request):
    cls, cfg, inputs = FAMILIES[request.param]
    return make(cls, cfg(initializer_range=0.1)), inputs()  # wider init: attention less uniform


# ---- config and shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [4, 8])
def test_shapes_match_teacher(case, factor):
    teacher, inputs = case
    net = build_approxnet(teacher, factor).eval()
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    with torch.no_grad():
        out = net(inputs)
        attn = net.attentions(inputs)
    assert out.attentions.shape == tt.attentions.shape == (L, 2, H, *tt.attentions.shape[-2:])
    # back-tracking maps: the full maps, except the top layer stops at the prefix rows
    assert len(attn) == L
    for layer in range(L - 1):
        torch.testing.assert_close(attn[layer], out.attentions[layer], atol=1e-6, rtol=0)
    p = compat.model_parts(teacher).num_prefix_tokens
    torch.testing.assert_close(attn[-1], out.attentions[-1][:, :, :p], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.attentions.sum(-1), torch.ones(out.attentions.shape[:-1]))
    assert len(out.hidden_states) == L + 1
    assert all(h.shape[-1] == C // factor for h in out.hidden_states)
    assert out.logits.shape == tt.logits.shape
    cfg = net.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (L, H, C // factor)
    assert cfg.intermediate_size == 64 // factor and cfg.num_labels == teacher.config.num_labels
    assert type(net.model) is type(teacher) and len(net.transfers) == L + 1
    assert net.transfers[0].out_features == C
    flops = net.flops(out.pad_mask)
    teacher_flops = dense_flops(compat.model_parts(teacher), out.pad_mask.sum(dim=1))
    assert flops.shape == (2,) and bool((flops > 0).all()) and bool((flops < teacher_flops / 2).all())


def test_approx_config_errors_clearly():
    cfg = bert_config()
    assert approx_config(cfg, 8).hidden_size == 4  # 1 channel per head
    assert cfg.hidden_size == C  # the teacher's config is untouched
    for bad in (3, 16):  # 32/3 not an int; 32/16 = 2 not divisible by 4 heads
        with pytest.raises(ValueError, match="divisible by the head count"):
            approx_config(cfg, bad)
    minilm = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    assert approx_config(minilm, 8).hidden_size == 48
    assert approx_config(cfg, 4)._attn_implementation == "eager"


@pytest.mark.parametrize("heads", [1, 2])
def test_fewer_heads_shapes_kl_and_persistence(case, heads, tmp_path):
    teacher, inputs = case
    net = build_approxnet(teacher, 2, "interpolate", heads=heads).eval()
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    with torch.no_grad():
        out = net(inputs)
    assert out.attentions.shape == (L, 2, heads, *tt.attentions.shape[-2:]) and net.heads == heads
    want = group_heads(tt.attentions, heads)  # (L, B, heads, N, N)
    torch.testing.assert_close(want.mean(2), tt.attentions.mean(2))  # the head mean back-tracking reads
    assert float(attention_kl(tt.attentions, out.attentions, tt.pad_mask)) > 0
    net.save(tmp_path)
    back = ApproxNet.load(tmp_path, teacher.config, factor=2)
    assert back.heads == heads
    with pytest.raises(InputError, match="divide"):
        build_approxnet(teacher, 2, heads=3)


def test_fewer_heads_interpolate_exact_on_grouped_teacher():
    """A teacher whose heads repeat in groups is reproduced exactly by a student with one head per group."""
    teacher = make(BertForSequenceClassification, bert_config(initializer_range=0.2))
    d = C // H
    with torch.no_grad():
        for lp in compat.model_parts(teacher).layers:
            for lin in (lp.q, lp.k, lp.v):  # head 1 := head 0, head 3 := head 2
                for g in (0, 2):
                    lin.weight[(g + 1) * d : (g + 2) * d] = lin.weight[g * d : (g + 1) * d]
                    lin.bias[(g + 1) * d : (g + 2) * d] = lin.bias[g * d : (g + 1) * d]
    inputs = bert_inputs()
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    net = build_approxnet(teacher, 1, "interpolate", heads=2).eval()
    with torch.no_grad():
        out = net(inputs)
    torch.testing.assert_close(out.attentions, group_heads(tt.attentions, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.attentions[:, :, 0], tt.attentions[:, :, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, tt.logits, atol=1e-5, rtol=0)


# ---- init ----------------------------------------------------------------------------------------


def test_init_deterministic_and_leaves_global_rng(case):
    teacher, _ = case
    rng = torch.get_rng_state()
    a, b = (build_approxnet(teacher, 4, "interpolate") for _ in range(2))
    r0, r0b, r1 = (build_approxnet(teacher, 4, "random", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(v, r0b.state_dict()[k]) for k, v in r0.state_dict().items())
    assert not all(torch.equal(v, r1.state_dict()[k]) for k, v in r0.state_dict().items())
    assert not torch.equal(a.parts.layers[0].q.weight, r0.parts.layers[0].q.weight)
    with pytest.raises(ValueError, match="init must be"):
        build_approxnet(teacher, 4, "copy")


def upsampled(small: nn.Module, big_config) -> nn.Module:
    """A wide model computing exactly the narrow one, channels repeated (nearest upsampling)."""
    big = make(type(small), big_config)
    small_mods = dict(small.named_modules())
    with torch.no_grad():
        for name, m in big.named_modules():
            for pname, p in m.named_parameters(recurse=False):
                v = getattr(small_mods[name], pname)
                for dim in range(v.dim()):
                    r = p.shape[dim] // v.shape[dim]
                    if r > 1:
                        v = v.repeat_interleave(r, dim=dim) / (
                            r if isinstance(m, nn.Linear) and dim == 1 else 1
                        )
                p.copy_(v)
    return big


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_interpolate_inverts_upsampling(family):
    """Head-aware resizing, the input-dim x f scale and the Q temperature are exact on such a teacher."""
    cls, cfg_fn, inputs_fn = FAMILIES[family]
    small = make(cls, approx_config(cfg_fn(), 4))
    with torch.no_grad():
        for layer in compat.model_parts(small).layers:  # peaky attention, so the KL means something
            layer.q.weight.mul_(40.0)
            layer.k.weight.mul_(40.0)
    teacher = upsampled(small, cfg_fn())
    inputs = inputs_fn()
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    net = build_approxnet(teacher, 4, "interpolate").eval()
    with torch.no_grad():
        out = net(inputs)
        rand = build_approxnet(teacher, 4, "random").eval()(inputs)
    torch.testing.assert_close(out.attentions, tt.attentions, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, tt.logits, atol=1e-4, rtol=1e-4)
    for tr, hs, ht in zip(net.transfers, out.hidden_states, tt.hidden_states, strict=True):
        torch.testing.assert_close(tr(hs), ht, atol=1e-4, rtol=1e-4)
    kl_interp = attention_kl(tt.attentions, out.attentions, tt.pad_mask)
    kl_rand = attention_kl(tt.attentions, rand.attentions, tt.pad_mask)
    assert float(kl_interp) < 1e-4 < 0.1 < float(kl_rand)


# ---- distillation loss -------------------------------------------------------------------------


def test_attention_kl_zero_on_equal_and_ignores_pad_rows():
    teacher, inputs = make(BertForSequenceClassification, bert_config(initializer_range=0.2)), bert_inputs()
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    assert float(attention_kl(tt.attentions, tt.attentions, tt.pad_mask)) == pytest.approx(0.0, abs=1e-6)
    net = build_approxnet(teacher, 4).eval()
    with torch.no_grad():
        s = net(inputs).attentions
    base = attention_kl(tt.attentions, s, tt.pad_mask)
    s2 = s.clone()
    s2[:, 1, :, 6:, :] = torch.softmax(torch.randn_like(s2[:, 1, :, 6:, :]) * 5, dim=-1)  # pad query rows
    assert torch.equal(attention_kl(tt.attentions, s2, tt.pad_mask), base)
    s3 = s.clone()
    s3[:, 1, :, :6, :] = torch.softmax(torch.randn_like(s3[:, 1, :, :6, :]) * 5, dim=-1)  # real rows
    assert not torch.equal(attention_kl(tt.attentions, s3, tt.pad_mask), base)


def test_loss_components_and_gradients(case):
    teacher, inputs = case
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    net = build_approxnet(teacher, 4, "interpolate").train()
    w = DistillWeights(logits=1.0, temperature=2.0, track=1.0)
    loss, comps = approx_distill_loss(
        net(inputs), tt.attentions, tt.hidden_states, tt.logits, tt.pad_mask, net.transfers, w
    )
    floats = components_to_floats(comps)
    assert set(floats) == {"attn_kl", "hidden_mse", "embed_mse", "logits_kd", "track_kl"}
    assert all(v > 0 and torch.isfinite(torch.tensor(v)) for v in floats.values()), floats
    assert torch.isfinite(loss) and not comps["attn_kl"].requires_grad
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    for layer in net.parts.layers:
        assert float(layer.q.weight.grad.abs().sum()) > 0
    assert all(float(t.weight.grad.abs().sum()) > 0 for t in net.transfers)
    _, no_kd = approx_distill_loss(
        net(inputs),
        tt.attentions,
        tt.hidden_states,
        None,
        tt.pad_mask,
        net.transfers,
        w,
        compat.model_parts(teacher).num_prefix_tokens,
    )
    assert float(no_kd["logits_kd"]) == 0.0


def test_few_adam_steps_reduce_loss(case):
    teacher, inputs = case
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    net = build_approxnet(teacher, 4, "random").train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        loss, comps = approx_distill_loss(
            net(inputs),
            tt.attentions,
            tt.hidden_states,
            tt.logits,
            tt.pad_mask,
            net.transfers,
            DistillWeights(),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(components_to_floats({"loss": loss.detach(), **comps}))
    first, last = history[0], history[-1]
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert last["attn_kl"] < 0.9 * first["attn_kl"], (first, last)


def test_backtrack_kl_zero_on_teacher_positive_otherwise_and_differentiable(case):
    teacher, inputs = case
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    p = compat.model_parts(teacher).num_prefix_tokens
    assert float(backtrack_kl(tt.attentions, tt.attentions, tt.pad_mask, p)) == pytest.approx(0.0, abs=1e-6)
    net = build_approxnet(teacher, 2, "interpolate", heads=2)
    out = net(inputs)
    kl = backtrack_kl(tt.attentions, out.attentions, tt.pad_mask, p)
    assert float(kl) > 0
    kl.backward()
    assert all(q.grad is not None for q in (net.parts.layers[0].q.weight, net.parts.layers[-1].k.weight))
    loss, parts = approx_distill_loss(
        out,
        tt.attentions,
        tt.hidden_states,
        tt.logits,
        tt.pad_mask,
        net.transfers,
        DistillWeights(track=2.0),
        num_prefix_tokens=p,
    )
    torch.testing.assert_close(parts["track_kl"], kl.detach())


# ---- persistence -------------------------------------------------------------------------------


def test_save_load_round_trip_and_mismatch(case, tmp_path):
    teacher, inputs = case
    net = build_approxnet(teacher, 4, "interpolate").eval()
    net.save(tmp_path / "f4")
    assert sorted(p.name for p in (tmp_path / "f4").iterdir()) == ["approxnet.json", "model.safetensors"]
    back = ApproxNet.load(tmp_path / "f4", teacher.config)
    assert (back.factor, back.init) == (4, "interpolate")
    with torch.no_grad():
        a, b = net(inputs), back(inputs)
    assert torch.equal(a.attentions, b.attentions) and torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))

    build_approxnet(teacher, 8).save(tmp_path / "f8")
    with pytest.raises(CheckpointMismatchError, match="factor"):
        ApproxNet.load(tmp_path / "f8", teacher.config, factor=4)
    shutil.copy(tmp_path / "f8" / "model.safetensors", tmp_path / "f4" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="factor 8"):
        ApproxNet.load(tmp_path / "f4")
    from safetensors.torch import save_file  # same mismatch without the factor tag: caught by shapes

    save_file(
        {k: v.contiguous() for k, v in build_approxnet(teacher, 8).state_dict().items()},
        tmp_path / "f4" / "model.safetensors",
    )
    with pytest.raises(CheckpointMismatchError, match="wrong shapes"):
        ApproxNet.load(tmp_path / "f4")
    other = type(teacher.config)(**{**teacher.config.to_dict(), "hidden_size": 64})
    with pytest.raises(CheckpointMismatchError, match="does not fit this teacher"):
        ApproxNet.load(tmp_path / "f8", other)


# ---- with the reducer --------------------------------------------------------------------------


def test_sttabt_reducer_with_approxnet(case):
    teacher, inputs = case
    net = build_approxnet(teacher, 4, "interpolate").eval()
    clf = SparseClassifier(teacher, SttabtReducer(approx=net, keep_ratio=0.5)).eval()
    with torch.no_grad():
        out = clf(**inputs)
    assert out.logits.shape == (2, teacher.config.num_labels) and torch.isfinite(out.logits).all()
    assert out.keep is not None and len(out.keep) == L + 1
    for outer, inner in zip(out.keep[:-1], out.keep[1:], strict=True):
        assert not bool((inner & ~outer).any())  # keep[l+1] ⊆ keep[l]
    assert float(out.retention[:, -1].max()) < 1.0
    torch.testing.assert_close(clf.reducer.extra_flops(inputs, out.pad_mask), net.flops(out.pad_mask))


# ---- real DeiT-Tiny ----------------------------------------------------------------------------


def _preprocess(paths: list[Path]) -> torch.Tensor:
    try:
        from sttabt_edge.runtime import ImagePreprocess
    except ImportError:  # package not installed: runtime/ is only mapped into sttabt_edge on install
        import numpy as np
        from PIL import Image

        def one(p: Path) -> np.ndarray:
            img = Image.open(p).convert("RGB")
            s = 256 / min(img.size)
            img = img.resize((max(256, int(img.width * s)), max(256, int(img.height * s))), Image.BICUBIC)
            left, top = round((img.width - 224) / 2), round((img.height - 224) / 2)
            x = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
            return ((x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)).transpose(2, 0, 1).astype(np.float32)

        return torch.from_numpy(np.stack([one(p) for p in paths]))
    return torch.from_numpy(ImagePreprocess()(paths))


@pytest.mark.integration
def test_deit_interpolate_beats_random_init():
    model_dir, img_dir = SHARED / "models" / "deit-tiny-imagenet", SHARED / "data" / "imagenet-sample"
    if not (model_dir.is_dir() and img_dir.is_dir()):
        pytest.skip(f"shared data not found at {SHARED}")
    start = time.perf_counter()
    teacher = ViTForImageClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    inputs = {"pixel_values": _preprocess(sorted(img_dir.glob("*.JPEG"))[::250][:4])}
    tt = teacher_targets(compat.model_parts(teacher), inputs)
    kl = {}
    for init in ("random", "interpolate"):
        net = build_approxnet(teacher, 4, init).eval()
        with torch.no_grad():
            kl[init] = float(attention_kl(tt.attentions, net(inputs).attentions, tt.pad_mask))
    uniform = float(attention_kl(tt.attentions, torch.full_like(tt.attentions, 1 / 197), tt.pad_mask))
    print(
        f"DeiT-Tiny /4 attention KL: interpolate {kl['interpolate']:.4f}, random {kl['random']:.4f}, "
        f"uniform {uniform:.4f}"
    )
    assert kl["interpolate"] < 0.95 * kl["random"], kl
    assert time.perf_counter() - start < 20
