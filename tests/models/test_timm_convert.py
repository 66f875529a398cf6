"""timm ViT/DeiT state dicts -> HF 5.x models, checked against a plain-torch reference forward."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from sttabt_edge.errors import CheckpointMismatchError, InputError
from sttabt_edge.models.loading import load_model
from sttabt_edge.models.timm_convert import (
    build_timm_model,
    convert_timm_vit_state_dict,
    load_timm_checkpoint,
    timm_vit_config,
)

HIDDEN, DEPTH, MLP, PATCH, IMG, CLASSES, HEADS = 32, 2, 64, 8, 32, 5, 2


def timm_state_dict(*, distilled=False, qkv_bias=True, classes=CLASSES, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors with timm's VisionTransformer / DistilledVisionTransformer key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    prefix = 2 if distilled else 1
    sd = {
        "cls_token": r(1, 1, HIDDEN),
        "pos_embed": r(1, (IMG // PATCH) ** 2 + prefix, HIDDEN),
        "patch_embed.proj.weight": r(HIDDEN, 3, PATCH, PATCH),
        "patch_embed.proj.bias": r(HIDDEN),
        "norm.weight": 1 + r(HIDDEN),
        "norm.bias": r(HIDDEN),
    }
    if distilled:
        sd["dist_token"] = r(1, 1, HIDDEN)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": 1 + r(HIDDEN), b + "norm1.bias": r(HIDDEN),
            b + "attn.qkv.weight": r(3 * HIDDEN, HIDDEN),
            b + "attn.proj.weight": r(HIDDEN, HIDDEN), b + "attn.proj.bias": r(HIDDEN),
            b + "norm2.weight": 1 + r(HIDDEN), b + "norm2.bias": r(HIDDEN),
            b + "mlp.fc1.weight": r(MLP, HIDDEN), b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(HIDDEN, MLP), b + "mlp.fc2.bias": r(HIDDEN),
        }  # fmt: skip
        if qkv_bias:
            sd[b + "attn.qkv.bias"] = r(3 * HIDDEN)
    heads = ["head", "head_dist"] if distilled else ["head"]
    for h in heads[: 2 if classes else 0]:
        sd[f"{h}.weight"], sd[f"{h}.bias"] = r(classes, HIDDEN), r(classes)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """timm's eval forward written out with plain torch ops on the timm-layout tensors."""
    eps, c = 1e-6, HIDDEN
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)
    b = x.shape[0]
    prefix = [sd["cls_token"].expand(b, -1, -1)]
    if "dist_token" in sd:
        prefix.append(sd["dist_token"].expand(b, -1, -1))
    t = torch.cat([*prefix, t], dim=1) + sd["pos_embed"]
    n = t.shape[1]
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(b, n, c)
        t = t + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])  # fmt: skip
        t = t + h
    t = F.layer_norm(t, (c,), sd["norm.weight"], sd["norm.bias"], eps)
    if "head.weight" not in sd:
        return t[:, 0]
    logits = F.linear(t[:, 0], sd["head.weight"], sd["head.bias"])
    if "head_dist.weight" in sd:
        logits = (logits + F.linear(t[:, 1], sd["head_dist.weight"], sd["head_dist.bias"])) / 2
    return logits


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("distilled", "qkv_bias", "cls"),
    [
        (False, True, ViTForImageClassification),
        (False, False, ViTForImageClassification),
        (True, True, DeiTForImageClassificationWithTeacher),
    ],
)
def test_converted_model_matches_reference(distilled, qkv_bias, cls):
    sd = timm_state_dict(distilled=distilled, qkv_bias=qkv_bias)
    model = build_timm_model(sd, num_heads=HEADS)
    assert type(model) is cls
    assert model.config._attn_implementation == "eager"
    assert not model.training
    x = images()
    with torch.no_grad():
        got = model(pixel_values=x).logits
        want = reference_forward(sd, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_headless_checkpoint_returns_normed_class_token():
    sd = timm_state_dict(classes=0)
    model = build_timm_model(sd, num_heads=HEADS)
    assert model.config.num_labels == 0
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=x).logits, reference_forward(sd, x), atol=1e-5, rtol=1e-5
        )


def test_config_inference():
    cfg = timm_vit_config(timm_state_dict(qkv_bias=False), num_heads=4)
    assert isinstance(cfg, ViTConfig) and not isinstance(cfg, DeiTConfig)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (HIDDEN, DEPTH, MLP)
    assert (cfg.patch_size, cfg.image_size, cfg.num_channels, cfg.num_labels) == (PATCH, IMG, 3, CLASSES)
    assert (cfg.num_attention_heads, cfg.layer_norm_eps, cfg.hidden_act, cfg.qkv_bias) == (
        4,
        1e-6,
        "gelu",
        False,
    )
    dcfg = timm_vit_config(timm_state_dict(distilled=True))
    assert isinstance(dcfg, DeiTConfig)
    assert dcfg.image_size == IMG and dcfg.num_attention_heads == 1  # hidden // 64 floor, at least 1
    assert dcfg.architectures == ["DeiTForImageClassificationWithTeacher"]


def test_heads_from_known_name_and_clear_errors():
    sd = timm_state_dict()
    sd192 = {k: v for k, v in sd.items()} | {"patch_embed.proj.weight": torch.zeros(192, 3, PATCH, PATCH)}
    assert timm_vit_config(sd192, name="deit_tiny_patch16_224").num_attention_heads == 3
    assert timm_vit_config(sd192, name="timm/vit_tiny_patch16_224.augreg_in21k").num_attention_heads == 3
    with pytest.raises(CheckpointMismatchError, match="not divisible by 5 heads"):
        timm_vit_config(sd, num_heads=5)
    with pytest.raises(CheckpointMismatchError, match="suggests width 768"):
        timm_vit_config(sd, name="vit_base_patch16_224")
    with pytest.raises(CheckpointMismatchError, match="image_size=48"):
        timm_vit_config(sd, image_size=48)
    assert timm_vit_config(sd, image_size=IMG).image_size == IMG


def test_unexpected_and_missing_keys_are_listed():
    sd = timm_state_dict() | {"fc_norm.weight": torch.ones(HIDDEN), "blocks.0.ls1.gamma": torch.ones(HIDDEN)}
    cfg = timm_vit_config(sd, num_heads=HEADS)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_timm_vit_state_dict(sd, cfg)
    msg = str(err.value)
    assert "2 unexpected" in msg and "fc_norm.weight" in msg and "blocks.0.ls1.gamma" in msg
    assert "global average pooling" in msg and "LayerScale" in msg
    sd = timm_state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"(?s)1 missing.*blocks\.1\.mlp\.fc2\.bias"):
        convert_timm_vit_state_dict(sd, timm_vit_config(sd, num_heads=HEADS))


def test_pre_logits_is_ignored_like_timm_does():
    sd = timm_state_dict() | {"pre_logits.fc.weight": torch.zeros(HIDDEN, HIDDEN)}
    out = convert_timm_vit_state_dict(sd, timm_vit_config(sd, num_heads=HEADS))
    assert not any("pre_logits" in k for k in out)
    assert {"vit.layers.1.attention.q_proj.weight", "classifier.bias"} <= set(out)


def test_not_a_vit_state_dict():
    with pytest.raises(CheckpointMismatchError, match="pos_embed"):
        timm_vit_config(
            {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "cls_token": torch.zeros(1, 1, 8)}
        )


@pytest.mark.parametrize("fmt", ["model.pth", "state_dict.pt", "ddp.bin", "plain.safetensors"])
def test_load_timm_checkpoint_files(tmp_path, fmt):
    sd = timm_state_dict(distilled=True)
    path = tmp_path / fmt
    if fmt.endswith(".safetensors"):
        save_file(sd, str(path))
    elif fmt.startswith("ddp"):
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.save({fmt.split(".")[0]: sd, "epoch": 3}, path)
    x = images()
    for model in (load_timm_checkpoint(path, num_heads=HEADS), load_model(path)):
        with torch.no_grad():
            got = model(pixel_values=x).logits
        heads = model.config.num_attention_heads
        torch.testing.assert_close(got, reference_forward(sd, x, heads=heads), atol=1e-5, rtol=1e-5)
        assert model.config._attn_implementation == "eager" and not model.training


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": timm_state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(InputError, match="weights_only"):
        load_timm_checkpoint(path)
