"""`train approx / concrete / baseline` and `eval` through the CLI on a tiny ViT and a tiny BERT."""

from __future__ import annotations

import json

import pytest
from trainkit import vit
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.method.approxnet import ApproxNet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_cli_train_verbs_and_eval(image_dir, tmp_path):
    runner = CliRunner()
    model_dir = tmp_path / "vit"
    vit().save_pretrained(model_dir)
    common = ["--data", str(image_dir), "--steps", "3", "--batch-size", "4", "--log-every", "1"]
    res = runner.invoke(
        app, ["train", "approx", "--model", str(model_dir), "--out", str(tmp_path / "ax"), *common]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["heldout_attention_kl"] > 0
    res = runner.invoke(
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "ax"),
            "--target-retention",
            "0.4",
            "--init-schedule",
            "shared",
            "--out",
            str(tmp_path / "c"),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        json.loads((tmp_path / "c" / "sttabt.json").read_text())["sparse_config"]["init_schedule"] == "shared"
    )
    res = runner.invoke(  # the official variant: its init schedule defaults to the official shared one
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "ax"),
            "--target-retention",
            "0.5",
            "--concrete",
            "official",
            "--out",
            str(tmp_path / "co"),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "co" / "sttabt.json").read_text())
    assert (
        saved["sparse_config"]["sttabt"]["concrete"] == "official"
        and saved["sparse_config"]["init_schedule"] == "shared"
    )
    assert saved["reducer"]["concrete"] == "official"
    for method in ("ltp", "topk"):
        res = runner.invoke(
            app,
            [
                "train",
                "baseline",
                "--method",
                method,
                "--model",
                str(model_dir),
                "--target-retention",
                "0.5",
                "--calib-on",
                "eval",
                "--out",
                str(tmp_path / method),
                *common,
            ],
        )
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "c"), "--data", str(image_dir)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["method"] == "sttabt-trained" and got["retention"] < 0.7 and got["num_samples"] == 16
    res = runner.invoke(
        app,
        [
            "train",
            "concrete",
            "--model",
            str(model_dir),
            "--approx",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "c2"),
            *common,
        ],
    )
    assert res.exit_code == 2 and "error:" in res.output


def test_cli_train_approx_on_text(text_model_dir, glue_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "approx",
            "--model",
            str(text_model_dir),
            "--data",
            str(glue_dir),
            "--init",
            "random",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "ax"),
        ],
    )
    assert res.exit_code == 0, res.output
    ax = ApproxNet.load(tmp_path / "ax")  # the CLI default (sttabt_edge/defaults.py): /8, one head
    assert (ax.factor, ax.heads) == (8, 1)
