"""Issue #28, class 4: no command writes onto one of its own inputs, outputs are checked before the
work starts, and what the CLI writes is replaced atomically (a temp file beside it, then os.replace)."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.cli_outputs import write_output, write_text_output

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ViT dir, an image folder, a stand-in model file and a GLUE-like TSV (their bytes are
    compared after each refusal: nothing may have touched them)."""
    root = tmp_path_factory.mktemp("cli-outputs")
    tiny_vit().save_pretrained(root / "vit")
    (root / "images" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "a" / "0.png")
    (root / "m.onnx").write_bytes(b"an exported model: these bytes must survive")
    (root / "SST-2").mkdir()
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\n")
    return root


@pytest.fixture()
def nothing_loads(monkeypatch):
    """The refusals must come before any model (PyTorch or exported) loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr("sttabt_edge.models.loading.load_model", refuse)
    monkeypatch.setattr("sttabt_edge.runtime.load", refuse)


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(args, needle):
    res = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_bench_json_onto_the_model_is_refused(files, nothing_loads, tmp_path):
    model = files / "m.onnx"
    before = snapshot(files)
    refused(["bench", model, "--json", model], "is the command's input model")
    refused(["bench", model, "--plot", model], "--plot")  # a .onnx is no plot suffix either way
    link = tmp_path / "link.json"
    link.symlink_to(model)
    refused(["bench", model, "--json", link], "is the command's input model")
    hard = tmp_path / "hard.json"
    os.link(model, hard)
    refused(["bench", model, "--json", hard], "is the command's input model")
    assert snapshot(files) == before


def test_two_outputs_of_one_command_are_distinct(files, nothing_loads, tmp_path):
    refused(["bench", files / "m.onnx", "--json", tmp_path / "r.png", "--plot", tmp_path / "r.png"], "also")
    out = tmp_path / "x.onnx"
    refused(["export", "--model", files / "vit", "--out", out, "--method", "dense", "--json", out], "also")


def test_show_out_onto_its_image_is_refused(files, nothing_loads):
    image = files / "images" / "a" / "0.png"
    before = snapshot(files)
    args = ["show", "--model", files / "vit", "--image", image, "--out", image, "--method", "topk"]
    refused(args, "is the command's input --image")
    assert snapshot(files) == before


def test_outputs_inside_an_input_folder_never_replace_its_files(files, nothing_loads):
    before = snapshot(files)
    config = files / "vit" / "config.json"
    refused(
        ["eval", "--model", files / "vit", "--data", files / "images", "--json", config], "inside the input"
    )
    refused(
        [
            "verify",
            files / "m.onnx",
            "--reference",
            files / "vit",
            "--data",
            files / "images",
            "--json",
            config,
        ],
        "inside the input",
    )
    refused(
        [
            "export",
            "--model",
            files / "vit",
            "--out",
            files / "x.onnx",
            "--method",
            "dense",
            "--json",
            config,
        ],
        "inside the input",
    )
    assert snapshot(files) == before


def test_run_folders_are_never_an_input_or_inside_one(files, nothing_loads):
    before = snapshot(files)
    for out in (files / "vit", files / "vit" / "run", files / "images" / "run"):
        refused(
            ["train", "approx", "--model", files / "vit", "--data", files / "images", "--out", out], "--out"
        )
        args = [
            "compress",
            "--model",
            files / "vit",
            "--data",
            files / "images",
            "--out",
            out,
            "--max-drop",
            "1",
        ]
        refused(args, "--out")
    assert snapshot(files) == before and not (files / "vit" / "run").exists()


def test_read_only_folders_are_refused_up_front(files, nothing_loads, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway; os.access answers as the user would be answered
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode))
    try:
        refused(["bench", files / "m.onnx", "--json", locked / "r.json"], "not writable")
        refused(
            ["export", "--model", files / "vit", "--out", locked / "m.onnx", "--method", "dense"],
            "not writable",
        )
        args = [
            "train",
            "approx",
            "--model",
            files / "vit",
            "--data",
            files / "images",
            "--out",
            locked / "run",
        ]
        refused(args, "not writable")
    finally:
        locked.chmod(0o755)


def test_a_missing_folder_is_created_when_the_output_is_written(tmp_path):
    target = tmp_path / "new" / "deeper" / "r.json"
    write_text_output(target, '{"ok": true}')
    assert json.loads(target.read_text()) == {"ok": True}
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_writes_are_atomic(tmp_path):
    """A write that fails half-way leaves the old file whole and no temp file; a good one replaces
    it in one step, keeping its permissions; writers that go by suffix (Pillow) see the real one."""
    target = tmp_path / "report.json"
    target.write_text('{"old": 1}')
    target.chmod(0o640)

    def half_then_fail(tmp):
        tmp.write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_output(target, half_then_fail)
    assert target.read_text() == '{"old": 1}' and sorted(tmp_path.iterdir()) == [target]
    write_text_output(target, '{"new": 2}')
    assert json.loads(target.read_text()) == {"new": 2} and sorted(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o640
    png = tmp_path / "grid.png"
    write_output(png, lambda tmp: Image.new("RGB", (4, 4)).save(tmp))
    with Image.open(png) as im:
        assert im.format == "PNG"


def test_folders_that_refuse_new_files_are_refused_up_front(files, nothing_loads, tmp_path):
    """/proc takes no new file, yet access(2) tells root it is writable: `--json /proc/x.json` used to
    fail after the work with a traceback. The check now creates (and removes) a file to be sure."""
    from sttabt_edge.cli_outputs import _can_create_in

    refused(["bench", files / "m.onnx", "--json", "/proc/sttabt-test/r.json"], "folder /proc is not writable")
    refused(["eval", "--model", files / "vit", "--data", files / "images", "--json", "/proc/r.json"], "/proc")
    args = ["train", "approx", "--model", files / "vit", "--data", files / "images", "--out", "/proc/run"]
    refused(args, "folder /proc is not writable")
    assert _can_create_in(tmp_path) and list(tmp_path.iterdir()) == []  # the probe leaves nothing


def test_a_write_that_fails_late_is_one_line(tmp_path, monkeypatch):
    """A folder that turns unwritable between the check and the write: one error line, no traceback."""
    import typer

    target = tmp_path / "gone" / "r.json"
    (tmp_path / "gone").write_text("a file where the folder was")
    with pytest.raises(typer.Exit) as err:
        write_text_output(target, "{}")
    assert err.value.exit_code == 2
    monkeypatch.setattr(
        os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(typer.Exit):
        write_text_output(tmp_path / "r.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone"]  # no temp file left


def test_outputs_never_replace_the_files_a_model_reads(tmp_path):
    """`bench m.onnx --json m.tokenizer.json` replaced the text model's tokenizer, `bench m.tflite --json
    m.tflite.json` would replace the sidecar: the files the runtime reads beside a model (tokenizer,
    sidecar, external data) are the command's inputs too, for bench and verify alike."""
    from handmade import save_sealed, text_graph, text_meta, word_tokenizer

    from sttabt_edge.runtime.modelfile import companion_files

    model = tmp_path / "m.onnx"
    word_tokenizer(tmp_path / "m.tokenizer.json")
    save_sealed(text_graph(), model, text_meta("m.tokenizer.json"))
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3")
    (tmp_path / "m.tflite.json").write_text(json.dumps(text_meta("m.tokenizer.json")))
    assert companion_files(model) == [("tokenizer", tmp_path / "m.tokenizer.json")]
    assert companion_files(tfl) == [
        ("sidecar", tmp_path / "m.tflite.json"),
        ("tokenizer", tmp_path / "m.tokenizer.json"),
    ]
    assert companion_files(tmp_path / "missing.onnx") == []  # best effort: never raises
    before = snapshot(tmp_path)
    refused(["bench", model, "--json", tmp_path / "m.tokenizer.json"], "model's tokenizer")
    refused(["bench", tfl, "--json", tmp_path / "m.tflite.json"], "model's sidecar")
    refused(
        ["bench", tfl, "--vs", model, "--plot", tmp_path / "x.png", "--json", tmp_path / "m.tokenizer.json"],
        "tokenizer",
    )
    refused(
        ["verify", tfl, "--reference", "x", "--data", tmp_path, "--json", tmp_path / "m.tflite.json"],
        "sidecar",
    )
    assert snapshot(tmp_path) == before
