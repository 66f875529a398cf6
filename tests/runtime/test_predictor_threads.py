"""Issue #28, class 2: a loaded predictor is safe to share between threads. One predictor, four
threads started together, each call on its own input: every call must return that input's own
result (what the predictor returns when called alone), never an error and never another call's
answer. LiteRT failed 733 of 800 such calls and returned two wrong labels before its lock.

The TFLite half converts one tiny ViT (marked ``tflite``); it also checks that the exporter's
sidecar is sealed and that the runtime refuses an edited one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from handmade import image_graph, image_meta, save_sealed

from sttabt_edge.errors import ModelFileError
from sttabt_edge.runtime import Predictor, load

THREADS, CALLS = 4, 60


def feeds(size: int, count: int = 8) -> list[dict[str, np.ndarray]]:
    """Distinct inputs, one or two rows each (a two-row feed runs as two samples on TFLite)."""
    rng = np.random.default_rng(0)
    return [
        {"pixel_values": rng.standard_normal((1 + i % 2, 3, size, size)).astype(np.float32) * (i + 1)}
        for i in range(count)
    ]


def shared_calls(pred: Predictor, inputs: list[dict[str, np.ndarray]]) -> tuple[int, int, list[str]]:
    """(wrong answers, errors, first errors) over THREADS x CALLS concurrent calls; the expected
    answer of each input is its result when called alone."""
    expected = [pred.run(x)["logits"] for x in inputs]
    assert len({e.tobytes() for e in expected}) == len(inputs), "inputs must have distinct answers"
    start = threading.Barrier(THREADS)

    def worker(t: int) -> tuple[int, list[str]]:
        start.wait()
        wrong, errors = 0, []
        for k in range(CALLS):
            i = (t * 3 + k) % len(inputs)
            try:
                got = pred.run(inputs[i])["logits"]
            except Exception as e:  # counted: a shared predictor must not fail where a lone one works
                errors.append(f"{type(e).__name__}: {e}")
                continue
            wrong += not np.array_equal(got, expected[i])
        return wrong, errors

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    errors = [e for _, errs in results for e in errs]
    return sum(w for w, _ in results), len(errors), errors[:3]


def test_onnx_predictor_is_safe_to_share(tmp_path):
    path = save_sealed(image_graph(np.eye(3, 4, dtype=np.float32) * 10), tmp_path / "m.onnx", image_meta())
    assert shared_calls(load(path, threads=1), feeds(8)) == (0, 0, [])


@pytest.fixture(scope="module")
def tflite_vit(tmp_path_factory) -> Path:
    pytest.importorskip("litert_torch", reason="TFLite export needs `pip install -e '.[tflite]'`")
    pytest.importorskip("ai_edge_litert", reason="TFLite export needs `pip install -e '.[tflite]'`")
    import torch
    from tiny import tiny_vit

    from sttabt_edge.export.tflite import export_tflite
    from sttabt_edge.reducers.dense import DenseReducer
    from sttabt_edge.sparse_model import SparseClassifier

    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("tflite") / "vit.tflite"
    return export_tflite(
        SparseClassifier(tiny_vit(), DenseReducer()), out, example_inputs={"pixel_values": pixels}
    )


@pytest.mark.tflite
@pytest.mark.parametrize("threads", [1, 2])
def test_tflite_predictor_is_safe_to_share(tflite_vit, threads):
    assert shared_calls(load(tflite_vit, threads=threads), feeds(32)) == (0, 0, [])


@pytest.mark.tflite
def test_tflite_sidecar_from_the_exporter_is_sealed(tflite_vit, tmp_path):
    """The exporter's sidecar loads; the same sidecar with one label changed is refused."""
    model = tmp_path / tflite_vit.name
    model.write_bytes(tflite_vit.read_bytes())
    side = tflite_vit.with_name(tflite_vit.name + ".json")
    text = side.read_text(encoding="utf-8")
    copy = model.with_name(model.name + ".json")
    copy.write_text(text, encoding="utf-8")
    assert load(model).metadata.labels[0] == "LABEL_0"
    copy.write_text(text.replace('"LABEL_0"', '"toilet tissue"', 1), encoding="utf-8")
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load(model)
