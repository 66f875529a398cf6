"""CLI commands for exported models that need no torch: `run` and `bench`.

Both import only the runtime, so they work on a device with no torch. Their options, the model
files and what they write are checked before any model runs; LiteRT's log lines stay off stderr
unless ``--verbose`` (:mod:`~sttabt_edge.cli_stderr`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sttabt_edge.cli_common import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    MAX_THREADS,
    check_at_least,
    check_exists,
    error_line,
    fail,
)
from sttabt_edge.cli_inputs import KIND, check_input_kind, check_texts, predictor_family
from sttabt_edge.cli_options import NoVerifyDigest
from sttabt_edge.cli_outputs import (
    check_distinct,
    check_output_file,
    with_companions,
    write_output,
    write_text_output,
)
from sttabt_edge.cli_stderr import quiet_litert

if TYPE_CHECKING:
    from sttabt_edge.runtime import Prediction, Predictor
    from sttabt_edge.runtime.bench import BenchResult

SMALL_IMAGE = 0.5  # warn when an image's shorter side is under this fraction of the model's crop
SEQ_LEN = 128  # bench: tokens per synthetic text input, unless the model's limit is lower
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def run_cmd(
    model: Annotated[Path, typer.Argument(metavar="FILE", help="exported .onnx or .tflite file")],
    image: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="an image file (repeat for more)")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(metavar="TEXT", help="a text, 'a ||| b' for a pair (repeat for more)")
    ] = None,
    top_k: int = 5,
    threads: Annotated[int | None, typer.Option(help="intra-op threads (default: runtime's choice)")] = None,
    truncate: Annotated[
        bool, typer.Option(help="cut texts longer than the model's limit (default: refuse them)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    no_verify_digest: NoVerifyDigest = False,
) -> None:
    """Classify images or texts with an exported model (no torch needed)."""
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.runtime import load

    if not image and not text:
        fail("give --image PATH or --text TEXT")
    if image and text:
        fail("give --image or --text, not both (one run classifies one kind of input)")
    check_exists("model", model, "file")
    check_at_least("--top-k", top_k, 1)
    check_at_least("--threads", threads, 1, MAX_THREADS)
    for path in image or ():
        check_exists("--image", path, "file")
    check_texts(text or [])
    try:
        with quiet_litert():
            pred = load(model, threads=threads, verify_digest=not no_verify_digest)
        check_input_kind(predictor_family(pred), bool(image), bool(text), model.name)
        if image:
            feeds = pred.preprocess(images=image)  # refuses bad images before any warning about them
            _warn_small_images(pred, image)
            out = pred.postprocess(pred.run(feeds), top_k)
        else:
            out = _predict_texts(pred, text or [], top_k, truncate)
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))
    items = out.to_json()
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    sources = [str(p) for p in image] if image else list(text or [])
    for src, item in zip(sources, items, strict=True):
        typer.echo(src)
        for t in item["top"]:
            typer.echo(f"  {t['score']:.3f}  {t['label']}")
        if "kept_counts" in item:
            typer.echo(f"  kept tokens per layer: {item['kept_counts']}")


def _predict_texts(pred: Predictor, text: list[str], top_k: int, truncate: bool) -> Prediction:
    """Texts ('a ||| b': a pair) through the model; too-long ones are cut with --truncate, else refused."""
    texts: list[Any] = [tuple(t.split(" ||| ", 1)) if " ||| " in t else t for t in text]
    assert pred.text is not None  # check_input_kind: a text model
    if not truncate:
        _refuse_long_texts(pred, texts)
    enc = pred.text(texts, truncation=truncate)
    feeds = {k: v for k, v in enc.items() if k in pred.input_names}
    return pred.postprocess(pred.run(feeds), top_k)


def _refuse_long_texts(pred: Predictor, texts: list[Any]) -> None:
    """Name the CLI option in the error (the library's own message names ``truncation=True``)."""
    text = pred.text
    assert text is not None
    limit = text.limit
    for i, n in enumerate(text.token_lengths(texts)):  # the runtime's checks (e.g. valid Unicode) first
        if n > limit:
            fail(
                f"text {i + 1} is {n} tokens long, over the model's limit of {limit}; pass --truncate to cut it"
            )


def _warn_small_images(pred: Predictor, images: list[Path]) -> None:
    """Upscaling a thumbnail to the model's crop blurs it past what the model was trained on."""
    from PIL import Image

    if pred.image is None:
        return
    crop = pred.image.image_size
    for path in images:
        try:
            with warnings.catch_warnings(), Image.open(path) as im:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                w, h = im.size
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # unreadable or oversized: the runtime reports it
        if min(w, h) < SMALL_IMAGE * crop:
            typer.secho(
                f"WARNING: {path} is {w}x{h}, much smaller than the model's {crop}x{crop} input: it is "
                f"upscaled {pred.image.resize_size / min(w, h):.1f}x, expect lower accuracy",
                fg="yellow",
                err=True,
            )


def bench_cmd(
    model: Annotated[Path, typer.Argument(metavar="FILE", help="exported .onnx or .tflite file")],
    vs: Annotated[Path | None, typer.Option(help="second model, timed interleaved (A B A B ...)")] = None,
    threads: int = 2,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    seq_len: Annotated[
        int | None,
        typer.Option(
            help=f"text models: tokens per synthetic input [default: {SEQ_LEN}, or the model's limit]"
        ),
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(
            help="time these inputs, not synthetic ones: a text file (one per line) or an image folder"
        ),
    ] = None,
    input_limit: Annotated[int, typer.Option(help="with --inputs: use the first N inputs")] = 256,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="write a latency plot (PNG)")] = None,
    spin: Annotated[
        bool,
        typer.Option(help="threads busy-wait between ops: fastest on an otherwise idle device"),
    ] = False,
    block: Annotated[
        int,
        typer.Option(help="runs of each model per round; the cold first one is dropped"),
    ] = 1,
    no_verify_digest: NoVerifyDigest = False,
) -> None:
    """Latency p50/p90/p99, throughput, peak RSS, kept tokens; with --vs the latency ratio."""
    from sttabt_edge.errors import SttabtError

    check_exists("model", model, "file")
    check_exists("--vs", vs, "file")
    if inputs is not None and not inputs.exists():
        fail(f"--inputs {inputs} not found")
    for name, value, low, high in (
        ("--threads", threads, 1, MAX_THREADS),
        ("--batch", batch, 1, MAX_BATCH),
        ("--runs", runs, 1, None),
        ("--warmup", warmup, 0, None),
        ("--seq-len", seq_len, 1, MAX_SEQ_LEN),
        ("--block", block, 1, None),
        ("--input-limit", input_limit, 1, None),
    ):
        check_at_least(name, value, low, high)
    _check_bench_outputs(model, vs, inputs, json_out, plot_out)
    from sttabt_edge.runtime import load
    from sttabt_edge.runtime.bench import bench, plot

    errors = (SttabtError, ValueError, FileNotFoundError)
    try:
        with quiet_litert():
            preds = [load(p, verify_digest=not no_verify_digest) for p in (model, vs) if p is not None]
    except errors as e:
        fail(error_line(str(e)))
    seq_len = _bench_seq_len(preds, seq_len)
    try:
        with quiet_litert():  # the workers' interpreters too: they inherit fd 2
            res = bench(
                model,
                vs,
                threads=threads,
                batch=batch,
                runs=runs,
                warmup=warmup,
                seq_len=seq_len,
                spinning=spin,
                block=block,
                verify_digest=not no_verify_digest,
                inputs=inputs,
                input_limit=input_limit,
            )
    except (*errors, RuntimeError) as e:  # RuntimeError: a benchmark worker died
        fail(error_line(str(e)))
    _print_bench(res, model, vs, spin, warmup)
    if json_out:
        write_text_output(json_out, json.dumps(res.to_dict(), indent=2))
    if plot_out:
        write_output(plot_out, lambda tmp: plot(res, tmp))


def _check_bench_outputs(
    model: Path, vs: Path | None, inputs: Path | None, json_out: Path | None, plot_out: Path | None
) -> None:
    """--json and --plot: writable, none of the models or inputs, not one file; --plot's suffix and
    matplotlib (the benchmark itself does not need it) before minutes of timing."""
    sources = [*with_companions("model", model), *with_companions("--vs", vs), ("--inputs", inputs)]
    if json_out is not None:
        check_output_file("--json", json_out, sources)
    if plot_out is not None:
        import importlib.util

        check_output_file("--plot", plot_out, sources, suffixes=PLOT_SUFFIXES)
        if importlib.util.find_spec("matplotlib") is None:
            fail("--plot needs matplotlib (pip install matplotlib); the benchmark itself does not")
    check_distinct([("--json", json_out), ("--plot", plot_out)])


def _bench_seq_len(preds: list[Predictor], seq_len: int | None) -> int:
    """Both models of one kind; synthetic text no longer than either model's limit."""
    kinds = {predictor_family(p) for p in preds}
    if len(kinds) > 1:
        a, b = preds
        fail(
            f"--vs compares two models on the same inputs: {a.path.name} is {KIND[predictor_family(a)]}, "
            f"{b.path.name} is {KIND[predictor_family(b)]}"
        )
    limits = [(p.path.name, p.text.limit) for p in preds if p.text is not None]
    if not limits:
        return seq_len or SEQ_LEN
    name, limit = min(limits, key=lambda x: x[1])
    if seq_len is None:
        return min(SEQ_LEN, limit)
    if seq_len > limit:
        fail(f"--seq-len {seq_len} is over {name}'s limit of {limit} tokens")
    return seq_len


def _print_bench(res: BenchResult, model: Path, vs: Path | None, spin: bool, warmup: int) -> None:
    """The latency table on stdout, and the ratio with --vs."""
    from rich.console import Console
    from rich.table import Table

    runs, block, batch, threads = res.runs, res.block, res.batch, res.threads
    rounds = f"{runs} rounds of {block} runs (first dropped)" if block > 1 else f"{runs} runs"
    if res.inputs is not None:
        fed = f"{res.inputs['count']} real inputs in turn"
        if res.inputs["mean_tokens"] is not None:
            fed += f", {res.inputs['mean_tokens']:.1f} tokens on average"
    else:
        fed = "synthetic input" + (f", {res.seq_len} tokens" if res.seq_len else "")
    table = Table(
        title=f"batch {batch}, {threads} threads{' (spinning)' if spin else ''}, {rounds} after "
        f"{warmup} warm-up; {fed}"
    )
    for col in ("model", "MB", "p50 ms", "p90 ms", "p99 ms", "samples/s", "peak RSS MB", "mean kept / layer"):
        table.add_column(col, justify="right")
    for s in [res.a] + ([res.b] if res.b else []):
        kept = "-" if s.kept_per_layer is None else " ".join(f"{v:.0f}" for v in s.kept_per_layer)
        table.add_row(
            Path(s.path).name,
            f"{s.size_mb:.1f}",
            f"{s.p50_ms:.2f}",
            f"{s.p90_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.throughput_per_s:.1f}",
            f"{s.peak_rss_mb:.0f}",
            kept,
        )
    console = Console()
    console.print(table)
    if res.ratio_p50 is not None and vs is not None:  # a ratio exists only with --vs
        console.print(
            f"latency ratio {model.name} / {vs.name}: median {res.ratio_p50:.3f} "
            f"(p10 {res.ratio_p10:.3f}, p90 {res.ratio_p90:.3f}), measured interleaved"
            f"{f' in blocks of {block}' if block > 1 else ''}"
        )


def register(app: typer.Typer) -> None:
    app.command("run", short_help="Classify images or texts with an exported file (no torch).")(run_cmd)
    app.command("bench", short_help="Latency, throughput and memory of a file; --vs: a ratio.")(bench_cmd)
