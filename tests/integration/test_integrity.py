"""Issue #28, class 6: a bit flipped inside a training checkpoint is caught on resume (a digest per
file), and the benchmark reports the runtime worker's own memory, not its parent's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from handmade import image_graph, image_meta, save_sealed
from torch import nn

from sttabt_edge.errors import CheckpointMismatchError
from sttabt_edge.models.loading import read_safetensors
from sttabt_edge.runtime.bench import bench_pairs, peak_rss_mb
from sttabt_edge.train import checkpoint as ckpt_mod
from sttabt_edge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

FINGERPRINT = {"kind": "t"}


def _module(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(64, 64)


def _saved(tmp_path: Path) -> Path:
    trainer = {"optimizer": {"state": {0: {"exp_avg": torch.randn(64, 64)}}, "param_groups": []}}
    save_checkpoint(tmp_path / "run", 3, {"m": _module()}, trainer, {"fingerprint": FINGERPRINT})
    return latest_checkpoint(tmp_path / "run")


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_bit_flip_in_checkpoint_tensor_data_is_caught(tmp_path):
    ckpt = _saved(tmp_path)
    module = _module(seed=1)
    load_checkpoint(ckpt, {"m": module}, FINGERPRINT)  # the untouched checkpoint loads
    assert torch.equal(module.weight, _module().weight)
    weights = ckpt / "m.safetensors"
    _flip(weights, weights.stat().st_size - 100)  # inside the tensor data, past the header
    flipped = read_safetensors(weights)["weight"]
    assert not torch.equal(flipped, _module().weight)  # it still parses: only a digest can tell
    with pytest.raises(CheckpointMismatchError, match="m.safetensors: digest mismatch"):
        load_checkpoint(ckpt, {"m": _module()}, FINGERPRINT)


def test_trainer_state_and_state_json_are_covered(tmp_path):
    ckpt = _saved(tmp_path)
    trainer = ckpt / "trainer.pt"
    _flip(trainer, trainer.stat().st_size // 2)
    with pytest.raises(CheckpointMismatchError, match="trainer.pt: digest mismatch"):
        load_checkpoint(ckpt, {"m": _module()}, FINGERPRINT)
    ckpt = _saved(tmp_path / "again")
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "step": 30}, indent=2))
    with pytest.raises(CheckpointMismatchError, match="state.json: digest mismatch"):
        load_checkpoint(ckpt, {"m": _module()}, FINGERPRINT)


def test_checkpoints_from_before_digests_resume_with_a_warning(tmp_path):
    """A run started by an older version (the running training's) must still resume; it says that
    its files are unchecked instead of pretending they were."""
    ckpt = _saved(tmp_path)
    state = json.loads((ckpt / "state.json").read_text())
    legacy = {k: v for k, v in state.items() if k not in ("digests", "state_digest")}
    (ckpt / "state.json").write_text(json.dumps({**legacy, "format": ckpt_mod.FORMAT}))
    module = _module(seed=1)
    with pytest.warns(UserWarning, match="before checkpoint digests"):
        load_checkpoint(ckpt, {"m": module}, FINGERPRINT)
    assert torch.equal(module.weight, _module().weight)


def test_bench_reports_the_worker_process_own_peak_memory(tmp_path):
    """A worker started by a big process reported the parent's peak (ru_maxrss survives exec)."""
    path = save_sealed(image_graph(np.eye(3, 4, dtype=np.float32)), tmp_path / "m.onnx", image_meta())
    ballast = np.ones(600 * 2**20 // 8)  # 600 MB resident in this (parent) process
    assert peak_rss_mb() > 600
    out = bench_pairs({"a": path, "b": path}, [("a", "b")], threads=1, runs=2, warmup=0, seq_len=8, block=1)
    del ballast
    sides = out["a_vs_b"]["a"], out["a_vs_b"]["b"]
    assert all(20 < side["peak_rss_mb"] < 400 for side in sides), [s["peak_rss_mb"] for s in sides]
