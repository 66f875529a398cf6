"""benchmarks/latency_rr.py: several files timed round-robin on real inputs at every setting."""

import importlib
import json
import sys
from pathlib import Path

import pytest
from tiny import WORDS, save_tiny_text_model
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.runtime.bench_inputs import write_text_inputs

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_latency_rr_times_every_file_at_every_setting(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    lr = importlib.import_module("latency_rr")
    model = save_tiny_text_model(tmp_path / "bert", WORDS, num_labels=2)
    files = {}
    for name, extra in (("dense", ["--method", "dense"]), ("sttabt", ["--approx", "untrained"])):
        files[name] = tmp_path / f"{name}.onnx"
        argv = ["export", "--model", str(model), "--out", str(files[name]), "--latency-runs", "0", *extra]
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output
    inputs = write_text_inputs([" ".join(WORDS[:n]) for n in (3, 6, 9)], tmp_path / "inputs.txt")
    out = tmp_path / "lat.json"
    argv = ["latency_rr.py", "--file", *(f"{k}={v}" for k, v in files.items()), "--ref", "dense"]
    argv += ["--inputs", str(inputs), "--threads", "1", "2", "--spinning", "off", "on", "--runs", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    lr.main()
    res = json.loads(out.read_text())
    settings = [(1, False), (1, True), (2, False), (2, True)]
    assert [(s["threads"], s["spinning"]) for s in res["settings"]] == settings and res["commit"]
    for s in res["settings"]:
        assert s["files"]["dense"]["x_ref"] == 1.0  # the reference against itself, round by round
        assert all(f["p50_ms"] > 0 and f["x_ref"] > 0 for f in s["files"].values())
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "nope", "--out", str(out)])  # --runs nope
    with pytest.raises(SystemExit) as exc:
        lr.main()
    assert exc.value.code == 2
    bad_ref = [a if a != "dense" else "other" for a in argv]  # --ref names no file
    monkeypatch.setattr(sys, "argv", [*bad_ref, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        lr.main()
    assert exc.value.code == 2
