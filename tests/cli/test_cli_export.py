"""`export` as a user walks it: a short table, JSON on request, --out is the INT8 file, `run` on it."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny import save_tiny_text_model, tiny_bert, tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.export.metadata import read_metadata
from sttabt_edge.export.quantize import quantize_onnx
from sttabt_edge.method.approxnet import APPROX_SCOPE

runner = CliRunner()
WORDS = "a fine film dull tedious mess charming moving plot cast story good bad long short".split()
FAST = ["--no-simplify", "--latency-runs", "0", "--calib-samples", "2"]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vit") / "vit"
    tiny_vit().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """Tiny BERT (64 positions) with a WordLevel tokenizer.json whose ids fit its 100-token vocabulary."""
    return save_tiny_text_model(tmp_path_factory.mktemp("bert") / "bert", WORDS, model=tiny_bert())


def test_export_prints_a_table_and_writes_json_on_request(vit_dir, tmp_path):
    out, report = tmp_path / "dense.onnx", tmp_path / "summary.json"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(vit_dir),
            "--method",
            "dense",
            "--out",
            str(out),
            "--json",
            str(report),
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "parity" in res.stdout and "max |dlogit|" in res.stdout and not res.stdout.lstrip().startswith("{")
    summary = json.loads(report.read_text())
    assert (
        summary["out"] == str(out)
        and summary["files"] == [str(out)]
        and summary["parity"]["max_abs_diff"] < 1e-4
    )


def test_quantized_export_writes_int8_at_out(vit_dir, tmp_path):
    out = tmp_path / "m.onnx"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(vit_dir),
            "--out",
            str(out),
            "--approx",
            "untrained",
            "--quantize",
            "int8",
            *FAST,
            "--json",
            "-",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    fp32 = tmp_path / "m.fp32.onnx"
    assert summary["out"] == str(out) and summary["files"] == [str(out), str(fp32)]
    assert read_metadata(out)["quantization"] == "int8-dynamic" and "quantization" not in read_metadata(fp32)
    assert summary["quantization"]["int8_bytes"] == out.stat().st_size < fp32.stat().st_size
    assert not (tmp_path / "m.int8.onnx").exists()
    table = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(vit_dir),
            "--out",
            str(out),
            "--approx",
            "untrained",
            "--quantize",
            "int8",
            *FAST,
        ],
    )
    assert table.exit_code == 0 and "also wrote" in table.stdout and "INT8" in table.stdout
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(img)
    res = runner.invoke(app, ["run", str(out), "--image", str(img), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)[0]["kept_counts"]) == 3


def test_text_int8_quantizes_embeddings_and_runs_on_its_own(bert_dir, tmp_path):
    """Word, position and token-type tables of the model and of the ApproxNet are 8-bit; the
    ApproxNet's matmuls stay fp32; the INT8 file names its own tokenizer copy."""
    out = tmp_path / "t" / "text.onnx"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(bert_dir),
            "--out",
            str(out),
            "--approx",
            "untrained",
            "--quantize",
            "int8",
            *FAST,
            "--json",
            "-",
        ],
    )
    assert res.exit_code == 0, res.output
    q = json.loads(res.stdout)["quantization"]
    assert q["int8_embeddings"] == 6 and q["fp32_nodes"] > 0 and q["kept_counts_equal"]
    graph = onnx.load(str(out)).graph
    tables = {t.name: t.data_type for t in graph.initializer if len(t.dims) == 2}
    gathered = [tables[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert gathered and onnx.TensorProto.FLOAT not in gathered
    assert read_metadata(out)["preprocess"]["text"]["tokenizer_file"] == "text.tokenizer.json"
    assert (out.parent / "text.tokenizer.json").is_file()
    res = runner.invoke(app, ["run", str(out), "--text", "a fine film", "--json"])
    assert res.exit_code == 0, res.output
    kept_fp32 = quantize_onnx(out.with_name("text.fp32.onnx"), tmp_path / "q.onnx", approx_embeddings=False)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    floats = {t.name for t in graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    fp32_tables = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in floats]
    assert (
        kept_fp32.int8_embeddings == 3
        and fp32_tables
        and all(n.startswith(APPROX_SCOPE) for n in fp32_tables)
    )


def test_run_refuses_long_text_naming_truncate(bert_dir, tmp_path):
    out = tmp_path / "dense.onnx"
    res = runner.invoke(
        app, ["export", "--model", str(bert_dir), "--method", "dense", "--out", str(out), *FAST]
    )
    assert res.exit_code == 0, res.output
    long = " ".join(WORDS * 6)  # 90 words + 2 special tokens > 64 positions
    res = runner.invoke(app, ["run", str(out), "--text", long])
    assert res.exit_code == 2 and "--truncate" in res.output and "truncation=True" not in res.output
    res = runner.invoke(
        app, ["run", str(out), "--text", long, "--text", "a fine film", "--truncate", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 2


def test_run_warns_on_small_images(vit_dir, tmp_path):
    """The tiny ViT crops 32 px from a 32 px resize: a 12 px image is upscaled past half the crop."""
    out = tmp_path / "dense.onnx"
    assert (
        runner.invoke(
            app, ["export", "--model", str(vit_dir), "--method", "dense", "--out", str(out), *FAST]
        ).exit_code
        == 0
    )
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (12, 30)).save(small)
    Image.new("RGB", (40, 40)).save(big)
    res = runner.invoke(app, ["run", str(out), "--image", str(small), "--image", str(big)])
    assert res.exit_code == 0, res.output
    assert "small.png is 12x30, much smaller" in res.stderr and "big.png is" not in res.stderr


def test_fused_export_verifies(bert_dir, tmp_path):
    """--fuse: MultiHeadAttention in the file, ``exporter.fused`` recorded, `verify` accepts it."""
    tsv = tmp_path / "SST-2" / "dev.tsv"
    tsv.parent.mkdir()
    rows = [f"{' '.join(WORDS[i : i + 3 + i % 4])}\t{i % 2}" for i in range(6)]
    tsv.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "fused.onnx"
    args = ["export", "--model", str(bert_dir), "--out", str(out), "--approx", "untrained", "--fuse"]
    res = runner.invoke(app, [*args, "--calib", str(tsv), *FAST, "--json", "-"])
    assert res.exit_code == 0, res.output
    fusion = json.loads(res.stdout)["fusion"]
    assert fusion["attention_fused"] == fusion["attention_sites"] == 3
    assert fusion["parity"]["max_abs_diff"] <= 1e-4 and fusion["parity"]["kept_counts_equal"]
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("MultiHeadAttention") == 3
    assert read_metadata(out)["exporter"]["fused"] is True
    res = runner.invoke(app, ["verify", str(out), "--reference", str(bert_dir), "--data", str(tsv)])
    assert res.exit_code == 0, res.output


def test_fuse_is_onnx_only(vit_dir, tmp_path):
    out = tmp_path / "m.tflite"
    res = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(vit_dir),
            "--method",
            "dense",
            "--out",
            str(out),
            "--target",
            "tflite",
            "--fuse",
        ],
    )
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "--fuse is ONNX-only" in lines[0], res.output


@pytest.mark.parametrize(
    ("method", "keys"),
    [
        ("sttabt", {"approxnet", "masks", "sparse_model", "stages_sum", "pipeline", "dense", "int8"}),
        ("topk", {"pipeline", "dense", "pipeline_vs_dense", "int8"}),
        ("dense", {"dense", "int8"}),
    ],
)
def test_export_latency_breakdown_keys(vit_dir, tmp_path, method, keys):
    """--latency-runs N: each method's timed graphs (STTABT: its stages, every one also vs dense)."""
    args = ["export", "--model", str(vit_dir), "--out", str(tmp_path / "m.onnx"), "--method", method]
    approx = ["--approx", "untrained"] if method == "sttabt" else []
    fast = ["--no-simplify", "--latency-runs", "1", "--calib-samples", "2", "--threads", "1"]
    res = runner.invoke(app, [*args, *approx, *fast, "--quantize", "int8", "--json", "-"])
    assert res.exit_code == 0, res.output
    got = set(json.loads(res.stdout)["latency_ms"])
    if method == "sttabt":
        keys |= {f"{s}_vs_dense" for s in ("approxnet", "masks", "sparse_model", "pipeline")}
    assert got == keys
