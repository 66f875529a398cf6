"""bench --inputs: real inputs, taken in turn, the same sequence for both models of a pair."""

import json

import numpy as np
import pytest
from handmade import image_graph, image_meta, save_sealed, text_graph, text_meta, word_tokenizer
from PIL import Image

from sttabt_edge.errors import InputError, InputNotFoundError
from sttabt_edge.runtime import load
from sttabt_edge.runtime.bench import bench
from sttabt_edge.runtime.bench_inputs import read_inputs, write_text_inputs


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture()
def text_model(tmp_path):
    word_tokenizer(tmp_path / "m.tokenizer.json")
    return save_sealed(
        text_graph(kept=True), tmp_path / "m.onnx", text_meta("m.tokenizer.json", max_length=6)
    )


@pytest.fixture()
def image_model(tmp_path):
    return save_sealed(image_graph(np.eye(3, 4, dtype=np.float32)), tmp_path / "img.onnx", image_meta())


def test_text_file_lines_pairs_batches_and_truncation(text_model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("w2 w3\n\n  \nw2 w3 w4 w5\nw2 w3 w4\nw2 w3 w4 w5 w6 w7 w2 w3\nw7\n")
    pred = load(text_model, threads=1)
    one = read_inputs(pred, src)
    assert one.count == 5 and len(one.feeds) == 5  # blank lines skipped
    assert [int(f["attention_mask"].sum()) for f in one.feeds] == [2, 4, 3, 6, 1]  # one text cut to 6
    assert one.truncated == 1 and one.mean_tokens == pytest.approx(16 / 5)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("w2 ||| w3 w4\nw5 ||| w6\n")
    got = read_inputs(pred, pairs)
    assert got.feeds[0]["token_type_ids"].tolist() == [[0, 1, 1]] and got.mean_tokens == 2.5
    pairs.write_text("w2 ||| w3 w4\nw5\n")
    with pytest.raises(InputError, match="mixes single texts and '|||' pairs \\(input 2\\)"):
        read_inputs(pred, pairs)
    two = read_inputs(pred, src, batch=2)
    assert two.count == 4 and [f["input_ids"].shape for f in two.feeds] == [(2, 4), (2, 6)]  # last dropped
    assert read_inputs(pred, src, limit=2).count == 2


def test_bench_times_the_given_inputs_in_turn(text_model, tmp_path):
    """The model reports each run's real-token count as kept_counts: their mean over the timed runs
    is the mean over the file's inputs only if the workers really ran them, in turn."""
    src = write_text_inputs(["w2 w3", "w2 w3\nw4 w5"], tmp_path / "in.txt")  # a line break becomes a space
    res = bench(text_model, vs=text_model, threads=1, runs=4, warmup=0, progress=False, inputs=src)
    assert res.a.kept_per_layer == [3.0, 3.0] and res.b.kept_per_layer == [3.0, 3.0]
    assert res.inputs == {"source": str(src), "count": 2, "mean_tokens": 3.0, "truncated": 0}
    assert res.seq_len is None
    synthetic = bench(text_model, threads=1, runs=2, warmup=0, progress=False, seq_len=5)
    assert synthetic.a.kept_per_layer == [5.0, 5.0] and synthetic.inputs is None


def test_image_folder_and_list_file(image_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, rgb in (("b.png", (0, 255, 0)), ("a.PNG", (255, 0, 0)), ("notes.txt", None)):
        if rgb is None:
            (folder / name).write_text("not an image")
        else:
            Image.new("RGB", (8, 8), rgb).save(folder / name)
    pred = load(image_model, threads=1)
    got = read_inputs(pred, folder)
    assert got.count == 2 and got.mean_tokens is None
    assert np.argmax(got.feeds[0]["pixel_values"][0].mean((1, 2))) == 0  # a.PNG (red) first: name order
    listed = tmp_path / "list.txt"
    listed.write_text("imgs/b.png\n" + str(folder / "a.PNG") + "\n")  # relative to the file, or absolute
    assert read_inputs(pred, listed).count == 2
    res = bench(image_model, threads=1, runs=2, warmup=0, progress=False, inputs=folder)
    assert res.inputs["count"] == 2


def test_bad_inputs_are_one_line_errors(text_model, image_model, tmp_path):
    text, image = load(text_model, threads=1), load(image_model, threads=1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError) as e:
        read_inputs(text, empty)
    assert "0 non-empty lines" in one_line(e)
    with pytest.raises(InputError, match="folder, but m.onnx is a text model"):
        read_inputs(text, tmp_path)
    with pytest.raises(InputNotFoundError, match="not found"):
        read_inputs(text, tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("missing.png\n")
    with pytest.raises(InputNotFoundError, match="line 1: image .*missing.png not found"):
        read_inputs(image, bad)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_inputs(text, latin)
    with pytest.raises(InputError, match="below the batch size"):
        read_inputs(text, empty, batch=4, limit=2)


def test_cli_bench_inputs(text_model, tmp_path):
    from typer.testing import CliRunner

    from sttabt_edge.cli import app

    runner = CliRunner()
    src = write_text_inputs(["w2 w3 w4", "w5"], tmp_path / "in.txt")
    out = tmp_path / "b.json"
    args = ["bench", str(text_model), "--runs", "2", "--warmup", "0", "--threads", "1"]
    res = runner.invoke(app, [*args, "--inputs", str(src), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 real inputs in turn, 2.0 tokens on average" in " ".join(res.stdout.split())
    assert json.loads(out.read_text())["inputs"]["count"] == 2
    res = runner.invoke(app, [*args, "--inputs", str(tmp_path / "nope.txt")])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*args, "--inputs", str(src), "--input-limit", "0"])
    assert res.exit_code == 2 and "--input-limit" in res.output
