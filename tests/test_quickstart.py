"""The README's main command (benchmarks/quickstart.py), smoke budget: the whole path runs end to end."""

import importlib
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.integration
def test_quickstart_smoke(shared_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling `common`
    quickstart = importlib.import_module("quickstart")
    returned = quickstart.main([
        "--smoke", "--threads", "1", "--out", str(tmp_path),
        "--model", str(shared_dir / "models" / "deit-tiny-imagenet"),
        "--data", str(shared_dir / "data" / "imagenet-sample"),
    ])
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["summary"] == returned["summary"]
    assert (tmp_path / "summary.png").stat().st_size > 0
    assert {"summary", "phases_s", "approx", "export", "parity", "eval", "bench", "env"} <= result.keys()
    assert list(result["phases_s"]) == ["distil", "export", "verify", "accuracy", "bench", "report"]
    s = result["summary"]
    assert s["all_parity_passed"] and s["eval_images"] == 16
    dense, sparse = s["dense"], s["sparse"]
    for r in (dense, sparse):
        assert 0.0 <= r["top1"] <= 1.0 and r["p50_ms"] > 0 and r["parity_max_abs_logit"] < 1e-3
        assert Path(r["onnx"]).is_file()
    assert dense["retention"] == pytest.approx(1.0) and dense["flops_ratio"] == pytest.approx(1.0)
    # union nesting: at least the top layer's ceil(r * 197) + CLS per layer, growing toward the input
    assert math.ceil(s["keep_ratio"] * 197) / 197 <= sparse["retention"] < 1.0
    assert 0.2 < sparse["flops_ratio"] < 0.6  # ApproxNet + back-tracking included
    assert math.isfinite(s["latency_ratio"]) and s["latency_ratio"] > 0
    assert math.isfinite(s["approx_kl_before"]) and math.isfinite(s["approx_kl_after"])
    assert result["approx"]["trained_here"] and result["approx"]["step"] == 2
