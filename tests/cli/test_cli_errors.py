"""Every bad input: one `error:` line, exit 2, checked before any model is loaded; quiet by default."""

import logging
import shlex
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
    (root / "bert").mkdir()  # a text model as the up-front checks see one: its config.json alone
    (root / "bert" / "config.json").write_text(
        '{"model_type": "bert", "architectures": ["BertForSequenceClassification"], '
        '"max_position_embeddings": 64, "num_hidden_layers": 3, "num_attention_heads": 4, '
        '"hidden_size": 32, "intermediate_size": 64}'
    )
    (root / "SST-2").mkdir()
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\n")
    (root / "notes.txt").write_text("a file where a folder belongs")
    (root / "d.onnx").mkdir()  # a folder where an output file belongs
    return {
        "approx": str(root / "approx"),
        "vit": str(root / "vit"),
        "bert": str(root / "bert"),
        "tsv": str(root / "SST-2" / "dev.tsv"),
        "img": str(root / "images"),
        "png": str(root / "images" / "a" / "0.png"),
        "onnx": str(root / "m.onnx"),
        "missing": str(root / "missing"),
        "out": str(root / "o.onnx"),
        "file": str(root / "notes.txt"),
        "root": str(root),
    }


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any model load fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("sttabt_edge.models.loading.load_model", refuse)
    monkeypatch.setattr("sttabt_edge.runtime.load", refuse)  # run, bench, verify: the exported file


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

# Issue #28, class 5: values, kinds of input and output paths, all checked up front, before any
# model or file loads; output paths among them are checked before the work (command lines split as
# a shell would).
TRAIN = "train approx --model {vit} --data {img} --out {missing}"
EXPORT = "export --model {vit} --out {out} --method dense"
VERIFY = "verify {onnx} --reference {vit} --data {img}"
COMPRESS = "compress --model {vit} --data {img} --out {missing} --max-drop 1"
UPFRONT = {
    "epochs inf": (TRAIN + " --epochs inf", "--epochs must be a finite number"),
    "epochs nan": (TRAIN + " --epochs nan", "--epochs"),
    "train lr nan": (TRAIN + " --lr nan", "--lr"),
    "train batch 100000": (TRAIN + " --batch-size 100000", "--batch-size must be <= 4096"),
    "train max eval samples -1": (TRAIN + " --max-eval-samples -1", "--max-eval-samples must be >= 0"),
    "train baseline without --method": (
        "train baseline --model {vit} --data {img} --out {missing}",
        "Missing option '--method'. Choose from: ltp, topk",
    ),
    "train text model, image folder": (
        "train approx --model {bert} --data {img} --out {missing}",
        "is an image folder but the model is a text model",
    ),
    "train image model, text data": (
        "train approx --model {vit} --data {tsv} --out {missing}",
        "is text data but the model is an image model",
    ),
    "compress text model, image folder": (
        "compress --model {bert} --data {img} --out {missing} --max-drop 1",
        "is an image folder but the model is a text model",
    ),
    "bench batch 100000": ("bench {onnx} --batch 100000", "--batch must be <= 4096"),
    "bench seq-len 100000": ("bench {onnx} --seq-len 100000", "--seq-len must be <= 65536"),
    "bench threads 10^6": ("bench {onnx} --threads 1000000", "--threads"),
    "export batch 100000": (EXPORT + " --batch 100000", "--batch"),
    "export seq-len 100000": (EXPORT + " --seq-len 100000", "--seq-len must be <= 65536"),
    "export tflite seq-len over the positions": (
        "export --model {bert} --out {missing}.tflite --target tflite --method dense --seq-len 65",
        "over the model's 64 positions",
    ),
    "export opset 0": (EXPORT + " --opset 0", "--opset"),
    "export opset 13": (EXPORT + " --opset 13", "[14, 23]"),
    "export opset 24": (EXPORT + " --opset 24", "[14, 23]"),
    "export calib samples 100000": (EXPORT + " --calib-samples 100000", "--calib-samples"),
    "export text model, image calib": (
        "export --model {bert} --out {out} --method dense --calib {img}",
        "a text model",
    ),
    "eval batch 100000": ("eval --model {vit} --data {img} --batch-size 100000", "--batch-size"),
    "eval keep ratio nan": ("eval --model {vit} --data {img} --keep-ratio nan", "--keep-ratio"),
    "eval text model, images": ("eval --model {bert} --data {img}", "a text model"),
    "eval image model, text": ("eval --model {vit} --data {tsv}", "an image model"),
    "compress budget nan": (COMPRESS + " --budget-minutes nan", "--budget-minutes"),
    "compress budget inf": (COMPRESS + " --budget-minutes inf", "--budget-minutes"),
    "compress max-length over the positions": (
        "compress --model {bert} --data {tsv} --out {missing} --max-drop 1 --max-length 100000",
        "--max-length",
    ),
    "compress batch 100000": (COMPRESS + " --batch-size 100000", "--batch-size"),
    "verify max abs logit nan": (VERIFY + " --max-abs-logit nan", "--max-abs-logit"),
    "verify max abs logit inf": (VERIFY + " --max-abs-logit inf", "--max-abs-logit"),
    "verify max abs logit -1": (VERIFY + " --max-abs-logit -1", "--max-abs-logit"),
    "verify top-1 agreement nan": (VERIFY + " --min-top1-agreement nan", "--min-top1-agreement"),
    "verify top-1 agreement inf": (VERIFY + " --min-top1-agreement inf", "--min-top1-agreement"),
    "verify kept agreement -1": (VERIFY + " --min-kept-agreement -1", "--min-kept-agreement"),
    "verify kept agreement 1.5": (VERIFY + " --min-kept-agreement 1.5", "--min-kept-agreement"),
    "verify text reference, images": ("verify {onnx} --reference {bert} --data {img}", "a text model"),
    "run image and text together": ("run {onnx} --image {png} --text hi", "not both"),
    "run empty text": ("run {onnx} --text ''", "empty"),
    "run whitespace text": ("run {onnx} --text ' \t '", "empty"),
    "run empty half of a pair": ("run {onnx} --text 'a good film |||  '", "empty"),
    "show empty text": ("show --model {bert} --text '  ' --out {missing}.html --method topk", "empty"),
    "show text model, image": (
        "show --model {bert} --image {png} --out {missing}.png --method topk",
        "a text model: pass --text",
    ),
    "show image model, text": (
        "show --model {vit} --text hi --out {missing}.html --method topk",
        "an image model: pass --image",
    ),
    "show out suffix": ("show --model {vit} --image {png} --out {missing}.html --method topk", ".png"),
    "show bogus method": ("show --model {vit} --image {png} --out {missing}.png --method bogus", "--method"),
    "bench json is a folder": ("bench {onnx} --json {img}", "is a folder"),
    "bench json under a file": ("bench {onnx} --json {file}/r.json", "is a file, not a folder"),
    "bench plot suffix": ("bench {onnx} --plot {missing}.txt", ".png"),
    "eval json is a folder": ("eval --model {vit} --data {img} --json {img}", "is a folder"),
    "verify json is a folder": (VERIFY + " --json {img}", "is a folder"),
    "show out is a folder": ("show --model {vit} --image {png} --out {img} --method topk", "is a folder"),
    "export out is a folder": ("export --model {vit} --out {root}/d.onnx --method dense", "is a folder"),
    "export out under a file": (
        "export --model {vit} --out {file}/x.onnx --method dense",
        "is a file, not a folder",
    ),
    "export json is a folder": (EXPORT + " --json {img}", "is a folder"),
    "train out is a file": ("train approx --model {vit} --data {img} --out {file}", "is a file"),
    "compress out is a file": ("compress --model {vit} --data {img} --out {file} --max-drop 1", "is a file"),
}
BAD.update({name: (shlex.split(line), needle) for name, (line, needle) in UPFRONT.items()})


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


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ("--target tflite --fuse", "--fuse is ONNX-only"),
        ("--target tflite --batch 2", "static batch of 1"),
        ("--target tflite --quantize int8-static", "int8-static is ONNX-only"),
        ("--slots bound", "--slots bound applies to --target tflite"),
    ],
)
def test_export_options_that_exclude_each_other_are_refused_before_torch(files, monkeypatch, options, needle):
    """These were refused by the request's own check inside run_export, after the ~10 s torch import
    (found by scripts/audit_hardening.py); the CLI now refuses them with the other values."""

    def refuse(*args, **kwargs):
        raise AssertionError("run_export was reached")

    monkeypatch.setattr("sttabt_edge.export.pipeline.run_export", refuse)
    suffix = "tflite" if "tflite" in options else "onnx"
    args = f"export --model {files['vit']} --out {files['root']}/c.{suffix} --method dense {options}"
    res = runner.invoke(app, shlex.split(args))
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


STUBS = (
    "sttabt_edge.models.loading.load_model",
    "sttabt_edge.export.pipeline.run_export",
    "sttabt_edge.compress.run_compress",
    "sttabt_edge.cli_train._load_training",
)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (
            "export --model {vit} --out {out} --approx untrained --approx-heads 3",
            "heads must divide the teacher's 4",
        ),
        (
            "export --model {vit} --out {out} --approx untrained --approx-factor 1000",
            "factor 1000 does not fit",
        ),
        (
            "compress --model {vit} --data {img} --out {root}/c --max-drop 1 --approx-heads 3",
            "heads must divide",
        ),
        (
            "compress --model {vit} --data {img} --out {root}/c --max-drop 1 --approx {img}",
            "not an ApproxNet folder",
        ),
        ("train approx --model {vit} --data {img} --out {root}/t --heads 3", "heads must divide"),
        ("train approx --model {vit} --data {img} --out {root}/t --factor 64", "factor 64 does not fit"),
        (
            "train concrete --model {vit} --data {img} --out {root}/t --approx {img}",
            "not an ApproxNet folder",
        ),
    ],
)
def test_approxnet_shape_and_folder_are_checked_before_torch(files, monkeypatch, line, needle):
    """An ApproxNet that cannot fit the model (config.json) or a folder that holds none was refused
    only after the model loaded (found by scripts/audit_hardening.py): now with the other values."""

    def refuse(*args, **kwargs):
        raise AssertionError("the work started")

    for target in STUBS:
        monkeypatch.setattr(target, refuse)
    res = runner.invoke(app, [a.format(**files) for a in shlex.split(line)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


def test_amp_fp16_without_cuda_is_one_line_up_front(files, monkeypatch):
    """It used to fail after the load, below torch's GradScaler warning."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: fp16 is allowed")
    monkeypatch.setattr("sttabt_edge.cli_train._load_training", lambda *a, **k: pytest.fail("loaded"))
    line = "train approx --model {vit} --data {img} --out {root}/t --amp fp16"
    res = runner.invoke(app, [a.format(**files) for a in shlex.split(line)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and lines == [
        "error: --amp fp16 needs a CUDA device (none here); use --amp bf16 on CPU"
    ]
