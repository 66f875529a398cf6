"""load_model: round trips, strict checkpoint/config checks, clear errors, eager attention."""

import json
import time

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from sttabt_edge.errors import CheckpointMismatchError, InputError, ModelNotFoundError, UnsupportedModelError
from sttabt_edge.models.loading import (
    MODEL_ALIASES,
    ensure_eager,
    load_model,
    load_state_dict_checked,
    load_weights,
)

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8, num_labels=5)  # fmt: skip
TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)  # fmt: skip


def tiny(kind: str, seed: int = 0):
    """Tiny random models with default (sdpa) attention: load_model must still return eager."""
    torch.manual_seed(seed)
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(**VISION)).eval()
    if kind == "deit":
        return DeiTForImageClassificationWithTeacher(DeiTConfig(**VISION)).eval()
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)).eval()
    if kind == "bertmodel":
        return BertModel(BertConfig(**TEXT)).eval()
    raise ValueError(kind)


def inputs(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind in ("vit", "deit"):
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    return {"input_ids": torch.randint(1, 100, (2, 7), generator=g)}


def outputs(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs(kind))
    return out.last_hidden_state if kind == "bertmodel" else out.logits


def saved(tmp_path, kind: str, **edits):
    """save_pretrained a tiny model, then edit config.json (to simulate a hand-edited config)."""
    model = tiny(kind)
    model.save_pretrained(tmp_path)
    if edits:
        cfg_file = tmp_path / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.update(edits)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        cfg_file.write_text(json.dumps(cfg))
    return model


@pytest.mark.parametrize("kind", ["vit", "deit", "bert", "bertmodel"])
def test_round_trip_is_identical_and_eager(tmp_path, kind):
    model = saved(tmp_path, kind)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.config._attn_implementation == "eager"
    assert not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(outputs(loaded, kind), outputs(model, kind), atol=1e-6, rtol=0)


def test_float16_checkpoint_loads_as_float32(tmp_path):
    model = tiny("bert")
    model.half().save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(loaded.classifier.weight, model.classifier.weight.float())


@pytest.mark.parametrize(
    ("kind", "edits", "expect"),
    [
        (
            "vit",
            {"hidden_size": 48},
            r"(?s)37 shape mismatches.*cls_token: checkpoint \[1, 1, 32\] vs model \[1, 1, 48\]",
        ),
        ("vit", {"num_hidden_layers": 3}, r"missing from weights in .*vit\.layers\.2\."),
        ("vit", {"num_hidden_layers": 1}, r"unexpected in weights in .*vit\.layers\.1\."),
        ("bert", {"hidden_size": 48}, r"\[32\] vs model \[48\]"),
        ("bert", {"num_hidden_layers": 1}, r"bert\.encoder\.layer\.1\."),
    ],
)
def test_config_checkpoint_mismatch_is_readable(tmp_path, kind, edits, expect):
    saved(tmp_path, kind, **edits)
    with pytest.raises(CheckpointMismatchError, match=expect) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert "config.json and the weights disagree" in msg
    assert len(msg.splitlines()) < 25  # a summary, not torch's wall of text


def test_unsupported_architecture(tmp_path):
    saved(tmp_path, "vit", architectures=["GPT2LMHeadModel"])
    with pytest.raises(
        UnsupportedModelError, match="GPT2LMHeadModel.*supported: BertForSequenceClassification"
    ):
        load_model(tmp_path)


def test_missing_architectures_falls_back_on_model_type(tmp_path):
    model = saved(tmp_path, "vit", architectures=None)
    torch.testing.assert_close(outputs(load_model(tmp_path), "vit"), outputs(model, "vit"))


def test_num_labels_replaces_only_the_head(tmp_path):
    model = saved(tmp_path, "vit")
    loaded = load_model(tmp_path, num_labels=3)
    assert loaded.classifier.out_features == 3 and loaded.config.num_labels == 3
    assert torch.equal(loaded.vit.layers[1].mlp.fc2.weight, model.vit.layers[1].mlp.fc2.weight)
    saved(tmp_path / "b", "bertmodel")
    with pytest.raises(InputError, match="no classification head"):
        load_model(tmp_path / "b", num_labels=2)


def test_pretraining_checkpoint_gets_a_new_head(tmp_path):
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(**TEXT)).eval()
    mlm.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, num_labels=4)
    assert type(loaded) is BertForSequenceClassification and loaded.classifier.out_features == 4
    assert torch.equal(
        loaded.bert.encoder.layer[1].output.dense.weight, mlm.bert.encoder.layer[1].output.dense.weight
    )


def test_missing_paths_and_offline_hub_fail_fast(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model("./no/such/model_dir")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=r"(?s)offline.*pass a local directory"):
        load_model("sttabt-no-such-org/no-such-model")
    assert time.perf_counter() - start < 10


def test_aliases_are_immutable_hub_ids():
    assert MODEL_ALIASES["deit-t"] == "facebook/deit-tiny-patch16-224"
    with pytest.raises(TypeError):
        MODEL_ALIASES["x"] = "y"  # type: ignore[index]


def test_ensure_eager():
    model = tiny("vit")
    assert model.config._attn_implementation != "eager"
    with pytest.raises(ValueError, match="eager"):
        ensure_eager(model)
    assert ensure_eager(model, switch=True) is model
    assert model.config._attn_implementation == "eager"
    ensure_eager(model)  # now passes


def test_load_state_dict_checked():
    model, other = tiny("vit", seed=0), tiny("vit", seed=1)
    load_state_dict_checked(model, other.state_dict())
    assert torch.equal(model.classifier.weight, other.classifier.weight)
    bad = dict(other.state_dict())
    bad.pop("vit.layernorm.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["classifier.weight"] = torch.zeros(7, 32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_checked(model, bad, what="my file")
    msg = str(err.value)
    assert (
        "my file does not match ViTForImageClassification: 1 missing, 1 unexpected, 1 shape mismatches" in msg
    )
    assert "vit.layernorm.bias" in msg and "extra.weight" in msg
    assert "classifier.weight: checkpoint [7, 32] vs model [5, 32]" in msg


def test_load_weights_formats(tmp_path):
    sd = {"a": torch.ones(2), "b.c": torch.zeros(3)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        got = load_weights(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(InputError, match="unknown weights format"):
        load_weights(tmp_path / "w.npz")


@pytest.mark.integration
def test_shared_checkpoints(shared_dir):
    minilm = load_model(shared_dir / "models" / "minilm-l6-sst2")
    assert type(minilm) is BertForSequenceClassification
    assert {p.dtype for p in minilm.parameters()} == {torch.float32}
    assert minilm.config._attn_implementation == "eager" and not minilm.training
    deit = load_model(shared_dir / "models" / "deit-tiny-imagenet")
    assert type(deit) is ViTForImageClassification
    assert deit.config.num_labels == 1000 and deit.config._attn_implementation == "eager"
