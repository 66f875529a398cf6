"""benchmarks/lr_select.py: the lr is chosen on held-out *training* sentences, from the CLI's own runs."""

import importlib
import json
import sys
from pathlib import Path

from tiny import WORDS, save_tiny_text_model, write_sst2_dir

from sttabt_edge.data import glue_tsv
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.models.loading import load_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_lr_select_holds_out_training_sentences_and_picks_the_best(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    lr_select = importlib.import_module("lr_select")
    data = write_sst2_dir(tmp_path / "SST-2", n_train=60, n_dev=8, seed=3, lengths=(3, 14))
    model = save_tiny_text_model(tmp_path / "bert", WORDS, num_labels=2)
    approx = build_approxnet(load_model(model), 2, "interpolate").save(tmp_path / "approx")
    out = tmp_path / "sel"
    argv = ["lr_select.py", "--model", str(model), "--approx", str(approx), "--data", str(data)]
    argv += ["--target-retention", "0.6", "--lrs", "1e-4", "1e-3", "--steps", "2", "--holdout", "10"]
    argv += ["--holdout-min-tokens", "8", "--max-length", "16", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    lr_select.main()
    res = json.loads((out / "lr_select.json").read_text())
    held = glue_tsv(out / "split" / "SST-2" / "dev.tsv")
    fit = glue_tsv(out / "split" / "SST-2" / "train.tsv")
    train_texts = {e.inputs for e in glue_tsv(data / "train.tsv")}
    dev_texts = {e.inputs for e in glue_tsv(data / "dev.tsv")}
    assert len(held) == 10 and {e.inputs for e in held} <= train_texts  # from train, never dev
    assert not {e.inputs for e in held} & dev_texts
    assert not any(f.inputs.lower() in h.inputs.lower() for f in fit for h in held)  # no sub-phrase leak
    assert res["split"] == {"train": len(fit), "held_out": 10, "dropped_sub_phrases": 60 - 10 - len(fit)}
    assert [r["lr"] for r in res["runs"]] == [1e-4, 1e-3] and all(r["steps"] == 2 for r in res["runs"])
    accs = {r["lr"]: r["held_out"]["accuracy"] for r in res["runs"]}
    assert res["chosen_lr"] == max(accs, key=lambda lr: (accs[lr], -lr)) and res["environment"]["commit"]
    for r in res["runs"]:  # each run trained on the split and evaluated on its held-out file
        meta = json.loads((Path(r["dir"]) / "sttabt.json").read_text())
        assert meta["eval"] == r["held_out"] and meta["train_config"]["optim"]["lr"] == r["lr"]

    seconds = []
    train_one = lr_select.train_one
    monkeypatch.setattr(lr_select, "train_one", lambda *a: seconds.append(train_one(*a)) or seconds[-1])
    lr_select.main()
    assert seconds == [0.0, 0.0]  # finished runs are read back, not trained again
