"""CompressConfig grouped by concern (#27): the flat option names land in their groups, new
report.json files are written grouped, and run dirs written flat before #27 still read."""

import json

import pytest

from sttabt_edge.compress.config import FLAT_COMPRESS_KEYS, CompressConfig, flat_config
from sttabt_edge.compress.report import write_report
from sttabt_edge.errors import InputError

# /work/runs/compress_deit/report.json's "config" (written by compress before #27), copied verbatim
OLD_REPORT_CONFIG = {
    "model": "../shared/models/deit-tiny-imagenet",
    "data": "../shared/data/imagenet-sample",
    "out": "/work/runs/compress_deit",
    "max_drop": 1.5,
    "target_retention": None,
    "budget_minutes": 30.0,
    "approx_steps": None,
    "threshold_steps": 200,
    "target": "onnx",
    "quantize": "int8",
    "fuse": True,
    "approx": "/work/runs/deit_approx_f8h1",
    "approx_factor": 8,
    "approx_heads": 1,
    "eval_data": None,
    "holdout_data": None,
    "holdout": 200,
    "holdout_min_tokens": 16,
    "concrete": True,
    "search_steps": 7,
    "max_length": 128,
    "batch_size": 32,
    "threads": 2,
    "bench_runs": 30,
    "seed": 0,
}


def _old_here(tmp_path):
    """The old config with its input paths pointed at folders that exist here (they are checked)."""
    return {**OLD_REPORT_CONFIG, "data": str(tmp_path), "approx": str(tmp_path), "out": str(tmp_path / "o")}


def test_flat_options_land_in_their_groups(tmp_path):
    cfg = CompressConfig.of(**_old_here(tmp_path))
    assert cfg.goal.max_drop == 1.5 and cfg.goal.target_retention is None
    assert cfg.budget.minutes == 30.0 and cfg.budget.seconds == 1800.0 and cfg.budget.threshold_steps == 200
    assert (cfg.delivery.target, cfg.delivery.quantize, cfg.delivery.fuse) == ("onnx", "int8", True)
    assert cfg.approxnet.path == tmp_path and (cfg.approxnet.factor, cfg.approxnet.heads) == (8, 1)
    assert (cfg.selection.holdout, cfg.selection.search_steps) == (200, 7)
    assert (cfg.batch.size, cfg.batch.max_length, cfg.bench.threads, cfg.bench.runs) == (32, 128, 2, 30)
    assert cfg.with_options(threads=4, max_drop=2.0).bench.threads == 4
    assert set(FLAT_COMPRESS_KEYS) | {"model", "data", "out", "seed"} == set(OLD_REPORT_CONFIG)
    with pytest.raises(InputError, match="unknown compress option 'budget'"):
        CompressConfig.of(**_old_here(tmp_path), budget=3)
    with pytest.raises(InputError, match="--bench-runs must be >= 1"):
        cfg.with_options(bench_runs=0)


def test_old_flat_report_config_loads_and_new_files_are_grouped(tmp_path):
    old = _old_here(tmp_path)
    cfg = CompressConfig.from_dict(old)
    assert cfg == CompressConfig.of(**old)
    grouped = cfg.to_dict()
    assert grouped["goal"] == {"max_drop": 1.5, "target_retention": None}
    assert grouped["approxnet"] == {"path": str(tmp_path), "factor": 8, "heads": 1}
    assert "max_drop" not in grouped and "bench_runs" not in grouped
    assert CompressConfig.from_dict(json.loads(json.dumps(grouped))) == cfg
    assert flat_config(grouped) == old and flat_config(OLD_REPORT_CONFIG) == OLD_REPORT_CONFIG
    with pytest.raises(ValueError, match="given twice"):
        CompressConfig.from_dict({**grouped, "max_drop": 1.5})


def _report(tmp_path, config):
    """A finished report (one file against dense) with ``config`` stored as compress stores it."""
    files = {name: tmp_path / f"{name}.onnx" for name in ("sttabt_fp32", "dense_fp32")}
    for path in files.values():
        path.write_bytes(b"x" * 1000)
    acc = {"sttabt_fp32": 79.0, "dense_fp32": 81.0}
    point = {"kind": "topk", "keep_ratio": 0.5, "retention": 0.6, "occupancy": 0.5, "flops_ratio": 0.7}
    return {
        "config": config,
        "data": {"held_out": 200, "report": 0},
        "dense": {**point, "keep_ratio": None, "retention": 1.0, "accuracy": 81.0},
        "chosen": {**point, "accuracy": 80.0},
        "search": [{**point, "accuracy": 80.0}],
        "files": {
            "paths": {k: str(v) for k, v in files.items()},
            "accuracy": {k: {"held_out": {"accuracy": a}} for k, a in acc.items()},
            "verify": {k: {"passed": True, "top1_agreement": 1.0} for k in files},
        },
        "latency": {
            "pairs": {
                "sttabt_fp32_vs_dense_fp32": {"a": {"p50_ms": 1.0}, "b": {"p50_ms": 2.0}, "ratio_p50": 0.5}
            },
            "threads": 2,
            "runs": 30,
            "block": 5,
            "seq_len": None,
        },
        "wall_s": {"total": 10.0},
    }


def test_report_reads_the_old_flat_config_and_the_grouped_one_alike(tmp_path):
    grouped = CompressConfig.from_dict(_old_here(tmp_path)).to_dict()
    grouped["data"], grouped["approxnet"]["path"] = OLD_REPORT_CONFIG["data"], OLD_REPORT_CONFIG["approx"]
    pages = []
    for name, config in (("flat", OLD_REPORT_CONFIG), ("grouped", grouped)):
        out = tmp_path / name
        out.mkdir()
        report = _report(out, config)
        write_report(out, report)
        assert report["verdict"]["max_drop"] == 1.5
        pages.append((out / "report.md").read_text().replace(str(out), "OUT"))
    assert pages[0] == pages[1] and "at most 1.5 points below dense" in pages[0]
    assert pages[1].startswith("# compress: ../shared/models/deit-tiny-imagenet")
