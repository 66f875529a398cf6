"""The audit's remaining cases: issue #28 section 6 (checkpoints, the bench worker's memory) with what
the issue said held (info's speed, the API's bomb guard, pickles never run), and #28's leftovers
(config files checked up front, an export killed or failing half-way). Each case returns an
:class:`audit_hardening.Outcome`; see ``audit_hardening.py``."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit_hardening import EXE, Ctx, Outcome, cli, refused, succeeded

CASES: list[tuple[str, str, Callable[[Ctx], Outcome]]] = []
FAST_EXPORT = "--method dense --calib-samples 2 --latency-runs 0 --no-simplify"


def add(section: str, name: str, fn: Callable[[Ctx], Outcome]) -> None:
    CASES.append((section, name, fn))


def case(section: str, name: str) -> Callable[[Callable[[Ctx], Outcome]], Callable[[Ctx], Outcome]]:
    def register(fn: Callable[[Ctx], Outcome]) -> Callable[[Ctx], Outcome]:
        CASES.append((section, name, fn))
        return fn

    return register


# ---- 6: checkpoints, the bench worker's memory ---------------------------------------------------------


@case("6 smaller", "checkpoint tensor bit flip, then --resume")
def checkpoint_flip(ctx: Ctx) -> Outcome:
    out = ctx.fresh("ckpt") / "run"
    args = ["train", "approx", "--model", ctx.vit, "--data", ctx.imgs, "--out", out, "--batch-size", "4"]
    first = cli(*args, "--steps", "2", "--save-every", "1")
    if first.rc != 0:
        return Outcome(False, f"training failed: {first.err.strip()[-150:]}")
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    tensors = max(latest.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(tensors.read_bytes())
    data[len(data) - 17] ^= 0x01  # inside the tensor data (the header is at the front)
    tensors.write_bytes(bytes(data))
    return refused(cli(*args, "--steps", "3", "--save-every", "1", "--resume"), "", max_s=None)


@case("6 smaller", "bench worker reports its own peak RSS, not the parent's")
def worker_rss(ctx: Ctx) -> Outcome:
    import resource

    from sttabt_edge.runtime.bench import bench

    res = bench(ctx.exports["vit.onnx"], runs=3, warmup=1, progress=False)
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = res.a.peak_rss_mb
    held = worker < 300 and worker < mine
    return Outcome(held, f"worker {worker:.0f} MB, this (torch-loaded) parent {mine:.0f} MB")


@case("6 smaller", "info on a model dir in under 1 s")
def info_fast(ctx: Ctx) -> Outcome:
    start = time.perf_counter()
    run = cli("info", "--model", ctx.vit)
    took = time.perf_counter() - start
    out = succeeded(run)
    return Outcome(out.held and took < 1.5, f"{took:.2f} s; {out.detail}")


@case("6 smaller", "API: a decompression bomb is refused by predict()")
def api_bomb(ctx: Ctx) -> Outcome:
    from handmade import png_header

    from sttabt_edge.errors import InputError
    from sttabt_edge.runtime import load

    bomb = ctx.fresh("apibomb") / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    try:
        load(ctx.exports["vit.onnx"]).predict(images=str(bomb))
    except InputError as e:
        return Outcome("\n" not in str(e), str(e)[:150])
    return Outcome(False, "answered")


@case("6 smaller", "a model folder's malicious pickle is refused, never run")
def malicious_pickle(ctx: Ctx) -> Outcome:
    import pickle
    import shutil

    d = ctx.fresh("pickle") / "model"
    shutil.copytree(ctx.vit, d)
    (d / "model.safetensors").unlink()
    marker = d.parent / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    run = cli("eval", "--model", d, "--data", ctx.imgs, "--max-samples", "2")
    out = refused(run, max_s=None)
    return Outcome(
        out.held and not marker.exists(), ("RAN THE PICKLE; " if marker.exists() else "") + out.detail
    )


# ---- 5: files that are not what they claim, images that explode, damaged weights ------------------------


_IMAGES_LOCK = threading.Lock()


def _images(ctx: Ctx) -> dict[str, Path]:
    """Made once: a 400 M-pixel PNG header (Pillow's DecompressionBombError), a 1 x 3000 PNG, a real
    90 M-pixel JPEG (Pillow's DecompressionBombWarning range), a truncated PNG."""
    from handmade import png_header
    from PIL import Image

    with _IMAGES_LOCK:  # cases run in threads: the first one makes them
        d = ctx.work / "images"
        if not d.is_dir():
            d.mkdir()
            (d / "bomb.png").write_bytes(png_header(20000, 20000))
            (d / "thin.png").write_bytes(png_header(1, 3000))
            Image.new("RGB", (9500, 9500), (120, 80, 40)).save(d / "big.jpg", quality=50)
            (d / "cut.png").write_bytes(ctx.ok_png.read_bytes()[:200])
    return {p.stem: p for p in d.iterdir()}


def _broken_model(ctx: Ctx, kind: str) -> Path:
    d = ctx.fresh("broken")
    if kind == "png as onnx":
        shutil.copy(ctx.ok_png, d / "m.onnx")
    elif kind == "truncated onnx":
        (d / "m.onnx").write_bytes(ctx.exports["vit.onnx"].read_bytes()[:5000])
    elif kind == "tflite without sidecar":
        shutil.copy(ctx.exports["vit.tflite"], d / "m.tflite")
        return d / "m.tflite"
    elif kind == "onnx without metadata":
        import onnx

        proto = onnx.load(str(ctx.exports["vit.onnx"]))
        del proto.metadata_props[:]
        onnx.save(proto, str(d / "m.onnx"))
    return d / "m.onnx"


for _kind in ("png as onnx", "truncated onnx", "tflite without sidecar", "onnx without metadata"):
    add(
        "5 files",
        f"run: a {_kind}",
        lambda c, k=_kind: refused(cli("run", _broken_model(c, k), "--image", c.ok_png)),
    )
add(
    "5 files",
    "verify: an onnx without metadata",
    lambda c: refused(
        cli(
            *c.args("verify {m} --reference {vit} --data {imgs}", m=_broken_model(c, "onnx without metadata"))
        ),
        max_s=None,
    ),
)
for _stem, _needle in (("bomb", "pixels"), ("thin", "aspect"), ("cut", "")):
    add(
        "5 files",
        f"run: image {_stem} (one line, no 'upscaled' warning first)",
        lambda c, s=_stem, n=_needle: refused(cli("run", c.exports["vit.onnx"], "--image", _images(c)[s]), n),
    )


def _bomb_folder(ctx: Ctx) -> Outcome:
    d = ctx.fresh("bombs")
    for cls in ("a", "b"):
        (d / cls).mkdir()
        shutil.copy(ctx.ok_png, d / cls / "ok.png")
    shutil.copy(_images(ctx)["bomb"], d / "a" / "bomb.png")
    return refused(cli("eval", "--model", ctx.vit, "--data", d), "pixels", max_s=None)


add("5 files", "eval: a folder holding a bomb image", _bomb_folder)


def _bad_weights(name: str, data: bytes, command: str) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        d = ctx.fresh("weights") / "model"
        shutil.copytree(ctx.vit, d)
        (d / "model.safetensors").unlink()
        (d / name).write_bytes(data)
        template = (
            "eval --model {d} --data {imgs} --max-samples 2"
            if command == "eval"
            else f"export --model {{d}} --out {{work}}/w.onnx {FAST_EXPORT}"
        )
        return refused(cli(*ctx.args(template, d=d)), "weights", max_s=None)

    return check


for _file, _bytes, _what, _command in (
    ("model.safetensors", b"not a safetensors file at all", "garbage .safetensors", "eval"),
    ("model.safetensors", b"", "empty .safetensors", "export"),
    ("pytorch_model.bin", b"\x80\x02garbage", "garbage pickle .bin", "eval"),
):
    add("5 files", f"{_command}: a model folder with {_what}", _bad_weights(_file, _bytes, _command))


add(
    "5 noise",
    "run a 90 M-pixel JPEG: answered, no DecompressionBombWarning",
    lambda c: succeeded(cli("run", c.exports["vit.onnx"], "--image", _images(c)["big"]), quiet=True),
)


# ---- #28's leftovers ---------------------------------------------------------------------------------------

CONFIGS = [  # (option, file content, the error names): refused in well under the torch import's time
    ("--config", '{"max_length": 100000}', "max_length"),
    ("--config", '{"max_length": 100}', "over the model's 64 positions"),
    ("--config", '{"lr": NaN}', "lr must be a finite number"),
    ("--config", '{"batch_size": 1.5}', "batch_size must be an integer"),
    ("--config", '{"epochs": 1e400, "steps": 0}', "epochs must be a finite number"),
    ("--config", '{"augment": {"mixup": -1}}', "mixup"),
    ("--sparse-config", '{"temperature": 0}', "temperature must be"),
    ("--sparse-config", '{"p": Infinity}', "p must be"),
    ("--sparse-config", '{"calib_samples": "64"}', "calib_samples must be an integer"),
]


def _config(option: str, content: str, needle: str) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        path = ctx.fresh("config") / "c.json"
        path.write_text(content)
        verb = ["baseline", "--method", "ltp"] if option == "--sparse-config" else ["approx"]
        args = [
            "train",
            *verb,
            "--model",
            ctx.bert,
            "--data",
            ctx.sst2 / "train.tsv",
            "--out",
            path.parent / "o",
        ]
        return refused(cli(*args, option, path), needle, max_s=3.0)

    return check


for _opt, _content, _needle in CONFIGS:
    CASES.append(("leftovers", f"{_opt} {_content}", _config(_opt, _content, _needle)))


@case("leftovers", "export killed mid-way: the older file stays whole")
def killed_export(ctx: Ctx) -> Outcome:
    """SIGKILL once the export's staging folder holds a graph: no new file at --out (the older one
    whole), an unrelated file untouched."""
    d = ctx.fresh("killed")
    out, other = d / "m.onnx", d / "notes.txt"
    out.write_bytes(b"an older export")
    other.write_bytes(b"unrelated")
    cmd = [str(EXE), "export", "--model", str(ctx.vit), "--out", str(out), *FAST_EXPORT.split()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any(d.glob(".m.onnx.*.tmp/*.onnx")):
        time.sleep(0.02)
    if proc.poll() is not None:
        return Outcome(False, f"the export ended (exit {proc.returncode}) before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in d.iterdir() if not p.name.startswith(".m.onnx."))
    whole = out.read_bytes() == b"an older export" and other.read_bytes() == b"unrelated"
    return Outcome(
        names == ["m.onnx", "notes.txt"] and whole, f"after SIGKILL: {names}, older file whole: {whole}"
    )


@case("leftovers", "export failing late onto an existing model: the older file stays")
def failing_export(ctx: Ctx) -> Outcome:
    """Calibration images that cannot be read: one error line, the older export at --out unchanged."""
    d = ctx.fresh("failing")
    out = d / "m.onnx"
    shutil.copy(ctx.exports["vit.onnx"], out)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    for cls in ("a", "b"):
        (d / "calib" / cls).mkdir(parents=True)
        (d / "calib" / cls / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = refused(
        cli("export", "--model", ctx.vit, "--out", out, "--calib", d / "calib", *FAST_EXPORT.split()),
        max_s=None,
    )
    same = hashlib.sha256(out.read_bytes()).hexdigest() == before
    return Outcome(res.held and same, ("" if same else "OLDER FILE CHANGED; ") + res.detail)


@case("leftovers", "train --amp fp16 without CUDA: one line up front")
def amp_fp16(ctx: Ctx) -> Outcome:
    import torch

    if torch.cuda.is_available():
        return Outcome(True, "CUDA is here: fp16 is allowed (nothing to refuse)")
    args = [
        "train",
        "approx",
        "--model",
        ctx.vit,
        "--data",
        ctx.imgs,
        "--out",
        ctx.work / "fp16",
        "--amp",
        "fp16",
    ]
    return refused(cli(*args), "needs a CUDA device")
