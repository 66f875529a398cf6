"""Issue #28 leftover 1: an export that fails or is interrupted part-way leaves no file at its
output path (an older file there stays whole), nothing beside it, and no unrelated file touched.

Every writer (ONNX export, fusion, ONNX INT8, TFLite export and INT8) builds its file, sidecar and
tokenizer under their final names in a hidden staging folder beside the output and moves them out
only once verified and sealed (``sttabt_edge.atomic.staging`` / ``publish``, the model last)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from tiny import text_batch, tiny_bert, tiny_vit

from sttabt_edge import atomic
from sttabt_edge.errors import ExportError
from sttabt_edge.export.onnx import export_onnx
from sttabt_edge.reducers.dense import DenseReducer
from sttabt_edge.sparse_model import SparseClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
OLD = b"an older export the user still has"
UNRELATED = {"notes.txt": b"not ours", "m.onnx.tmp": b"a name like a temp file", "m.tflite.float.tmp": b"x"}


def images(n: int = 2) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def folder_with(tmp_path: Path, *old: str) -> Path:
    """A destination folder holding unrelated files and, at ``old``, an older export."""
    out = tmp_path / "out"
    out.mkdir()
    for name, data in UNRELATED.items():
        (out / name).write_bytes(data)
    for name in old:
        (out / name).write_bytes(OLD)
    return out


def unchanged(out: Path, *old: str) -> None:
    """Only what was there before, byte for byte: no new file, no staging folder left."""
    expected = {**UNRELATED, **dict.fromkeys(old, OLD)}
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, data in expected.items():
        assert (out / name).read_bytes() == data, name


def dense(model) -> SparseClassifier:
    return SparseClassifier(model, DenseReducer())


@pytest.mark.parametrize("old", [(), ("m.onnx",)])
def test_onnx_export_failing_verification_writes_nothing(tmp_path, monkeypatch, old):
    """The graph is saved and sealed, then verification fails: nothing reaches the folder."""
    import sttabt_edge.export.onnx as onnx_export

    out = folder_with(tmp_path, *old)

    def fails(*args, **kwargs):
        raise ExportError("verification failed (injected)")

    monkeypatch.setattr(onnx_export, "verify_all", fails)
    with pytest.raises(ExportError, match="injected"):
        export_onnx(dense(tiny_vit()), out / "m.onnx", example_inputs=images(), simplify=False)
    unchanged(out, *old)


def test_onnx_export_interrupted_mid_write_writes_nothing(tmp_path, monkeypatch, tokenizer):
    """Half the model bytes on disk, then an interrupt (Ctrl-C, a full disk): the text model's
    older file and tokenizer stay whole, no new one appears."""
    out = folder_with(tmp_path, "m.onnx", "m.tokenizer.json")

    def half_then_interrupt(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(
            dense(tiny_bert()),
            out / "m.onnx",
            example_inputs=text_batch(),
            tokenizer_file=tokenizer,
            simplify=False,
        )
    unchanged(out, "m.onnx", "m.tokenizer.json")


def test_onnx_export_killed_leaves_no_file_at_the_destination(tmp_path):
    """SIGKILL while the verified file is being sealed: no cleanup runs, yet the destination has no
    file; only the hidden staging folder is left (``.m.onnx.<random>.tmp``)."""
    out = folder_with(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tiny import tiny_vit
        import sttabt_edge.export.onnx as onnx_export
        from sttabt_edge.reducers.dense import DenseReducer
        from sttabt_edge.sparse_model import SparseClassifier

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        onnx_export.verify_all = killed
        pixels = torch.randn(2, 3, 32, 32)
        sc = SparseClassifier(tiny_vit(), DenseReducer())
        onnx_export.export_onnx(sc, {str(out / "m.onnx")!r}, example_inputs={{"pixel_values": pixels}},
                                simplify=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = sorted(p.name for p in out.iterdir() if p.name not in UNRELATED)
    assert len(left) == 1 and left[0].startswith(".m.onnx.") and left[0].endswith(".tmp"), left
    assert not (out / "m.onnx").exists()


def test_onnx_int8_failing_writes_nothing(tmp_path, monkeypatch):
    """The INT8 file is saved, then fails the runtime's checks: it was saved straight onto the
    output path before, replacing the older file with one the runtime refuses."""
    import sttabt_edge.export.quantize as quantize

    src = export_onnx(dense(tiny_vit()), tmp_path / "fp32.onnx", example_inputs=images(), simplify=False).path
    out = folder_with(tmp_path, "m.onnx")

    def fails(path, *args):
        assert Path(path).stat().st_size > 1000  # the whole INT8 file, on disk
        raise ExportError("the saved file fails the runtime's checks (injected)")

    monkeypatch.setattr(quantize, "check_saved_digest", fails)
    with pytest.raises(ExportError, match="injected"):
        quantize.quantize_onnx(src, out / "m.onnx", "dynamic")
    unchanged(out, "m.onnx")


def test_fusion_failing_parity_writes_nothing(tmp_path, monkeypatch):
    import sttabt_edge.export.fusion as fusion

    src = export_onnx(dense(tiny_vit()), tmp_path / "src.onnx", example_inputs=images(), simplify=False).path
    out = folder_with(tmp_path, "m.onnx")

    def fails(*args, **kwargs):
        raise ExportError("fused graph differs (injected)")

    monkeypatch.setattr(fusion, "check_parity", fails)
    with pytest.raises(ExportError, match="injected"):
        fusion.fuse_onnx(
            src, out / "m.onnx", check_inputs=[{"pixel_values": images(1)["pixel_values"].numpy()}]
        )
    unchanged(out, "m.onnx")


@pytest.mark.parametrize("old", [(), ("m.tflite", "m.tflite.json", "m.tokenizer.json")])
def test_tflite_export_failing_writes_nothing(tmp_path, monkeypatch, tokenizer, old):
    """The converter writes a file LiteRT cannot load (a stand-in for a conversion cut short):
    verification refuses it, and neither the .tflite, its sidecar nor its tokenizer (copied
    before the conversion) reaches the folder; a same-named ``.float.tmp`` file is not touched."""
    import sttabt_edge.export.tflite as tflite

    out = folder_with(tmp_path, *old)
    monkeypatch.setattr(tflite, "convert", lambda module, sample: b"TFL3 half a flatbuffer")
    with pytest.raises(ExportError, match="LiteRT cannot load"):
        tflite.export_tflite(
            dense(tiny_bert()),
            out / "m.tflite",
            example_inputs=text_batch(),
            tokenizer_file=tokenizer,
        )
    unchanged(out, *old)


def test_tflite_int8_failing_writes_nothing(tmp_path, monkeypatch):
    """Quantizing an exported .tflite: verification fails, so nothing is written (an older INT8 file
    and sidecar used to be replaced first, then deleted)."""
    import sttabt_edge.export.tflite as tflite

    src = tmp_path / "f.tflite"
    src.write_bytes(b"float model")
    src.with_name("f.tflite.json").write_text('{"exporter": {}, "tflite": {}}')
    out = folder_with(tmp_path, "m.tflite", "m.tflite.json")
    monkeypatch.setattr(tflite, "quantize_bytes", lambda data, *args: b"int8 model")
    monkeypatch.setattr(tflite, "xnnpack_coverage", lambda path: {})
    monkeypatch.setattr(tflite, "write_sidecar", lambda side, *args: side.write_text("{}"))

    def fails(*args, **kwargs):
        raise ExportError("kept counts differ (injected)")

    monkeypatch.setattr(tflite, "verify_tflite", fails)
    with pytest.raises(ExportError, match="injected"):
        tflite.quantize_tflite(src, out / "m.tflite", sc=dense(tiny_vit()), inputs=images())
    unchanged(out, "m.tflite", "m.tflite.json")


def test_publish_moves_the_model_last(tmp_path, monkeypatch):
    """An interrupt between two renames leaves the companions, never the model without them."""
    dest = tmp_path / "dest"
    dest.mkdir()
    real = os.replace
    moved: list[str] = []

    def replace(src, dst):
        if Path(dst).name == "m.onnx":
            raise KeyboardInterrupt
        moved.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic.staging(dest / "m.onnx") as work:
        for name in ("m.tokenizer.json", "m.onnx"):
            (work / name).write_bytes(b"whole")
        atomic.publish(work, dest, ["m.tokenizer.json", "m.onnx"])
    assert moved == ["m.tokenizer.json"]
    assert sorted(p.name for p in dest.iterdir()) == ["m.tokenizer.json"]  # staging folder removed
