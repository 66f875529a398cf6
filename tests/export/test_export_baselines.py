"""Baselines as shipped files: EViT top-k and LTP export for text (data-dependent lengths), match
PyTorch at every length and batch, and walk train baseline -> export -> verify from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import WORDS, save_tiny_text_model, text_batch, tiny_bert, write_sst2_dir
from tiny import padded_text as padded
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.export import ort as ort_utils
from sttabt_edge.export.graph import ExportModule
from sttabt_edge.export.metadata import read_metadata
from sttabt_edge.export.onnx import compare, export_onnx
from sttabt_edge.reducers.ltp import LtpReducer
from sttabt_edge.reducers.topk import TopkReducer
from sttabt_edge.sparse_model import SparseClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
runner = CliRunner()


def ltp_calibrated(model) -> LtpReducer:
    red = LtpReducer(0.0, num_layers=model.config.num_hidden_layers)
    red.calibrate(SparseClassifier(model, red).parts, text_batch(), 0.5)
    return red


@pytest.mark.parametrize("method", ["topk", "ltp"])
@pytest.mark.parametrize("batch", [1, "dynamic"])
def test_text_baseline_export_matches_pytorch_at_every_length(tmp_path, tokenizer, method, batch):
    """One file, traced at one length, serves others: top-k's bound is derived from the input's
    length in the graph (not frozen at the example's), LTP's counts are data-dependent."""
    model = tiny_bert()
    reducer = TopkReducer(keep_ratio=0.5) if method == "topk" else ltp_calibrated(model)
    sc = SparseClassifier(model, reducer).eval()
    example = padded([12], 12) if batch == 1 else text_batch()
    path = export_onnx(
        sc, tmp_path / "m.onnx", example_inputs=example, simplify=False, tokenizer_file=tokenizer, batch=batch
    ).path
    session, module = ort_utils.open_session(path), ExportModule(sc).eval()
    singles = [padded([9], 9), padded([30], 30, 1), padded([5], 5, 2)]
    sets = singles if batch == 1 else [*singles, text_batch(), padded([33, 21, 4], 33, seed=1)]
    for inputs in sets:
        kept = np.asarray(compare(session, module, inputs, 1e-5, path).kept_counts)  # raises beyond atol
        n = inputs["attention_mask"].sum(1).numpy()
        assert (kept[:, 0] == n).all() and (kept[:, -1] < n).all()  # really prunes, at each length
        if method == "topk":  # EViT keeps ceil(0.5 n) after the first layer, whatever N was traced at
            assert (kept[:, 1] == np.ceil(0.5 * n)).all(), (kept, n)


def test_train_baseline_then_export_and_verify_from_the_cli(tmp_path):
    model_dir = save_tiny_text_model(tmp_path / "bert", WORDS)
    data = write_sst2_dir(tmp_path / "SST-2", n_train=24, n_dev=8, seed=1, lengths=(8, 14))
    res = runner.invoke(
        app,
        [
            "train",
            "baseline",
            "--method",
            "ltp",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--target-retention",
            "0.7",
            "--calib-on",
            "eval",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "ltp"),
        ],
    )
    assert res.exit_code == 0, res.output
    common = [
        "--calib",
        str(data / "train.tsv"),
        "--calib-samples",
        "4",
        "--latency-runs",
        "0",
        "--no-simplify",
    ]
    for name, src in (
        ("ltp", ["--model", str(tmp_path / "ltp")]),
        ("topk", ["--model", str(model_dir), "--method", "topk", "--keep-ratio", "0.5"]),
    ):
        out = tmp_path / f"{name}.onnx"
        res = runner.invoke(app, ["export", *src, "--out", str(out), *common])
        assert res.exit_code == 0, res.output
        assert read_metadata(out)["reducer_spec"]["name"] == name
        ref = tmp_path / "ltp" if name == "ltp" else model_dir  # the model the file was made from
        report = tmp_path / f"{name}.json"
        res = runner.invoke(
            app,
            [
                "verify",
                str(out),
                "--reference",
                str(ref),
                "--data",
                str(data / "dev.tsv"),
                "--json",
                str(report),
            ],
        )
        assert res.exit_code == 0, res.output
        got = json.loads(report.read_text())
        assert got["passed"] and got["samples"] == 8 and got["kept_agreement"] == 1.0
