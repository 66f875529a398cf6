"""The audit's cases on model files (issue #28 sections 1-3 and 6): the seal and the metadata checks,
one predictor shared by threads, ``verify`` against a wrong file, checkpoints and the bench worker.
Each case returns an :class:`audit_hardening.Outcome`; see ``audit_hardening.py``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from audit_hardening import Ctx, Outcome, Run, cli, exited, refused
from onnx_metadata import field, metadata_entry, metadata_of, varint, with_metadata

from sttabt_edge.runtime import contract, seal

CASES: list[tuple[str, str, Callable[[Ctx], Outcome]]] = []


def case(section: str, name: str) -> Callable[[Callable[[Ctx], Outcome]], Callable[[Ctx], Outcome]]:
    def register(fn: Callable[[Ctx], Outcome]) -> Callable[[Ctx], Outcome]:
        CASES.append((section, name, fn))
        return fn

    return register


# ---- the metadata entry, edited at the protobuf level (tests/onnx_metadata.py, as test_seal.py does) ----


def metadata_text(path: Path) -> str:
    return metadata_of(path.read_bytes()).decode()


def write_metadata(path: Path, text: str) -> None:
    """Replace the one sttabt_edge entry's text (nothing resealed)."""
    path.write_bytes(with_metadata(path.read_bytes(), text.encode()))


def reseal(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Edit the metadata and seal it again, validly: what someone who can rewrite the file (or a
    buggy exporter) produces. A digest is no signature; the checks behind it must still hold."""
    meta = json.loads(metadata_text(path))
    meta.pop(contract.DIGEST_KEY, None)
    edit(meta)
    write_metadata(path, json.dumps(meta))  # the entry's new length first, then the seal over it
    data = path.read_bytes()
    layout = seal.onnx_layout(data)
    model = ("onnx", seal.onnx_model_sha256(data, layout))
    parts = seal.components(model, path.parent, layout.external, seal.tokenizer_name(meta))
    write_metadata(path, seal.sealed_text(meta, parts))
    return path


def next_digit(text: str, after: str) -> str:
    """``text`` with the first nonzero digit after ``after`` changed by 4 (0.485 -> 0.885: one byte)."""
    at = text.index(after) + len(after)
    at += next(i for i, c in enumerate(text[at:]) if c.isdigit() and c != "0")
    return text[:at] + str((int(text[at]) + 4) % 10) + text[at + 1 :]


def run_image(ctx: Ctx, path: Path, *extra: object) -> Run:
    return cli("run", path, "--image", ctx.ok_png, "--top-k", "1", *extra)


def run_text(path: Path, *extra: object) -> Run:
    return cli("run", path, "--text", "a great film", "--top-k", "1", *extra)


def edited_onnx(key: str, edit: Callable[[str], str]) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        path = ctx.copy_export(key, "edit")
        before = metadata_text(path)
        if (after := edit(before)) == before:
            return Outcome(False, "audit: the edit changed nothing")
        write_metadata(path, after)
        run = run_image(ctx, path) if key == "vit.onnx" else run_text(path)
        return refused(run, "digest mismatch")

    return check


def _relabel(text: str) -> str:
    """The first label becomes "toilet tissue" (compact JSON or the sidecar's indented one)."""
    new, n = re.subn(r'("labels": \[\s*)"[^"]*"', r'\1"toilet tissue"', text, count=1)
    assert n == 1, "no labels to edit"
    return new


def _swap_two_labels(text: str) -> str:
    new, n = re.subn(r'("labels": \[\s*)"([^"]*)",(\s*)"([^"]*)"', r'\1"\4",\3"\2"', text, count=1)
    assert n == 1, "no labels to edit"
    return new


for _name, _key, _edit in (
    ("ONNX labels rewritten (image)", "vit.onnx", _relabel),
    ("ONNX labels swapped (text)", "bert.onnx", _swap_two_labels),
    ("ONNX one byte of the mean changed", "vit.onnx", lambda t: next_digit(t, '"mean": [')),
    ("ONNX std edited", "vit.onnx", lambda t: next_digit(t, '"std": [')),
    ("ONNX metadata: one added space", "vit.onnx", lambda t: t.replace(", ", ",  ", 1)),
):
    CASES.append(("1 seal", _name, edited_onnx(_key, _edit)))


@case("1 seal", "ONNX second metadata entry appended (with and without the seal)")
def second_entry(ctx: Ctx) -> Outcome:
    path = ctx.copy_export("vit.onnx", "second")
    forged = json.loads(metadata_text(path))
    forged["labels"] = ["cucumber"] * len(forged["labels"])
    path.write_bytes(path.read_bytes() + metadata_entry(json.dumps(forged).encode()))
    a, b = refused(run_image(ctx, path)), refused(run_image(ctx, path, "--no-verify-digest"))
    return Outcome(a.held and b.held, f"{a.detail} | {b.detail}")


def _sidecar_edit(edit: Callable[[str], str]) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        path = ctx.copy_export("vit.tflite", "sidecar")
        side = path.with_name(path.name + ".json")
        before = side.read_text()
        if (after := edit(before)) == before:
            return Outcome(False, "audit: the edit changed nothing")
        side.write_text(after)
        return refused(run_image(ctx, path), "digest mismatch")

    return check


CASES.append(("1 seal", "TFLite sidecar labels edited", _sidecar_edit(_relabel)))
CASES.append(
    ("1 seal", "TFLite sidecar: one byte of the mean", _sidecar_edit(lambda t: next_digit(t, '"mean": [')))
)


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


@case("1 seal", "TFLite model: one byte flipped")
def tflite_flip(ctx: Ctx) -> Outcome:
    path = ctx.copy_export("vit.tflite", "tflflip")
    _flip(path, 0.6)
    return refused(run_image(ctx, path), "digest mismatch")


@case("1 seal", "ONNX weights: one byte flipped")
def onnx_flip(ctx: Ctx) -> Outcome:
    path = ctx.copy_export("vit.onnx", "onnxflip")
    _flip(path, 0.5)
    return refused(run_image(ctx, path), "digest mismatch")


@case("1 seal", "text tokenizer vocabulary swapped")
def tokenizer_swap(ctx: Ctx) -> Outcome:
    path = ctx.copy_export("bert.onnx", "tok")
    tok = path.with_name(json.loads(metadata_text(path))["preprocess"]["text"]["tokenizer_file"])
    data = json.loads(tok.read_text())
    vocab = data["model"]["vocab"]
    vocab["great"], vocab["film"] = vocab["film"], vocab["great"]
    tok.write_text(json.dumps(data))
    return refused(run_text(path), "digest mismatch")


@case("1 seal", "external-data weights edited (sealed export loads first)")
def external_data(ctx: Ctx) -> Outcome:
    import onnx

    from sttabt_edge.export.metadata import read_metadata, set_metadata

    path = ctx.copy_export("vit.onnx", "external")
    meta = read_metadata(path)
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, location="vit.onnx.data", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, {k: v for k, v in meta.items() if k != "digest"}, path.parent)  # the exporter's seal
    onnx.save(proto, str(path))
    good = run_image(ctx, path)
    if good.rc != 0:
        return Outcome(False, f"the sealed external-data file does not load: {good.err.strip()[-150:]}")
    _flip(path.with_name("vit.onnx.data"))
    return refused(run_image(ctx, path), "digest mismatch")


def _contradiction(key: str, change: dict[str, Any], needle: str) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        path = ctx.copy_export(key, "contra")
        kind = "image" if key == "vit.onnx" else "text"
        if "tokenizer_file" in change:  # a file there to seal, so the path itself is what is refused
            tok = json.loads(metadata_text(path))["preprocess"]["text"]["tokenizer_file"]
            (path.parent.parent / "x.json").write_bytes((path.parent / tok).read_bytes())
        reseal(path, lambda m: m["preprocess"][kind].update(change))
        run = run_image(ctx, path) if kind == "image" else run_text(path)
        a = refused(run, needle)
        skip = "--no-verify-digest"
        b = refused(run_image(ctx, path, skip) if kind == "image" else run_text(path, skip), needle)
        return Outcome(a.held and b.held, f"{a.detail} | no digest: {b.held}")

    return check


CONTRADICTIONS = [  # (name, export, preprocess change, the error names)
    (
        "image_size 16 for a 32-pixel graph",
        "vit.onnx",
        {"image_size": 16, "resize_size": 18},
        "image_size 16",
    ),
    ("resize_size 4096", "vit.onnx", {"resize_size": 4096}, "resize_size 4096"),
    ("max_length 65536 on 64 positions", "bert.onnx", {"max_length": 65536}, "max_length 65536"),
    ("tokenizer_file '../x.json'", "bert.onnx", {"tokenizer_file": "../x.json"}, "tokenizer"),
]
for _name, _key, _change, _needle in CONTRADICTIONS:
    CASES.append(
        ("1 seal", f"{_name} (resealed; with and without the seal)", _contradiction(_key, _change, _needle))
    )


def _huge(ctx: Ctx, tflite: bool) -> Outcome:
    """A 300 MB metadata string: refused from its length, in seconds and small memory."""
    path = ctx.copy_export("vit.tflite" if tflite else "vit.onnx", "huge")
    pad, chunk = 300 << 20, b"x" * (1 << 20)
    head = b'{"pad": "'
    if tflite:
        with open(path.with_name(path.name + ".json"), "wb") as f:
            f.write(head)
            for _ in range(pad >> 20):
                f.write(chunk)
            f.write(b'"}')
    else:
        data = path.read_bytes()
        start, end = seal.onnx_layout(data).entries[0].record
        key = field(1, contract.METADATA_KEY.encode())
        value_len = len(head) + pad + 2
        inner_len = len(key) + len(varint(2 << 3 | 2)) + len(varint(value_len)) + value_len
        with open(path, "wb") as f:
            f.write(data[:start] + varint(14 << 3 | 2) + varint(inner_len) + key)
            f.write(varint(2 << 3 | 2) + varint(value_len) + head)
            for _ in range(pad >> 20):
                f.write(chunk)
            f.write(b'"}' + data[end:])
    run = run_image(ctx, path)
    for f in path.parent.iterdir():
        f.unlink()
    out = refused(run, "limit", max_s=5.0)
    if run.rss_mb is not None and run.rss_mb > 400:
        return Outcome(False, f"peak RSS {run.rss_mb:.0f} MB; {out.detail}")
    return Outcome(out.held, f"{run.seconds:.1f} s, {run.rss_mb or 0:.0f} MB; {out.detail}")


CASES.append(("1 seal", "300 MB metadata string (ONNX)", lambda ctx: _huge(ctx, False)))
CASES.append(("1 seal", "300 MB TFLite sidecar", lambda ctx: _huge(ctx, True)))


# ---- 2: one predictor, four threads ---------------------------------------------------------------


def _threads(ctx: Ctx, key: str) -> Outcome:
    import numpy as np

    from sttabt_edge.runtime import load

    images = sorted(ctx.imgs.rglob("*.png"))[:8]
    pred = load(ctx.exports[key])
    expected = [pred.predict(images=str(p), top_k=1) for p in images]
    want = [(r.labels[0][0], r.logits) for r in expected]
    errors: list[str] = []
    wrong = 0

    def call(i: int) -> None:
        nonlocal wrong
        try:
            r = pred.predict(images=str(images[i % len(images)]), top_k=1)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            return
        label, probs = want[i % len(images)]
        if r.labels[0][0] != label or not np.array_equal(r.logits, probs):
            wrong += 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(800)))
    held = not errors and not wrong
    return Outcome(
        held,
        f"800 calls on 4 threads: {len(errors)} raised, {wrong} wrong"
        + (f" ({errors[0][:80]})" if errors else ""),
    )


for _key in ("vit.tflite", "vit.onnx"):
    CASES.append(
        ("2 threads", f"one {_key} predictor, 4 threads x 200 calls", lambda c, k=_key: _threads(c, k))
    )


# ---- 3: verify cannot pass a wrong file --------------------------------------------------------------


def verify(ctx: Ctx, path: Path, *extra: object, text: bool = False) -> Run:
    ref, data = (ctx.bert, ctx.dev) if text else (ctx.vit, ctx.imgs)
    return cli("verify", path, "--reference", ref, "--data", data, "--max-samples", "8", *extra)


@case("3 verify", "the export itself passes (control)")
def verify_control(ctx: Ctx) -> Outcome:
    return exited(verify(ctx, ctx.exports["vit.onnx"]), 0)


def _verify_wrong(key: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        path = reseal(ctx.copy_export(key, "verify"), edit)
        return exited(verify(ctx, path, text=key == "bert.onnx"), 1)

    return check


def _scale(values: str, by: float) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        image = meta["preprocess"]["image"]
        image[values] = [round(v * by + (0.3 if values == "mean" else 0), 3) for v in image[values]]

    return edit


WRONG_FILES = [  # (name, export, metadata edit): each resealed validly, each must fail verify
    ("mean edited", "vit.onnx", _scale("mean", 1.0)),
    ("std edited", "vit.onnx", _scale("std", 3.0)),
    ("image labels permuted", "vit.onnx", lambda m: m["labels"].reverse()),
    ("text labels swapped", "bert.onnx", lambda m: m["labels"].reverse()),
]
for _name, _key, _edit in WRONG_FILES:
    CASES.append(("3 verify", f"{_name} and resealed: verify fails", _verify_wrong(_key, _edit)))


def altered_weights(ctx: Ctx) -> Path:
    """Every weight of the first large initializer scaled by 1.5, sealed again by the exporter's writer."""
    import onnx
    from onnx import numpy_helper

    from sttabt_edge.export.metadata import read_metadata, set_metadata

    path = ctx.copy_export("vit.onnx", "weights")
    meta = {k: v for k, v in read_metadata(path).items() if k != "digest"}
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    set_metadata(proto, meta, path.parent)
    onnx.save(proto, str(path))
    return path


@case("3 verify", "weights altered and resealed: verify fails")
def verify_weights(ctx: Ctx) -> Outcome:
    return exited(verify(ctx, altered_weights(ctx)), 1)


for _opts in (
    ("--max-abs-logit", "nan", "--min-top1-agreement", "nan", "--min-kept-agreement", "nan"),
    ("--max-abs-logit", "inf"),
    ("--min-top1-agreement", "inf"),
    ("--max-abs-logit", "-1"),
    ("--min-kept-agreement", "-1"),
    ("--min-top1-agreement", "1.5"),
):
    _label = f"altered weights, tolerance {' '.join(_opts[:2])}"
    CASES.append(("3 verify", _label, lambda c, o=_opts: refused(verify(c, altered_weights(c), *o))))
