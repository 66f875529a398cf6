"""benchmarks/length_sweep.py times each pair at each length and writes its JSON and plot."""

import importlib
import json
import sys
from pathlib import Path

from handmade import save_sealed, text_graph, text_meta, word_tokenizer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_sweep_times_every_pair_at_every_length(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    ls = importlib.import_module("length_sweep")
    word_tokenizer(tmp_path / "m.tokenizer.json")
    a = save_sealed(text_graph(kept=True), tmp_path / "m.onnx", text_meta("m.tokenizer.json", max_length=32))
    out = tmp_path / "sweep.json"
    argv = ["length_sweep.py", "--file", f"a={a}", f"b={a}", "--pairs", "a:b", "--lengths", "12", "4"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--runs", "2", "--block", "2", "--threads", "1", "--out", str(out)]
    )
    ls.main()
    res = json.loads(out.read_text())
    assert [r["length"] for r in res["rows"]] == [4, 12] and res["commit"] and res["threads"] == 1
    # the synthetic text really has that many tokens: the model reports its real-token count
    assert [r["a_kept_per_layer"] for r in res["rows"]] == [[4.0, 4.0], [12.0, 12.0]]
    assert all(r["ratio_p50"] > 0 for r in res["rows"]) and out.with_suffix(".png").stat().st_size > 1000
