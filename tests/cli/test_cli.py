"""The CLI on tiny saved models: commands run end to end and fail clearly."""

import json

import pytest
from PIL import Image
from tiny import tiny_bert, tiny_vit, write_image_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app

runner = CliRunner()


@pytest.fixture()
def vit_dir(tmp_path):
    d = tmp_path / "vit"
    tiny_vit().save_pretrained(d)
    return d


@pytest.fixture()
def image_dir(tmp_path):
    return write_image_dir(tmp_path / "images", per_class=3, hw=(40, 48), seed=0)


def test_info(vit_dir):
    res = runner.invoke(app, ["info", "--model", str(vit_dir)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "family": "vit",
        "layers": 3,
        "heads": 4,
        "hidden": 32,
        "intermediate": 64,
        "num_prefix_tokens": 1,
        "architecture": "ViTForImageClassification",
        "num_labels": 5,
        "tokens": 17,
    }


def test_info_reads_the_config_alone(vit_dir, tmp_path):
    """No weights are read: a model dir whose weights are garbage still describes itself."""
    (vit_dir / "model.safetensors").write_bytes(b"not safetensors")
    res = runner.invoke(app, ["info", "--model", str(vit_dir)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layers"] == 3
    cfg = json.loads((vit_dir / "config.json").read_text())
    d = tmp_path / "distilled"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({**cfg, "model_type": "deit", "architectures": ["DeiTForImageClassificationWithTeacher"]})
    )
    got = json.loads(runner.invoke(app, ["info", "--model", str(d)]).stdout)
    assert got["family"] == "vit" and got["num_prefix_tokens"] == 2 and got["tokens"] == 18


@pytest.mark.parametrize("method", ["dense", "sttabt", "topk", "tome", "ltp"])
def test_eval_image_folder(vit_dir, image_dir, tmp_path, method):
    out = tmp_path / "res.json"
    approx = ["--approx", "oracle"] if method == "sttabt" else []
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(vit_dir),
            "--data",
            str(image_dir),
            "--method",
            method,
            "--keep-ratio",
            "0.5",
            "--batch-size",
            "4",
            "--json",
            str(out),
            *approx,
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["num_samples"] == 6 and 0 <= got["metrics"]["accuracy"] <= 1
    assert (got["retention"] == 1.0) == (method == "dense")
    assert (got["flops_ratio"] < 1.0) == (method != "dense")


def test_eval_empty_folder_is_a_clear_error(vit_dir, tmp_path):
    res = runner.invoke(app, ["eval", "--model", str(vit_dir), "--data", str(tmp_path)])
    assert res.exit_code == 2
    assert "no images found" in res.output


def test_eval_glue_text(tmp_path, shared_dir):
    tsv = tmp_path / "SST-2" / "dev.tsv"
    tsv.parent.mkdir()
    tsv.write_text("sentence\tlabel\na fine film\t1\na dull , tedious mess\t0\n")
    d = tmp_path / "bert"
    model = tiny_bert()
    model.config.vocab_size = 100
    model.save_pretrained(d)
    (d / "tokenizer.json").write_text((shared_dir / "models/minilm-l6-sst2/tokenizer.json").read_text())
    res = runner.invoke(
        app, ["eval", "--model", str(d), "--data", str(tsv), "--method", "sttabt", "--approx", "oracle"]
    )
    # the shared tokenizer's ids exceed the tiny vocab: that must be a clear failure, not a crash
    assert res.exit_code != 0


def test_missing_model_is_a_clear_error(tmp_path, image_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(image_dir)])
    assert res.exit_code == 2 and "error:" in res.output


def test_show_image_grid_and_text_html(vit_dir, image_dir, tmp_path, shared_dir):
    out = tmp_path / "grid.png"
    res = runner.invoke(
        app,
        [
            "show",
            "--model",
            str(vit_dir),
            "--image",
            str(image_dir / "a" / "0.png"),
            "--keep-ratio",
            "0.5",
            "--out",
            str(out),
            "--approx",
            "oracle",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(out).size[0] > 4 * 32
    res = runner.invoke(
        app,
        [
            "show",
            "--model",
            str(shared_dir / "models/minilm-l6-sst2"),
            "--text",
            "a charming film",
            "--keep-ratio",
            "0.5",
            "--out",
            str(tmp_path / "t.html"),
            "--approx",
            "oracle",
        ],
    )
    assert res.exit_code == 0, res.output
    page = (tmp_path / "t.html").read_text()
    assert page.count("<tr>") == 6 and "charming" in page and 'class="d"' in page
