"""`export --target tflite` end to end through the CLI: convert, run (runtime), verify."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.export.tflite_slots import SLOT_QUANTILE

pytest.importorskip("litert_torch")
pytestmark = pytest.mark.tflite
runner = CliRunner()


def test_cli_tflite_export_run_verify(tmp_path):
    model_dir = tmp_path / "vit"
    tiny_vit().save_pretrained(model_dir)
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "m.tflite"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(model_dir),
            "--target",
            "tflite",
            "--out",
            str(out),
            "--keep-ratio",
            "0.5",
            "--calib",
            str(images.parent),
            "--calib-samples",
            "3",
            "--approx",
            "untrained",
            "--json",
            "-",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["target"] == "tflite" and out.is_file()
    slots = summary["tflite"]["slots"]  # the default: sized from the 3 calibration images
    assert slots["sizing"] == "calibrated" and slots["calibration_samples"] == 3
    assert summary["tflite"]["kept_sizes"] == slots["sizes"] and slots["quantile"] == SLOT_QUANTILE
    res = runner.invoke(app, ["run", str(out), "--image", str(images / "0.png"), "--json"])
    assert res.exit_code == 0, res.output
    kept = json.loads(res.stdout)[0]["kept_counts"]  # union: the top layer keeps ceil(0.5 * 17) + CLS at most
    assert kept == sorted(kept, reverse=True) and 9 <= kept[-1] <= 10 and kept[0] <= 17
    res = runner.invoke(
        app, ["verify", str(out), "--reference", str(model_dir), "--data", str(images.parent)]
    )
    assert res.exit_code == 0, res.output


def test_cli_slots_only_for_tflite(tmp_path):
    model_dir = tmp_path / "vit"
    tiny_vit().save_pretrained(model_dir)
    base = ["export", "--model", str(model_dir), "--approx", "untrained", "--slots", "bound"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "--slots bound applies to --target tflite" in res.output
    assert not list(tmp_path.glob("m.*"))
