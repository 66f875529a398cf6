"""Torch-free runtime on hand-built ONNX graphs that follow docs/onnx_contract.md."""

import json

import numpy as np
import onnx
import pytest
from handmade import image_graph, image_meta, save_sealed
from PIL import Image

from sttabt_edge.runtime import ModelFileError, load
from sttabt_edge.runtime.bench import bench, plot


def _image_model(path, weights: np.ndarray, size: int = 8) -> None:
    """logits = mean over pixels of each channel @ W; kept_counts = constant 5 per layer (B, 2)."""
    save_sealed(image_graph(weights, size), path, image_meta(size))


@pytest.fixture()
def image_model(tmp_path):
    w = np.zeros((3, 4), dtype=np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 10.0  # red -> cat, green -> dog, blue -> fish
    path = tmp_path / "tiny.onnx"
    _image_model(path, w)
    return path


def _png(path, rgb):
    Image.new("RGB", (12, 10), rgb).save(path)
    return path


def test_predict_images(image_model, tmp_path):
    pred = load(image_model, threads=1)
    red, blue = _png(tmp_path / "r.png", (255, 0, 0)), _png(tmp_path / "b.png", (0, 0, 255))
    out = pred.predict(images=[red, blue], top_k=2)
    assert [row[0] for row in out.labels] == ["cat", "fish"]
    assert out.scores.shape == (2, 2) and (np.diff(out.scores, axis=1) <= 0).all()
    assert out.kept_counts.tolist() == [[5, 5], [5, 5]]
    js = out.to_json()
    assert js[0]["top"][0]["label"] == "cat" and js[0]["kept_counts"] == [5, 5]


def test_bad_files_give_clear_errors(image_model, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(image_model.read_bytes()[:-40])
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        load(corrupt)
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    m = onnx.load(image_model)
    del m.metadata_props[:]
    onnx.save(m, plain)
    with pytest.raises(ModelFileError, match="exported by sttabt-edge"):
        load(plain)
    with pytest.raises(ModelFileError, match="unknown model type"):
        load(_png(tmp_path / "x.png", (1, 2, 3)))


def test_wrong_modality_and_empty_batch(image_model):
    pred = load(image_model)
    with pytest.raises(ValueError, match="image model: pass images, not texts"):
        pred.predict(texts=["hello"])
    with pytest.raises(ValueError, match="empty"):
        pred.predict(images=[])


@pytest.mark.parametrize("spinning", [False, True])
def test_load_sets_thread_spinning(image_model, spinning):
    opts = load(image_model, threads=1, spinning=spinning).session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spinning))
    if spinning:  # spin inside a run only: idle threads must not steal a neighbour's cores
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    else:
        with pytest.raises(RuntimeError, match="does not have configuration"):
            opts.get_session_config_entry("session.force_spinning_stop")


def test_bench_interleaved_vs(image_model, tmp_path):
    other = tmp_path / "other.onnx"
    _image_model(other, np.ones((3, 4), dtype=np.float32))
    res = bench(image_model, vs=other, threads=1, batch=2, runs=6, warmup=1, progress=False)
    assert len(res.a.runs_ms) == 6 and len(res.b.runs_ms) == 6
    assert res.a.p50_ms > 0 and res.a.peak_rss_mb > 10
    assert res.a.kept_per_layer == [5.0, 5.0]
    assert res.ratio_p10 <= res.ratio_p50 <= res.ratio_p90
    assert res.seq_len is None
    plot(res, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_bench_blocks_drop_the_cold_run(image_model, tmp_path):
    """block=3: each round runs a model 3 times and keeps the 2 warm runs; the ratio compares
    the per-round medians. A bad block size is refused before any worker starts."""
    other = tmp_path / "other.onnx"
    _image_model(other, np.ones((3, 4), dtype=np.float32))
    res = bench(image_model, vs=other, threads=1, runs=4, warmup=1, progress=False, block=3)
    assert res.block == 3 and len(res.a.runs_ms) == 8 and len(res.b.runs_ms) == 8
    rounds = [
        np.median(res.a.runs_ms[i : i + 2]) / np.median(res.b.runs_ms[i : i + 2]) for i in range(0, 8, 2)
    ]
    assert res.ratio_p50 == pytest.approx(float(np.median(rounds)))
    with pytest.raises(ValueError, match="block"):
        bench(image_model, block=0, progress=False)


def test_cli_run_and_bench(image_model, tmp_path):
    from typer.testing import CliRunner

    from sttabt_edge.cli import app

    runner = CliRunner()
    red = _png(tmp_path / "r.png", (255, 0, 0))
    res = runner.invoke(app, ["run", str(image_model), "--image", str(red), "--json", "--top-k", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["top"][0]["label"] == "cat"
    res = runner.invoke(app, ["run", str(image_model), "--text", "hello"])
    assert res.exit_code == 2 and "image model" in res.output
    out = tmp_path / "b.json"
    res = runner.invoke(
        app,
        [
            "bench",
            str(image_model),
            "--vs",
            str(image_model),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "latency ratio" in res.stdout and json.loads(out.read_text())["ratio_p50"] > 0
    assert json.loads(out.read_text())["spinning"] is False
    res = runner.invoke(
        app,
        [
            "bench",
            str(image_model),
            "--runs",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--spin",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "(spinning)" in res.stdout and json.loads(out.read_text())["spinning"] is True
