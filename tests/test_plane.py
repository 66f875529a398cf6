"""benchmarks/plane.py: every point exported, evaluated through the runtime and timed against dense."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
from tiny import save_tiny_text_model

from sttabt_edge.compress.stages import runtime_accuracy
from sttabt_edge.data import glue_tsv
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.models.loading import load_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WORDS = "a the film movie good bad great dull fun boring plot actor story is was not very and of it".split()


def test_plane_exports_evaluates_and_times_every_point(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    plane = importlib.import_module("plane")
    data = tmp_path / "SST-2"
    data.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("dev", 12)):
        rows = [" ".join(rng.choice(WORDS, rng.integers(3, 14))) + f"\t{i % 2}" for i in range(n)]
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    model = save_tiny_text_model(tmp_path / "bert", WORDS, num_labels=2)
    approx = build_approxnet(load_model(model), 2, "interpolate").save(tmp_path / "approx")
    out = tmp_path / "plane.json"
    argv = ["plane.py", "--model", str(model), "--data", str(data), "--approx", str(approx)]
    argv += ["--sttabt-ratios", "0.5", "0.3", "--quantize", "int8", "--runs", "2"]
    argv += ["--block", "2", "--threads", "1", "--work", str(tmp_path / "w"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    plane.main()
    res = json.loads(out.read_text())
    got = {(r["name"], r["kind"]): r for r in res["rows"]}
    assert set(got) == {(n, k) for n in ("dense", "sttabt@0.5", "sttabt@0.3") for k in ("fp32", "int8")}
    dev = glue_tsv(data / "dev.tsv")
    for r in res["rows"]:  # accuracy is the runtime's on the evaluation set, and every file was timed
        assert r["accuracy"] == runtime_accuracy(Path(r["file"]), dev)["accuracy"]
        assert r["p50_ms"] > 0 and r["x_dense_fp32"] > 0 and r["x_dense_int8"] > 0
    assert got[("dense", "fp32")]["flops_ratio"] == 1.0 and got[("sttabt@0.5", "fp32")]["retention"] < 1.0
    assert got[("dense", "int8")]["x_dense_int8"] == 1.0 and res["eval_examples"] == 12 and res["commit"]
    assert out.with_suffix(".png").stat().st_size > 1000
