"""benchmarks/plane.py: every point exported, evaluated through the runtime and timed against dense."""

import importlib
import json
import sys
from pathlib import Path

from tiny import WORDS, save_tiny_text_model, write_image_dir, write_sst2_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.compress.stages import runtime_accuracy
from sttabt_edge.data import glue_tsv
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.models.loading import load_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_plane_exports_evaluates_and_times_every_point(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    plane = importlib.import_module("plane")
    data = write_sst2_dir(tmp_path / "SST-2", n_train=20, n_dev=12, seed=1)
    model = save_tiny_text_model(tmp_path / "bert", WORDS, num_labels=2)
    approx = build_approxnet(load_model(model), 2, "interpolate").save(tmp_path / "approx")
    ltp = tmp_path / "ltp"  # a trained baseline dir, exported as it is (its thresholds, its fine-tuned model)
    train = ["train", "baseline", "--method", "ltp", "--model", str(model), "--data", str(data)]
    train += ["--target-retention", "0.8", "--calib-on", "eval", "--steps", "2", "--batch-size", "4"]
    res = CliRunner().invoke(app, [*train, "--out", str(ltp)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "plane.json"
    argv = ["plane.py", "--model", str(model), "--data", str(data), "--approx", str(approx)]
    argv += ["--trained", f"ltp@0.8={ltp}"]
    argv += ["--sttabt-ratios", "0.5", "0.3", "--topk-ratios", "0.5", "--quantize", "int8", "--runs", "2"]
    argv += ["--block", "2", "--threads", "1", "--work", str(tmp_path / "w"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    plane.main()
    res = json.loads(out.read_text())
    got = {(r["name"], r["kind"]): r for r in res["rows"]}
    names = ("dense", "sttabt@0.5", "sttabt@0.3", "topk@0.5", "ltp@0.8")  # EViT top-k and LTP export for text
    assert set(got) == {(n, k) for n in names for k in ("fp32", "int8")}
    assert got[("topk@0.5", "int8")]["method"] == "topk" and got[("topk@0.5", "fp32")]["retention"] < 1.0
    assert got[("ltp@0.8", "fp32")]["method"] == "ltp"
    dev = glue_tsv(data / "dev.tsv")
    for r in res["rows"]:  # accuracy is the runtime's on the evaluation set, and every file was timed
        assert r["accuracy"] == runtime_accuracy(Path(r["file"]), dev)["accuracy"]
        assert r["p50_ms"] > 0 and r["x_dense_fp32"] > 0 and r["x_dense_int8"] > 0
    assert got[("dense", "fp32")]["flops_ratio"] == 1.0 and got[("sttabt@0.5", "fp32")]["retention"] < 1.0
    assert got[("dense", "int8")]["x_dense_int8"] == 1.0 and res["eval_examples"] == 12 and res["commit"]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_plane_on_images_uses_the_held_out_half_and_vit_only_methods(tmp_path, monkeypatch):
    from tiny import tiny_vit

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    plane = importlib.import_module("plane")
    model = tmp_path / "vit"
    tiny_vit().save_pretrained(model)
    images = write_image_dir(tmp_path / "images", per_class=4, hw=(40, 48), seed=0)
    out = tmp_path / "plane.json"
    argv = ["plane.py", "--model", str(model), "--data", str(images), "--tome-ratios", "0.5"]
    argv += ["--topk-ratios", "0.6", "--runs", "2", "--block", "2", "--threads", "1", "2"]
    argv += ["--spinning", "off", "on", "--work", str(tmp_path / "w"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    plane.main()
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["rows"]] == ["dense", "topk@0.6", "tome@0.5"]
    assert res["eval_examples"] == 4 and all(r["kind"] == "fp32" for r in res["rows"])  # half of 8 images
    settings = [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    ]  # every (threads, spinning) pair times every file
    assert [(s["threads"], s["spinning"]) for s in res["settings"]] == settings
    for r in res["rows"]:
        assert [(lat["threads"], lat["spinning"]) for lat in r["latency"]] == settings
        assert all(lat["p50_ms"] > 0 and lat["x_dense_fp32"] > 0 for lat in r["latency"])
        assert r["p50_ms"] == r["latency"][0]["p50_ms"]  # the first setting leads
    listed = (tmp_path / "w" / "eval_inputs.txt").read_text().splitlines()
    assert len(listed) == 4 and all(Path(p).is_file() for p in listed)
