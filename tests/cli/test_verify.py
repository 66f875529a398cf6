"""`verify`: passes on real exports, fails (exit 1) on a deliberately corrupted one."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny import tiny_vit, write_image_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.export.metadata import read_metadata, set_metadata

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    model_dir = root / "vit"
    tiny_vit().save_pretrained(model_dir)
    images = write_image_dir(root / "images", per_class=4, hw=(40, 40), seed=0)
    out = root / "sttabt.onnx"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--keep-ratio",
            "0.5",
            "--approx",
            "untrained",
            "--calib",
            str(images),
            "--calib-samples",
            "4",
            "--latency-runs",
            "0",
            "--no-simplify",
        ],
    )
    assert res.exit_code == 0, res.output
    return model_dir, images, out


def test_verify_passes_on_the_export(exported, tmp_path):
    model_dir, images, out = exported
    report = tmp_path / "r.json"
    res = runner.invoke(
        app, ["verify", str(out), "--reference", str(model_dir), "--data", str(images), "--json", str(report)]
    )
    assert res.exit_code == 0, res.output
    got = json.loads(report.read_text())
    assert got["passed"] and got["samples"] == 8 and got["top1_agreement"] == 1.0
    assert got["max_abs_logit"] < 1e-4 and got["kept_agreement"] == 1.0


def test_verify_fails_on_corrupted_weights(exported, tmp_path):
    """Weights changed after export are refused on load (digest); a wrong export whose digest was
    recorded with the wrong weights loads, and verify catches its answers."""
    model_dir, images, out = exported
    m = onnx.load(out)
    biggest = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(biggest).copy()
    w *= -1.5  # a silently wrong graph: loads and runs, gives other answers
    biggest.CopyFrom(numpy_helper.from_array(w, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(m, tampered)
    res = runner.invoke(app, ["verify", str(tampered), "--reference", str(model_dir), "--data", str(images)])
    assert res.exit_code == 2 and "digest mismatch" in res.output
    set_metadata(m, read_metadata(out))  # sealed as if the exporter had written the wrong weights
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    res = runner.invoke(app, ["verify", str(bad), "--reference", str(model_dir), "--data", str(images)])
    assert res.exit_code == 1
    assert "verify FAILED" in res.output and "max abs logit diff" in res.output


def test_verify_truncated_file_is_a_clear_error(exported, tmp_path):
    model_dir, images, out = exported
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    res = runner.invoke(app, ["verify", str(cut), "--reference", str(model_dir), "--data", str(images)])
    assert res.exit_code == 2 and "not a loadable ONNX model" in res.output


@pytest.mark.parametrize(("method", "ratio"), [("tome", "0.5"), ("topk", "0.6"), ("dense", None)])
def test_verify_rebuilds_every_export_kind_from_its_metadata(exported, tmp_path, method, ratio):
    """The file records its whole reducer spec (ToMe's keep_ratio has no per-layer schedule: the
    keep_schedule key alone could not rebuild it), so verify needs nothing but the dense model."""
    model_dir, images, _ = exported
    out = tmp_path / f"{method}.onnx"
    args = [
        "export",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--method",
        method,
        "--calib",
        str(images),
    ]
    args += [
        "--calib-samples",
        "4",
        "--latency-runs",
        "0",
        "--no-simplify",
        *(["--keep-ratio", ratio] if ratio else []),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert meta["reducer_spec"]["name"] == method
    res = runner.invoke(app, ["verify", str(out), "--reference", str(model_dir), "--data", str(images)])
    assert res.exit_code == 0, res.output
