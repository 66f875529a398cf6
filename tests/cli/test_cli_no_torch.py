"""`sttabt-edge run / bench / info` on a device without torch: the CLI's imports stay torch-free.

Each command runs in a subprocess whose import system refuses torch and transformers (what a
runtime-only install from the wheel looks like; scripts/check_wheel.sh does it for real in a
fresh venv). `show` needs PyTorch and says so in one line.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app

_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("torch", "transformers", "torchvision")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}: this command must stay torch-free")
            return None

    sys.meta_path.insert(0, Blocker())
    from sttabt_edge.cli import app

    try:
        app(args=sys.argv[1:], prog_name="sttabt-edge")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(f"LEAKED={leaked}", file=sys.stderr)
    sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-torch")
    tiny_vit().save_pretrained(root / "vit")
    out = root / "m.onnx"
    res = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(root / "vit"),
            "--out",
            str(out),
            "--approx",
            "untrained",
            "--no-simplify",
            "--latency-runs",
            "0",
            "--calib-samples",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(root / "x.png")
    return root


def _cli(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", ["run", "bench", "info"])
def test_runtime_commands_never_import_torch(exported, command):
    args = {
        "run": ["run", "m.onnx", "--image", "x.png", "--json"],
        "bench": ["bench", "m.onnx", "--runs", "2", "--warmup", "1", "--threads", "1"],
        "info": ["info", "--model", "vit"],
    }[command]
    proc = _cli(exported, *args)
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED=[]" in proc.stderr, proc.stderr
    if command == "run":
        assert len(json.loads(proc.stdout)[0]["kept_counts"]) == 3
    if command == "info":
        assert json.loads(proc.stdout)["layers"] == 3


def test_show_without_torch_is_one_line(exported):
    proc = _cli(
        exported, "show", "--model", "vit", "--image", "x.png", "--out", "g.png", "--approx", "oracle"
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("LEAKED")]
    assert proc.returncode == 2 and len(lines) == 1 and "needs torch" in lines[0], proc.stderr
