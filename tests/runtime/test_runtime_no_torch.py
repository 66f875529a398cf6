"""The runtime must import and run on a device that has no torch (nor transformers)."""

import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("torch", "transformers", "torchvision")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}: the runtime must stay torch-free")
            return None

    sys.meta_path.insert(0, Blocker())

    import sttabt_edge.runtime as rt

    out = rt.ImagePreprocess()([sys.argv[1]])
    assert out.shape == (1, 3, 224, 224), out.shape
    assert str(out.dtype) == "float32", out.dtype
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    assert "torch" not in sys.modules
    print("RUNTIME-OK")
    """
)


def test_runtime_imports_and_runs_without_torch(tmp_path: Path) -> None:
    img_path = tmp_path / "img.png"
    Image.new("RGB", (320, 240), (10, 120, 200)).save(img_path)
    # Run from tmp_path so the repo's top-level `runtime/` folder is not importable by cwd accident.
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(img_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "RUNTIME-OK" in proc.stdout
