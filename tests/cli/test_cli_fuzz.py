"""Issue #28: property-based fuzzing of the CLI (hypothesis, the house settings of tests/fuzz.py).

CLI values: every numeric option of every command gets random values (integers far past any
bound, floats with NaN and infinities, boundary values, junk text). The command either goes on
to load its model (stubbed here: :class:`Reached`) or prints exactly one ``error:`` line and exits
2, never a traceback; and for a number it goes on exactly when the number is in the option's
documented range (the oracle below). Validation comes before any model loads, so each case takes
milliseconds.

Image files: random bytes, valid images truncated or with flipped bytes, headers that claim huge
dimensions (PNG up to 2^31-1 a side, JPEG up to 65535) through ``run`` on a real exported model:
an answer, or one ``error:`` line and exit 2.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from fuzz import FUZZ
from handmade import png_header
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from tiny import tiny_vit
from typer.testing import CliRunner

from sttabt_edge.cli import app

runner = CliRunner()


class Reached(Exception):
    """The command accepted its options and went on to load a model or start the work."""


def reached(*args, **kwargs):
    raise Reached


STUBS = (  # where each command leaves validation for real work
    "sttabt_edge.runtime.load",  # run, bench, verify: the exported file
    "sttabt_edge.models.loading.load_model",  # eval (and anything else that loads a PyTorch model)
    "sttabt_edge.export.pipeline.run_export",  # export, after check_request
    "sttabt_edge.compress.run_compress",  # compress, after CompressConfig and check_out
    "sttabt_edge.cli_train._load_training",  # train, after TrainConfig and the generic checks
)


@dataclass(frozen=True)
class Opt:
    name: str
    kind: str  # "int" | "float"
    lo: float
    hi: float | None = None  # None: no upper bound
    lo_open: bool = False
    hi_open: bool = False

    def valid(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def edges(self) -> list[float]:
        step = 1 if self.kind == "int" else 1e-9
        ends = [self.lo] + ([] if self.hi is None else [self.hi])
        return [e + d for e in ends for d in (-step, 0, step)]


def I(name, lo, hi=None):  # noqa: E743 (an integer option)
    return Opt(name, "int", lo, hi)


def F(name, lo, hi, lo_open=False, hi_open=False):
    return Opt(name, "float", lo, hi, lo_open, hi_open)


OPTIONS = {
    "run": [I("--top-k", 1), I("--threads", 1, 1024)],
    "bench": [
        I("--threads", 1, 1024),
        I("--batch", 1, 4096),
        I("--runs", 1),
        I("--warmup", 0),
        I("--seq-len", 1, 65536),
        I("--block", 1),
        I("--input-limit", 1),
    ],
    "verify": [
        I("--batch-size", 1, 4096),
        I("--max-samples", 1),
        F("--max-abs-logit", 0.0, 1e6),
        F("--min-top1-agreement", 0.0, 1.0),
        F("--min-kept-agreement", 0.0, 1.0),
    ],
    "eval": [
        F("--keep-ratio", 0.0, 1.0, lo_open=True),
        I("--batch-size", 1, 4096),
        I("--max-samples", 1),
        I("--occupancy-length", 1, 65536),
        I("--min-keep", 1),
    ],
    "export": [
        F("--keep-ratio", 0.0, 1.0, lo_open=True),
        I("--opset", 14, 23),
        I("--seq-len", 1, 65536),
        I("--calib-samples", 1, 4096),
        I("--latency-runs", 0),
        I("--threads", 1, 1024),
        I("--min-keep", 1),
    ],
    "compress": [
        F("--budget-minutes", 0.0, 7 * 24 * 60.0, lo_open=True),
        F("--max-drop", 0.0, 100.0, hi_open=True),
        I("--batch-size", 1, 4096),
        I("--threads", 1, 1024),
        I("--search-steps", 1, 30),
        I("--holdout", 10),
        I("--holdout-min-tokens", 0),
        I("--bench-runs", 1),
        I("--max-length", 8, 65536),
        I("--approx-steps", 0),
        I("--threshold-steps", 0),
        I("--approx-factor", 1, 1024),
        I("--approx-heads", 0, 1024),
    ],
    "train": [
        F("--epochs", 0.0, 1e4, lo_open=True),
        I("--steps", 0, 10**9),
        F("--lr", 0.0, 10.0, lo_open=True),
        I("--batch-size", 1, 4096),
        I("--grad-accum", 1, 4096),
        I("--max-eval-samples", 0),
        I("--num-workers", 0, 256),
        I("--save-every", 0),
        I("--log-every", 0),
        I("--seed", 0, 2**32 - 1),
        I("--factor", 1, 1024),
        I("--heads", 0, 1024),
        F("--track-weight", 0.0, 1e6),
    ],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """What the commands' other options name: a model dir (its config.json is all the checks read),
    an image folder, a stand-in exported file; outputs go to paths that do not exist yet."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    tiny_vit().config.save_pretrained(root / "vit")
    (root / "images" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "a" / "0.png")
    (root / "m.onnx").write_bytes(b"stand-in")
    return root


def base_args(command: str, root) -> list[str]:
    vit, img, onnx = str(root / "vit"), str(root / "images"), str(root / "m.onnx")
    return {
        "run": ["run", onnx, "--image", str(root / "images" / "a" / "0.png")],
        "bench": ["bench", onnx],
        "verify": ["verify", onnx, "--reference", vit, "--data", img],
        "eval": ["eval", "--model", vit, "--data", img],
        "export": ["export", "--model", vit, "--out", str(root / "o.onnx"), "--method", "topk"],
        "compress": ["compress", "--model", vit, "--data", img, "--out", str(root / "c"), "--max-drop", "1"],
        "train": ["train", "approx", "--model", vit, "--data", img, "--out", str(root / "t"), "--steps", "5"],
    }[command]


def number(opt: Opt) -> st.SearchStrategy[float]:
    edges = st.sampled_from(opt.edges())
    if opt.kind == "int":
        return st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), edges.map(int))
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), edges)


@st.composite
def cases(draw, command: str) -> tuple[str, str, bool | None]:
    """(option, value as typed, whether it must be accepted; None: no oracle, only the format)."""
    opt = draw(st.sampled_from(OPTIONS[command]))
    if draw(st.integers(0, 4)) == 0:  # junk, or a number of the other kind
        junk = st.one_of(
            st.text(max_size=8), st.floats().map(repr), st.sampled_from(["", "1e400", "0x10", "--help"])
        )
        return opt.name, draw(junk), None
    v = draw(number(opt))
    typed = str(int(v)) if opt.kind == "int" else repr(float(v))
    return opt.name, typed, opt.valid(v) and (opt.name not in SHAPE or fits(opt.name, int(v)))


SHAPE = ("--approx-factor", "--factor", "--approx-heads", "--heads")  # the ApproxNet built must fit the model


def fits(name: str, v: int) -> bool:
    """The tiny ViT (hidden 32, 4 heads, FFN 64) takes this ApproxNet, the other value at its default
    (factor 8, 1 head; heads 0: the model's)."""
    from sttabt_edge.model_info import approx_shape_problem

    factor, heads = (v, 1) if name.endswith("factor") else (8, v or None)
    return approx_shape_problem(32, 4, 64, factor, heads) is None


def one_error_line(res) -> bool:
    lines = [line for line in res.output.splitlines() if line.strip()]
    return res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("command", list(OPTIONS))
def test_cli_values_are_accepted_or_one_error_line(command, files):
    with pytest.MonkeyPatch.context() as mp:
        for target in STUBS:
            mp.setattr(target, reached)

        @FUZZ
        @given(case=cases(command))
        def check(case):
            option, typed, must_accept = case
            args = [*base_args(command, files), f"{option}={typed}"]
            res = runner.invoke(app, args)
            accepted = isinstance(res.exception, Reached)
            assert accepted or one_error_line(res), (args, res.output, res.exception)
            assert "Traceback" not in res.output, (args, res.output)
            if must_accept is not None:
                assert accepted == must_accept, (args, res.output)

        check()


# ---- image files -----------------------------------------------------------------------------

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


@st.composite
def valid_image(draw) -> bytes:
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16"]))
    fmt = draw(st.sampled_from(FORMATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    im = (
        im.convert(mode)
        if mode != "I;16"
        else Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    )
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot hold: as RGB
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


@st.composite
def damaged(draw, make: Callable[[], st.SearchStrategy[bytes]]) -> bytes:
    data = bytearray(draw(make()))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


image_bytes = st.one_of(
    st.binary(max_size=2048),
    valid_image(),
    damaged(valid_image),
    st.builds(png_header, st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)),
    st.builds(jpeg_claiming, st.integers(1, 65535), st.integers(1, 65535)),
)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-images")
    tiny_vit().save_pretrained(root / "vit")
    out = root / "vit.onnx"
    args = ["export", "--model", str(root / "vit"), "--out", str(out), "--method", "dense"]
    res = runner.invoke(app, [*args, "--calib-samples", "2", "--latency-runs", "0", "--no-simplify"])
    assert res.exit_code == 0, res.output
    return out


def test_image_files_get_an_answer_or_one_error_line(image_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-image-files")

    @FUZZ
    @given(data=image_bytes, suffix=st.sampled_from([".png", ".jpg", ".bmp", ".img"]))
    def check(data, suffix):
        path = folder / f"x{suffix}"
        path.write_bytes(data)
        res = runner.invoke(app, ["run", str(image_model), "--image", str(path), "--json"])
        assert res.exit_code in (0, 2), (res.output, res.exception)
        assert "Traceback" not in res.output and "DecompressionBomb" not in res.output, res.output
        if res.exit_code == 2:
            assert one_error_line(res), res.output
        else:
            assert "error:" not in res.output, res.output

    check()
