"""Issue #28, class 5, the cases that need a real model: wrong or noisy messages, a model fed the
other kind of input, unreadable weights, decompression bombs and LiteRT's log line. Each is one
`error:` line and exit 2 (or, for noise, silence), never a traceback."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from handmade import png_header
from PIL import Image
from tiny import WORDS, save_tiny_text_model, tiny_vit, write_sst2_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.cli_common import quiet_third_party
from sttabt_edge.cli_stderr import quiet_litert

runner = CliRunner()
FAST = ["--method", "dense", "--calib-samples", "2", "--latency-runs", "0", "--no-simplify"]
XNNPACK = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Dense exports of a tiny ViT (32x32 input) and a tiny BERT (64 positions), and their dirs."""
    root = tmp_path_factory.mktemp("late")
    tiny_vit().save_pretrained(root / "vit")
    save_tiny_text_model(root / "bert", WORDS)
    sst2 = write_sst2_dir(root / "SST-2", n_train=2, n_dev=4, seed=0)
    for name, calib in (("vit", None), ("bert", sst2 / "dev.tsv")):
        args = ["export", "--model", str(root / name), "--out", str(root / f"{name}.onnx"), *FAST]
        res = runner.invoke(app, args + (["--calib", str(calib)] if calib else []))
        assert res.exit_code == 0, res.output
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(root / "ok.png")
    return root


def one_error(res, needle):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output


def test_run_names_the_right_option_for_the_model_kind(models):
    res = runner.invoke(app, ["run", str(models / "vit.onnx"), "--text", "hello"])
    one_error(res, "vit.onnx is an image model: pass --image, not --text")
    res = runner.invoke(app, ["run", str(models / "bert.onnx"), "--image", str(models / "ok.png")])
    one_error(res, "bert.onnx is a text model: pass --text, not --image")


def test_bench_refuses_an_image_and_a_text_model_together(models):
    res = runner.invoke(app, ["bench", str(models / "vit.onnx"), "--vs", str(models / "bert.onnx")])
    one_error(res, "vit.onnx is an image model, bert.onnx is a text model")


def test_bench_seq_len_is_bounded_by_the_model(models):
    """Over the file's 64 tokens: refused up front (its worker used to die with a traceback); not
    given: the default 128 is cut to the model's limit and the benchmark runs."""
    res = runner.invoke(app, ["bench", str(models / "bert.onnx"), "--seq-len", "65"])
    one_error(res, "--seq-len 65 is over bert.onnx's limit of 64 tokens")
    args = ["bench", str(models / "bert.onnx"), "--runs", "2", "--warmup", "0", "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "64 tokens" in res.output, res.output


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("model.safetensors", b"not a safetensors file at all"),  # SafetensorError
        ("model.safetensors", b""),
        ("pytorch_model.bin", b"\x80\x02garbage"),  # UnpicklingError
        ("pytorch_model.bin", b""),  # EOFError inside torch.load
        ("pytorch_model.bin", b"hello world"),  # KeyError inside torch.load
    ],
)
def test_unreadable_weights_in_a_model_dir_are_one_line(models, tmp_path, name, data):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(models / "vit" / "config.json", broken)
    (broken / name).write_bytes(data)
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    shutil.copy(models / "ok.png", images)
    res = runner.invoke(app, ["eval", "--model", str(broken), "--data", str(images.parent)])
    one_error(res, "cannot read the model's weights")


def test_image_bombs_are_one_line_and_quiet(models, tmp_path):
    """A header claiming 400 M pixels raised Pillow's DecompressionBombError from the CLI's own
    small-image check (the API refused it cleanly); 100 M pixels printed a DecompressionBombWarning."""
    for side in (20_000, 10_000):
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(png_header(side, side))
        res = runner.invoke(app, ["run", str(models / "vit.onnx"), "--image", str(bomb)])
        one_error(res, "pixels")
        assert "DecompressionBomb" not in res.output


def test_refused_images_get_no_upscaling_warning_first(models, tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 3000)).save(thin)
    res = runner.invoke(app, ["run", str(models / "vit.onnx"), "--image", str(thin)])
    one_error(res, "aspect ratio")
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    res = runner.invoke(app, ["run", str(models / "vit.onnx"), "--image", str(small)])
    assert res.exit_code == 0 and "upscaled" in res.output, res.output


def test_litert_info_lines_are_dropped_from_fd2_unless_verbose(capfd):
    def native_writes():
        os.write(2, XNNPACK + b"\n")
        os.write(2, b"a real error from C++\n")

    with quiet_litert():
        native_writes()
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "a real error from C++" in err
    with quiet_third_party(verbose=True), quiet_litert():
        native_writes()
    assert "XNNPACK" in capfd.readouterr().err


@pytest.mark.tflite
def test_tflite_run_prints_no_litert_info_without_verbose(tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    tiny_vit().save_pretrained(tmp_path / "vit")
    out = tmp_path / "vit.tflite"
    res = runner.invoke(
        app, ["export", "--model", str(tmp_path / "vit"), "--out", str(out), "--target", "tflite", *FAST]
    )
    assert res.exit_code == 0, res.output
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    cli = [sys.executable, "-m", "sttabt_edge.cli"]
    quiet = subprocess.run([*cli, "run", str(out), "--image", str(tmp_path / "x.png")], capture_output=True)
    assert quiet.returncode == 0 and XNNPACK not in quiet.stderr, quiet.stderr
    loud = subprocess.run(
        [*cli, "--verbose", "run", str(out), "--image", str(tmp_path / "x.png")], capture_output=True
    )
    assert loud.returncode == 0 and XNNPACK in loud.stderr, loud.stderr
