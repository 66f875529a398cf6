"""The product path as a user walks it, on a tiny ViT: train approx -> train concrete -> export the
trained dir -> verify against it -> run, all through the CLI."""

import json

import pytest
from tiny import tiny_vit, write_image_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app

runner = CliRunner()


@pytest.fixture()
def image_dir(tmp_path):
    return write_image_dir(tmp_path / "images", per_class=4, hw=(40, 48), seed=0)


@pytest.mark.parametrize("concrete", ["ste", "official"])
def test_train_export_verify_run(tmp_path, image_dir, concrete):
    model = tmp_path / "vit"
    tiny_vit().save_pretrained(model)
    common = ["--data", str(image_dir), "--steps", "2", "--batch-size", "4"]
    res = runner.invoke(
        app, ["train", "approx", "--model", str(model), "--out", str(tmp_path / "ax"), *common]
    )
    assert res.exit_code == 0, res.output
    trained = tmp_path / "sttabt"
    res = runner.invoke(
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model),
            "--approx",
            str(tmp_path / "ax"),
            "--target-retention",
            "0.6",
            "--concrete",
            concrete,
            "--out",
            str(trained),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    onnx = tmp_path / "m.onnx"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(trained),
            "--out",
            str(onnx),
            "--calib",
            str(image_dir),
            "--calib-samples",
            "4",
            "--latency-runs",
            "0",
            "--no-simplify",
            "--json",
            "-",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == "sttabt" and summary["parity"]["max_abs_diff"] <= 1e-4
    meta_res = runner.invoke(app, ["run", str(onnx), "--image", str(image_dir / "a" / "0.png"), "--json"])
    assert meta_res.exit_code == 0, meta_res.output
    kept = json.loads(meta_res.stdout)[0]["kept_counts"]
    assert len(kept) == 3 and kept == sorted(kept, reverse=True)
    res = runner.invoke(app, ["verify", str(onnx), "--reference", str(trained), "--data", str(image_dir)])
    assert res.exit_code == 0, res.output
    # a trained dir brings its own ApproxNet: a second one is refused in one line
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(trained),
            "--out",
            str(tmp_path / "x.onnx"),
            "--approx",
            str(tmp_path / "ax"),
        ],
    )
    assert res.exit_code == 2 and "drop --approx" in res.output
