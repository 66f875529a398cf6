"""sha256 of the exports a refactor must leave bit-identical (#27): dense, STTABT top-k (ONNX and
TFLite) and concrete, and the three baselines (EViT top-k, LTP, ToMe), each on a tiny random model with fixed seeds.

Everything goes through the CLI (``sttabt-edge export``), the interface a refactor keeps: user
input -> reducer spec -> reducer -> graph. The trained dirs (concrete thresholds, LTP) are written
with the training artifacts' own writer, from fixed values, without training. The work folder is a
fixed path (the metadata records the source paths) and is rebuilt on every run.

    .venv/bin/python scripts/export_fingerprint.py            # prints "<name> <sha256>" per export
    .venv/bin/python scripts/export_fingerprint.py --check FILE  # compares with a saved printout
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from tiny import WORDS, save_tiny_text_model, tiny_bert, tiny_vit, write_image_dir, write_sst2_dir  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sttabt_edge.cli import app  # noqa: E402
from sttabt_edge.method.approxnet import build_approxnet  # noqa: E402
from sttabt_edge.method.concrete import ConcreteThresholds  # noqa: E402
from sttabt_edge.reducers.ltp import LtpReducer  # noqa: E402
from sttabt_edge.reducers.sttabt import SttabtReducer  # noqa: E402
from sttabt_edge.train.artifacts import save_trained  # noqa: E402

WORK = Path("/tmp/sttabt_export_fingerprint")


def _trained_dirs(work: Path, text_dir: Path) -> tuple[Path, Path]:
    """An STTABT concrete dir (ViT, fixed threshold logits, random-init ApproxNet) and an LTP dir (BERT)."""
    vit = tiny_vit()
    torch.manual_seed(1)
    approx = build_approxnet(vit, 4, "random").eval()
    th = ConcreteThresholds(3).eval()
    with torch.no_grad():
        th.logits.copy_(torch.tensor([-0.3, 0.0, 0.2]))
    concrete = save_trained(work / "concrete", vit, SttabtReducer(approx, thresholds=th), {}, approx=approx)
    bert = tiny_bert()
    ltp = LtpReducer(torch.tensor([0.02, 0.05, 0.08]), temperature=0.1).eval()
    ltp_dir = save_trained(work / "ltp", bert, ltp, {}, source_dir=text_dir)
    return concrete, ltp_dir


def exports(work: Path) -> dict[str, list[str]]:
    vit_dir = work / "vit"
    tiny_vit().save_pretrained(vit_dir)
    text_dir = save_tiny_text_model(work / "bert", WORDS)
    images = write_image_dir(work / "images", per_class=3)
    sst2 = write_sst2_dir(work / "SST-2", n_train=8, n_dev=4, seed=1, lengths=(6, 14))
    concrete, ltp = _trained_dirs(work, text_dir)
    img = ["--calib", str(images), "--calib-samples", "6"]
    txt = ["--calib", str(sst2 / "train.tsv"), "--calib-samples", "6"]
    return {
        "dense": ["--model", str(vit_dir), "--method", "dense", *img],
        "sttabt_topk": ["--model", str(vit_dir), "--approx", "untrained", "--keep-ratio", "0.5", *img],
        "sttabt_topk_count": [
            "--model",
            str(vit_dir),
            "--approx",
            "untrained",
            "--keep-ratio",
            "0.4",
            "--nesting",
            "count",
            "--min-keep",
            "2",
            *img,
        ],  # fmt: skip
        "sttabt_concrete": ["--model", str(concrete), *img],
        "evit_topk": ["--model", str(vit_dir), "--method", "topk", "--keep-ratio", "0.5", *img],
        "evit_topk_text": ["--model", str(text_dir), "--method", "topk", *txt],
        "ltp": ["--model", str(ltp), *txt],
        "tome": ["--model", str(vit_dir), "--method", "tome", "--keep-ratio", "0.5", *img],
        "sttabt_topk_tflite": [
            "--model",
            str(vit_dir),
            "--approx",
            "untrained",
            "--keep-ratio",
            "0.5",
            "--target",
            "tflite",
            *img,
        ],  # fmt: skip
    }


def fingerprint() -> dict[str, str]:
    torch.set_num_threads(1)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    runner = CliRunner()
    hashes = {}
    for name, args in exports(WORK).items():
        tflite = "tflite" in args
        out = WORK / "out" / (f"{name}.tflite" if tflite else f"{name}.onnx")
        out.parent.mkdir(exist_ok=True)
        extra = [] if tflite else ["--no-simplify"]
        res = runner.invoke(
            app, ["export", *args, "--out", str(out), "--latency-runs", "0", *extra, "--json", "-"]
        )
        if res.exit_code != 0:
            raise SystemExit(f"{name}: export failed\n{res.output}")
        hashes[name] = hashlib.sha256(out.read_bytes()).hexdigest()
        if tflite:  # the sidecar: slots, XNNPACK coverage, the metadata
            hashes[f"{name}.json"] = hashlib.sha256(
                out.with_name(out.name + ".json").read_bytes()
            ).hexdigest()
    return hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, help="a saved printout: exit 1 unless every hash matches")
    args = ap.parse_args()
    hashes = fingerprint()
    for name, h in hashes.items():
        print(name, h)
    if args.check is not None:
        want = dict(line.split() for line in args.check.read_text().splitlines() if line.strip())
        bad = [n for n in set(want) | set(hashes) if want.get(n) != hashes.get(n)]
        print("identical" if not bad else f"DIFFERENT: {', '.join(sorted(bad))}")
        raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
