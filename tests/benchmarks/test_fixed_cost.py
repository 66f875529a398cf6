"""benchmarks/fixed_cost.py: cut a shipped STTABT file into its ApproxNet and back-tracking prefixes."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tiny import WORDS, save_tiny_text_model
from typer.testing import CliRunner

from sttabt_edge.cli import app

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _export(model: Path, out: Path, *extra: str) -> Path:
    argv = ["export", "--model", str(model), "--out", str(out), "--batch", "1", "--latency-runs", "0", *extra]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    return out


def test_fixed_cost_cuts_the_file_and_times_every_part(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    fc = importlib.import_module("fixed_cost")
    model = save_tiny_text_model(tmp_path / "bert", WORDS, num_labels=2)
    sparse = _export(model, tmp_path / "s.onnx", "--approx", "untrained", "--keep-ratio", "0.3")
    dense = _export(model, tmp_path / "d.onnx", "--method", "dense")
    cuts = fc.cut(sparse, tmp_path)
    ids = np.array([[1, 5, 6, 7, 8, 9, 10, 2]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    full = ort.InferenceSession(str(sparse), providers=["CPUExecutionProvider"]).run(None, feeds)
    masks = ort.InferenceSession(str(cuts["approxnet+masks"]), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(masks.run(["kept_counts"], feeds)[0], full[1])  # the same back-tracking
    approx = ort.InferenceSession(str(cuts["approxnet"]), providers=["CPUExecutionProvider"])
    maps = approx.run(None, feeds)
    assert len(maps) == 3 and all(np.allclose(m.sum(-1), 1.0, atol=1e-5) for m in maps)  # probabilities
    out = tmp_path / "fc.json"
    argv = ["fixed_cost.py", "--file", str(sparse), "--dense", str(dense), "--lengths", "6", "12"]
    monkeypatch.setattr(sys, "argv", [*argv, "--runs", "3", "--out", str(out)])
    fc.main()
    res = json.loads(out.read_text())
    assert [r["tokens"] for r in res["rows"]] == [6, 12] and res["environment"]["commit"]
    for r in res["rows"]:
        parts = r["parts"]
        assert parts["dense"]["x_dense"] == 1.0 and all(parts[k]["p50_ms"] > 0 for k in fc.PARTS)
        assert 1 <= r["mean_kept"] <= r["tokens"] and parts["dense_at_kept"]["p50_ms"] > 0  # the ceiling
        assert (
            parts["sparse_model"]["p50_ms"]
            == parts["pipeline"]["p50_ms"] - parts["approxnet+masks"]["p50_ms"]
        )
    assert res["ort_nodes"]["approxnet"] < res["ort_nodes"]["approxnet+masks"] < res["ort_nodes"]["pipeline"]
    monkeypatch.setattr(
        sys, "argv", ["fixed_cost.py", "--file", str(dense), "--dense", str(dense), "--out", str(out)]
    )
    try:
        fc.main()
    except SystemExit as e:
        assert "not an STTABT export" in str(e)
    else:
        raise AssertionError("a dense file was accepted")
