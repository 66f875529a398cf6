"""benchmarks/train_curve.py: minutes from logged step times, held-out points, and the calibrated start."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def fake_run(path: Path, target: float, accs: list[float]) -> Path:
    """A run dir as `train concrete|baseline` leaves it: metrics.jsonl and a checkpoint naming the target."""
    (path / "checkpoints" / "ckpt-000020").mkdir(parents=True)
    state = {"fingerprint": {"target_retention": target}}
    (path / "checkpoints" / "ckpt-000020" / "state.json").write_text(json.dumps(state))
    lines = []
    for i, acc in enumerate(accs, start=1):
        lines.append(
            {"step": 10 * i, "step_time": 6.0, "ms_per_view": 200.0, "hard": 1.0, "retention": target}
        )
        lines.append({"step": 10 * i, "eval": {"accuracy": acc, "retention": target, "flops_ratio": 0.5}})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_init_start_only_for_the_named_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    tc = importlib.import_module("train_curve")
    a = fake_run(tmp_path / "a", 0.5, [0.70, 0.71])
    b = fake_run(tmp_path / "b", 0.5, [0.69, 0.72])
    init = tmp_path / "init.json"
    row = {"schedule": "constant", "target": 0.5, "accuracy": 67.8, "retention": 0.5}
    init.write_text(json.dumps({"rows": [row], "commit": "abc"}))
    out = tmp_path / "curve.json"
    argv = ["train_curve.py", "--run", f"a={a}", "--run", f"b={b}", "--init", str(init)]
    monkeypatch.setattr(sys, "argv", [*argv, "--init-for", "a", "--dense", "79.0", "--out", str(out)])
    tc.main()
    runs = json.loads(out.read_text())["runs"]
    assert [p["accuracy"] for p in runs["a"]["points"]] == [
        67.8,
        70.0,
        71.0,
    ]  # minute 0: the calibrated start
    assert [p["accuracy"] for p in runs["b"]["points"]] == [69.0, 72.0]  # another ApproxNet: no start
    assert [p["minutes"] for p in runs["b"]["points"]] == [1.0, 2.0]  # 10 steps of 6 s each
    assert runs["a"]["train_minutes"] == 2.0 and out.with_suffix(".png").stat().st_size > 1000
    monkeypatch.setattr(sys, "argv", [*argv, "--init-for", "c", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:  # a name that is no run: argparse's usage error
        tc.main()
    assert exc.value.code == 2
