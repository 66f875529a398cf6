"""The README's main command (benchmarks/quickstart.py), smoke budget: the whole path runs end to end
and what it reports holds together (parity, retention at the target, FLOPs that follow from it)."""

import importlib
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def smoke(shared_dir, tmp_path_factory):
    """One smoke run of the default task (MiniLM-SST2) shared by the checks below (~1-3 min)."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(BENCHMARKS))  # the script imports its siblings `common`, `quickstart_*`
    out = tmp_path_factory.mktemp("quickstart")
    glue = shared_dir / "data" / "glue" / "SST-2"
    try:
        returned = importlib.import_module("quickstart").main(
            [
                "--smoke",
                "--threads",
                "1",
                "--out",
                str(out),
                "--model",
                str(shared_dir / "models" / "minilm-l6-sst2"),
                "--data",
                str(glue / "train.tsv"),
                "--eval-data",
                str(glue / "dev.tsv"),
            ]
        )
    finally:
        mp.undo()
    return out, returned, json.loads((out / "summary.json").read_text())


@pytest.mark.integration
def test_quickstart_writes_its_report(smoke):
    out, returned, result = smoke
    assert result["summary"] == returned["summary"]
    assert (out / "summary.png").stat().st_size > 0
    assert {
        "summary",
        "phases_s",
        "approx",
        "export",
        "parity",
        "eval",
        "flops",
        "bench",
        "env",
    } <= result.keys()
    assert list(result["phases_s"]) == [
        "distil",
        "calibrate",
        "export",
        "verify",
        "accuracy",
        "bench",
        "report",
    ]
    assert result["env"]["commit"] != "unknown"
    assert result["approx"]["trained_here"] and result["approx"]["step"] == 4
    models = result["summary"]["models"]
    assert list(models) == ["dense_fp32", "dense_int8", "sttabt_fp32", "sttabt_int8"]
    for method in ("dense", "sttabt"):  # what `export --quantize int8` writes: INT8 at X.onnx, fp32 beside it
        assert models[f"{method}_int8"]["onnx"] == str(out / f"{method}.onnx")
        assert models[f"{method}_fp32"]["onnx"] == str(out / f"{method}.fp32.onnx")
        assert models[f"{method}_int8"]["mb"] < 0.5 * models[f"{method}_fp32"]["mb"]
    assert result["summary"]["bench_lengths"][1] == 64  # the mean dev length, then SST-2's longest sentences
    for r in models.values():
        assert Path(r["onnx"]).is_file() and 0.0 <= r["accuracy"] <= 1.0
        for key in ("latency_x_dense_fp32", "latency_x_dense_fp32_at_64", "p50_ms", "p50_ms_at_64"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert math.isfinite(models["sttabt_int8"]["latency_x_dense_int8_at_64"])


@pytest.mark.integration
def test_quickstart_parity(smoke):
    _, _, result = smoke
    assert result["summary"]["all_parity_passed"]
    for name, rep in result["parity"].items():
        assert rep["passed"] and rep["samples"] == 16, name
        if name.endswith("fp32"):  # the same graph as PyTorch: equal logits and equal token choices
            assert (
                rep["max_abs_logit"] < 1e-3 and rep["kept_agreement"] == 1.0 and rep["top1_agreement"] == 1.0
            )
        else:  # INT8 logits differ; the answers may not, nor the tokens (the ApproxNet stays fp32)
            assert rep["top1_agreement"] >= 0.95 and rep["kept_agreement"] >= 0.99


@pytest.mark.integration
def test_quickstart_retention_and_flops_follow_the_target(smoke):
    _, _, result = smoke
    s = result["summary"]
    target, dense, sparse = s["target_retention"], s["models"]["dense_fp32"], s["models"]["sttabt_fp32"]
    assert abs(s["calib_retention"] - target) < 0.05  # the bisection hits the target where it was calibrated
    assert 0.0 < s["keep_ratio"] < target  # union nesting: sets grow toward the input, so r < retention
    assert abs(sparse["retention"] - target) < 0.15  # held-out dev sentences, a different input mix
    assert dense["retention"] == pytest.approx(1.0) and dense["flops_ratio"] == pytest.approx(1.0)
    assert sparse["occupancy"] < dense["occupancy"] <= 1.0
    # per layer, keeping a fraction f of n tokens costs between f^2 (attention) and f (linear) of the
    # dense layer; on top: the /4 ApproxNet (~6% of dense) and back-tracking
    ret = result["flops"]["sttabt"]["torch_retention"]
    assert abs(ret - sparse["retention"]) < 0.02  # PyTorch and ONNX Runtime keep the same tokens
    assert ret**2 < sparse["flops_ratio"] < ret + 0.1
