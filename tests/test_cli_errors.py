"""Every bad input: one `error:` line, exit 2, checked before any model is loaded; quiet by default."""

import logging
import warnings

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.cli_common import error_line, quiet_third_party

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ViT dir, an image folder, an (empty) .onnx path, an ApproxNet dir and a missing path."""
    root = tmp_path_factory.mktemp("cli-errors")
    tiny_vit().save_pretrained(root / "vit")
    (root / "images" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "a" / "0.png")
    (root / "m.onnx").write_bytes(b"")
    (root / "approx").mkdir()
    (root / "approx" / "approxnet.json").write_text("{}")  # an ApproxNet dir as the CLI recognises one
    return {
        "approx": str(root / "approx"),
        "vit": str(root / "vit"),
        "img": str(root / "images"),
        "png": str(root / "images" / "a" / "0.png"),
        "onnx": str(root / "m.onnx"),
        "missing": str(root / "missing"),
        "out": str(root / "o.onnx"),
    }


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any model load fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("sttabt_edge.models.loading.load_model", refuse)


BAD = {
    "export keep ratio 1.5": (
        ["export", "--model", "{vit}", "--out", "{out}", "--approx", "untrained", "--keep-ratio", "1.5"],
        "--keep-ratio",
    ),
    "export keep ratio 0": (
        ["export", "--model", "{vit}", "--out", "{out}", "--approx", "untrained", "--keep-ratio", "0"],
        "--keep-ratio",
    ),
    "export no approx": (["export", "--model", "{vit}", "--out", "{out}"], "untrained"),
    "export approx not a dir": (
        ["export", "--model", "{vit}", "--out", "{out}", "--approx", "{missing}"],
        "not an ApproxNet",
    ),
    "export approx with dense": (
        ["export", "--model", "{vit}", "--out", "{out}", "--method", "dense", "--approx", "untrained"],
        "--approx",
    ),
    "export approx factor with a dir": (
        ["export", "--model", "{vit}", "--out", "{out}", "--approx", "{approx}", "--approx-factor", "8"],
        "--approx-factor applies only to --approx untrained",
    ),
    "export approx heads with a dir": (
        ["export", "--model", "{vit}", "--out", "{out}", "--approx", "{approx}", "--approx-heads", "2"],
        "--approx-heads applies only",
    ),
    "export approx shape with dense": (
        [
            "export",
            "--model",
            "{vit}",
            "--out",
            "{out}",
            "--method",
            "dense",
            "--approx-factor",
            "8",
            "--approx-heads",
            "2",
        ],
        "--approx-factor / --approx-heads apply only",
    ),
    "export bad batch": (
        ["export", "--model", "{vit}", "--out", "{out}", "--method", "dense", "--batch", "0"],
        "--batch",
    ),
    "export missing calib": (
        ["export", "--model", "{vit}", "--out", "{out}", "--method", "dense", "--calib", "{missing}"],
        "--calib",
    ),
    "export wrong suffix": (
        ["export", "--model", "{vit}", "--out", "{missing}.tflite", "--method", "dense"],
        ".onnx",
    ),
    "export bad quantize": (
        ["export", "--model", "{vit}", "--out", "{out}", "--method", "dense", "--quantize", "int4"],
        "--quantize",
    ),
    "export tflite batch": (
        [
            "export",
            "--model",
            "{vit}",
            "--out",
            "{missing}.tflite",
            "--target",
            "tflite",
            "--method",
            "dense",
            "--batch",
            "4",
        ],
        "static batch of 1",
    ),
    "export missing model": (
        ["export", "--model", "{missing}", "--out", "{out}", "--method", "dense"],
        "no such file",
    ),
    "eval missing data": (["eval", "--model", "{vit}", "--data", "{missing}"], "--data"),
    "eval keep ratio": (
        ["eval", "--model", "{vit}", "--data", "{img}", "--keep-ratio", "1.5"],
        "--keep-ratio",
    ),
    "eval sttabt no approx": (
        ["eval", "--model", "{vit}", "--data", "{img}", "--method", "sttabt"],
        "oracle",
    ),
    "eval batch size": (["eval", "--model", "{vit}", "--data", "{img}", "--batch-size", "0"], "--batch-size"),
    "info missing model": (["info", "--model", "{missing}"], "no such file"),
    "bench runs 0": (["bench", "{onnx}", "--runs", "0"], "--runs"),
    "bench warmup": (["bench", "{onnx}", "--warmup", "-1"], "--warmup"),
    "bench runs not a number": (["bench", "{onnx}", "--runs", "many"], "--runs"),
    "bench missing model": (["bench", "{missing}.onnx"], "no such file"),
    "run nothing to run": (["run", "{onnx}"], "--image"),
    "run top-k": (["run", "{onnx}", "--text", "hi", "--top-k", "0"], "--top-k"),
    "run missing image": (["run", "{onnx}", "--image", "{missing}.png"], "--image"),
    "show keep ratio": (
        [
            "show",
            "--model",
            "{vit}",
            "--image",
            "{png}",
            "--out",
            "{missing}.png",
            "--keep-ratio",
            "0",
            "--approx",
            "oracle",
        ],
        "--keep-ratio",
    ),
    "show sttabt no approx": (
        ["show", "--model", "{vit}", "--image", "{png}", "--out", "{missing}.png"],
        "oracle",
    ),
    "verify missing data": (["verify", "{onnx}", "--reference", "{vit}", "--data", "{missing}"], "--data"),
    "train missing data": (
        ["train", "approx", "--model", "{vit}", "--data", "{missing}", "--out", "{missing}"],
        "--data",
    ),
    "missing option": (["export", "--out", "{out}"], "--model"),
    "unknown global option": (["--bogus"], "No such option: --bogus"),
    "unknown verb": (["bogus"], "No such command 'bogus'"),
    "unknown option of a verb": (["export", "--bogus"], "No such option: --bogus"),
    "unknown train verb": (["train", "bogus"], "No such command 'bogus'"),
    "unknown option of a train verb": (["train", "approx", "--bogus"], "No such option: --bogus"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_before_loading(case, files, no_model_load):
    args, needle = BAD[case]
    res = runner.invoke(app, [a.format(**files) for a in args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output


def test_sttabt_errors_reaching_the_top_are_one_line(tmp_path):
    """The group handler: an SttabtError no command catches (here: info on an unsupported config)."""
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    res = runner.invoke(app, ["info", "--model", str(d)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not supported" in res.output
    (d / "config.json").write_text("{not json")
    res = runner.invoke(app, ["info", "--model", str(d)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "not valid JSON" in res.output


def test_one_line_keeps_details_for_verbose():
    msg = "weights do not match\n  missing: a, b\n  unexpected: c"
    assert error_line(msg) == "weights do not match (2 more lines with --verbose)"
    assert error_line(msg, verbose=True) == msg


def test_quiet_third_party_silences_and_restores(caplog):
    torchao = logging.getLogger("torchao")
    before = torchao.level
    with quiet_third_party(verbose=False), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # what a plain run shows; the quiet filters sit on top of it
        with quiet_third_party(verbose=False):
            logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
            logging.getLogger("torch.utils._pytree").warning("Enum subclass ... deprecated")
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert not seen and "Failed to load" not in caplog.text and "deprecated" not in caplog.text
    assert torchao.level == before
    with quiet_third_party(verbose=True):
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
    assert "Failed to load" in caplog.text


def test_verbose_is_a_global_option(files):
    res = runner.invoke(app, ["--verbose", "info", "--model", files["vit"]])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--verbose", "info", "--model", files["missing"]])
    assert res.exit_code == 2 and "error:" in res.output


def test_help_still_prints_help():
    """The one-line usage errors leave --help, and a group's help when called bare, alone."""
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "Usage" in res.output and "error:" not in res.output
    res = runner.invoke(app, ["train"])  # no_args_is_help: click's own exit 2, help and nothing else
    assert res.exit_code == 2 and "approx" in res.output and "error:" not in res.output
