"""The shared helpers of #13: one ORT session configuration, one timing loop, one atomic write."""

from __future__ import annotations

from pathlib import Path

import pytest

from sttabt_edge.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from sttabt_edge.runtime.sessions import interleaved_times_ms, session_options, time_ms


def test_export_and_runtime_options_are_one_builder():
    import onnxruntime as ort

    from sttabt_edge.export.ort import session_options as export_options

    so = export_options(3)  # what export timing used before: 3 intra, 1 inter, sequential, no spin, quiet
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.log_severity_level == 3
    spin = session_options(None, "basic", spinning=True)  # bench / load(spinning=True)
    assert spin.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spin.get_session_config_entry("session.force_spinning_stop") == "1"
    assert spin.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert spin.intra_op_num_threads == ort.SessionOptions().intra_op_num_threads  # None: ORT's default


def test_interleaved_times_round_robin():
    order: list[str] = []
    times = interleaved_times_ms(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, runs=3, warmup=1
    )
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    ms, out = time_ms(lambda: 7)
    assert out == 7 and ms >= 0


def test_atomic_write(tmp_path: Path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_text() == "two"

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "two"  # the old file, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temp file left


def test_benchmarks_silence_third_party_import_notices():
    """torchao prints "Failed to load ..." lines and torch _pytree notices on import; a benchmark
    (a script that calls common.quiet_third_party first) does not, unless STTABT_VERBOSE=1. Importing
    common alone changes no logger: the test process that imports benchmark modules stays as it was."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    code = (
        "import logging, common; assert logging.getLogger('torchao').level == logging.NOTSET; "
        "common.quiet_third_party(); import torchao, transformers"
    )
    env = {k: v for k, v in os.environ.items() if k != "STTABT_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=bench, capture_output=True, text=True, env=env)
    loud = subprocess.run(
        [sys.executable, "-c", code],
        cwd=bench,
        capture_output=True,
        text=True,
        env={**env, "STTABT_VERBOSE": "1"},
    )
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    if not loud.stderr.strip():
        pytest.skip("these libraries print nothing on import here: nothing to silence")
    assert quiet.stderr.strip() == ""
