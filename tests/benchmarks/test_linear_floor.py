"""benchmarks/linear_floor.py builds the graph it claims to time (checked against numpy)."""

import importlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import load_model_from_string, numpy_helper

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_linear_stack_is_the_model_linear_layers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    lf = importlib.import_module("linear_floor")
    blob = lf.linear_stack(layers=2, c=8, ffn=16)
    w = {t.name: numpy_helper.to_array(t) for t in load_model_from_string(blob).graph.initializer}
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    ref, h = [], x
    for i in range(2):  # Q, K, V, O read the layer input; FC1 reads O; FC2 reads FC1
        ys = [h @ w[f"w{i}_{j}"] + w[f"b{i}_{j}"] for j in range(4)]
        f1 = ys[3] @ w[f"w{i}_4"] + w[f"b{i}_4"]
        h = f1 @ w[f"w{i}_5"] + w[f"b{i}_5"]
        ref += ys[:3]
    assert w["w0_4"].shape == (8, 16) and w["w1_5"].shape == (16, 8)
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, r in zip(got, ref + [h], strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    ms = lf.time_counts(blob, 8, [1, 5], threads=1, runs=3, spinning=False)
    assert set(ms) == {1, 5} and all(t > 0 for t in ms.values())
