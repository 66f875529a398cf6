"""CLI commands for exported models: `run`, `bench` (torch-free), `show` and `verify` (torch).

`run` and `bench` import only the runtime, so they work on a device with no torch; `show` and
`verify` say so in one line when torch is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sttabt_edge.cli_common import (
    approx_choice,
    check_at_least,
    check_exists,
    check_fraction,
    error_line,
    fail,
)

if TYPE_CHECKING:
    from sttabt_edge.runtime import Prediction, Predictor

NoVerifyDigest = Annotated[
    bool,
    typer.Option(
        "--no-verify-digest",
        help="load a model whose graph and weights do not match the digest recorded at export "
        "(or files exported before digests)",
    ),
]
SMALL_IMAGE = 0.5  # warn when an image's shorter side is under this fraction of the model's crop
ORACLE = "the model's own attention: an upper bound, not deployable"


def require_torch(command: str) -> None:
    """`show` and `verify` run the PyTorch model; a runtime-only install says so in one line."""
    import importlib.util

    try:
        missing = importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):  # a broken or deliberately blocked torch
        missing = True
    if missing:
        fail(
            f"`sttabt-edge {command}` runs the PyTorch model and needs torch (pip install torch, then "
            "sttabt-edge[export]); `run` and `bench` work without it"
        )


def run_cmd(
    model: Annotated[Path, typer.Argument(help="exported .onnx or .tflite file")],
    image: Annotated[list[Path] | None, typer.Option(help="image file(s)")] = None,
    text: Annotated[list[str] | None, typer.Option(help="text(s); 'a ||| b' for a sentence pair")] = None,
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
    check_exists("model", model, "file")
    check_at_least("--top-k", top_k, 1)
    check_at_least("--threads", threads, 1)
    for path in image or ():
        check_exists("--image", path, "file")
    try:
        pred = load(model, threads=threads, verify_digest=not no_verify_digest)
        if image:
            _warn_small_images(pred, image)
            out = pred.predict(images=image, top_k=top_k)
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
    if pred.text is None:
        return pred.predict(texts=texts, top_k=top_k)  # the runtime's own "image model" error
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
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, ValueError):
            continue  # unreadable: the runtime reports it
        if min(w, h) < SMALL_IMAGE * crop:
            typer.secho(
                f"WARNING: {path} is {w}x{h}, much smaller than the model's {crop}x{crop} input: it is "
                f"upscaled {pred.image.resize_size / min(w, h):.1f}x, expect lower accuracy",
                fg="yellow",
                err=True,
            )


def bench_cmd(
    model: Annotated[Path, typer.Argument(help="exported .onnx or .tflite file")],
    vs: Annotated[Path | None, typer.Option(help="second model, timed interleaved (A B A B ...)")] = None,
    threads: int = 2,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    seq_len: Annotated[int, typer.Option(help="text models: tokens per synthetic input")] = 128,
    inputs: Annotated[
        Path | None,
        typer.Option(
            help="time real inputs instead of synthetic ones: a text file (one input per line; "
            "'a ||| b' for a pair; image paths for an image model) or an image folder; "
            "each run takes the next"
        ),
    ] = None,
    input_limit: Annotated[int, typer.Option(help="with --inputs: use the first N inputs")] = 256,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="write a latency plot (PNG)")] = None,
    spin: Annotated[
        bool,
        typer.Option(
            help="ONNX Runtime threads busy-wait between the ops of a run (and stop when it returns): "
            "fastest on a device running nothing else; takes the cores from neighbours"
        ),
    ] = False,
    block: Annotated[
        int,
        typer.Option(
            help="runs of each model per round (A A A B B B ...); the first, cold "
            "run of each block is dropped: warm-cache latency"
        ),
    ] = 1,
    no_verify_digest: NoVerifyDigest = False,
) -> None:
    """Latency p50/p90/p99, throughput, peak RSS, kept tokens; with --vs the latency ratio."""
    from rich.console import Console
    from rich.table import Table

    from sttabt_edge.errors import SttabtError

    check_exists("model", model, "file")
    check_exists("--vs", vs, "file")
    if inputs is not None and not inputs.exists():
        fail(f"--inputs {inputs} not found")
    for name, value, low in (
        ("--threads", threads, 1),
        ("--batch", batch, 1),
        ("--runs", runs, 1),
        ("--warmup", warmup, 0),
        ("--seq-len", seq_len, 1),
        ("--block", block, 1),
        ("--input-limit", input_limit, 1),
    ):
        check_at_least(name, value, low)
    from sttabt_edge.runtime.bench import bench, plot

    try:
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
    except (SttabtError, ValueError, FileNotFoundError, RuntimeError) as e:
        fail(error_line(str(e)))
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
    if json_out:
        json_out.write_text(json.dumps(res.to_dict(), indent=2))
    if plot_out:
        plot(res, plot_out)


def show_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory (PyTorch)")],
    out: Annotated[Path, typer.Option(help="output .png (image) or .html (text)")],
    image: Annotated[Path | None, typer.Option(help="an image")] = None,
    text: Annotated[str | None, typer.Option(help="a text")] = None,
    method: Annotated[str, typer.Option(help="sttabt, topk, tome, ltp")] = "sttabt",
    keep_ratio: Annotated[
        float | None,
        typer.Option(
            help="keep ratio (default per method: sttabt 0.15, topk / tome 0.5; see sttabt_edge/defaults.py)"
        ),
    ] = None,
    approx: Annotated[
        str | None,
        typer.Option(help="sttabt: ApproxNet DIR, or 'oracle' (the model's own attention: an upper bound)"),
    ] = None,
) -> None:
    """Render which tokens each layer keeps: a patch grid PNG or highlighted-text HTML."""
    from sttabt_edge.defaults import default_keep_ratio

    keep_ratio = default_keep_ratio(method) if keep_ratio is None else keep_ratio
    if (image is None) == (text is None):
        fail("give exactly one of --image or --text")
    check_exists("--image", image, "file")
    check_fraction("--keep-ratio", keep_ratio)
    approx_dir = (
        approx_choice(approx, "oracle", "show --method sttabt", ORACLE) if method == "sttabt" else None
    )
    require_torch("show")
    import numpy as np
    import torch

    from sttabt_edge.data import image_preprocess_for
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.export.metadata import labels
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.factory import make_reducer
    from sttabt_edge.runtime import TextPreprocess
    from sttabt_edge.sparse_model import SparseClassifier
    from sttabt_edge.visualize import denormalize, layer_grid, text_html

    try:
        net = load_model(model)
        kwargs: dict = {"keep_ratio": keep_ratio}
        if approx_dir is not None:
            from sttabt_edge.method.approxnet import ApproxNet

            kwargs["approx"] = ApproxNet.load(approx_dir)
        sc = SparseClassifier(net, make_reducer(method, **kwargs))
        parts = sc.parts
        if image is not None:
            pre = image_preprocess_for(net)
            px = pre([image])
            with torch.no_grad():
                res = sc(pixel_values=torch.from_numpy(px))
            keep = [k[0].numpy() for k in res.keep[:-1]]
            patch = int(net.config.patch_size)
            label = labels(net)[int(res.logits.argmax())]
            grid = layer_grid(denormalize(px[0], pre.mean, pre.std), keep, patch, parts.num_prefix_tokens)
            grid.save(out)
            typer.echo(f"predicted {label!r}; retention {float(res.retention.mean()):.3f}; wrote {out}")
        elif text is not None:  # exactly one of the two (checked above)
            tok = TextPreprocess.from_file(Path(model))
            enc = tok([text])
            with torch.no_grad():
                res = sc(**{k: torch.from_numpy(v) for k, v in enc.items()})
            tokens = [
                tok.tokenizer.id_to_token(int(i)) or "[?]" for i in enc["input_ids"][0]
            ]  # None: not in vocab
            keep = [np.asarray(k[0]) for k in res.keep[:-1]]
            label = labels(net)[int(res.logits.argmax())]
            out.write_text(text_html(tokens, keep, f"{method} r={keep_ratio}: predicted {label}"))
            typer.echo(f"predicted {label!r}; retention {float(res.retention.mean()):.3f}; wrote {out}")
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))


def verify_cmd(
    model: Annotated[Path, typer.Argument(help="exported .onnx or .tflite file")],
    reference: Annotated[str, typer.Option(help="the PyTorch checkpoint it was exported from")],
    data: Annotated[Path, typer.Option(help="image folder or GLUE TSV")],
    approx: Annotated[
        Path | None, typer.Option(help="ApproxNet dir, if not recorded in the metadata")
    ] = None,
    max_samples: Annotated[int | None, typer.Option(help="first N examples only")] = None,
    batch_size: int = 16,
    max_abs_logit: Annotated[float, typer.Option(help="tolerance on |logit diff|")] = 1e-3,
    min_top1_agreement: float = 0.999,
    min_kept_agreement: float = 0.99,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    no_verify_digest: NoVerifyDigest = False,
) -> None:
    """PyTorch vs exported parity on a dataset; exits 1 beyond tolerance (the CI check)."""
    check_exists("model", model, "file")
    check_exists("--data", data)
    check_exists("--approx", approx, "dir")
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-samples", max_samples, 1)
    require_torch("verify")
    from sttabt_edge.data import glue_tsv, image_folder, model_class_names
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.model_info import is_trained_dir, model_files
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.runtime import load
    from sttabt_edge.sparse_model import SparseClassifier
    from sttabt_edge.train.artifacts import load_sttabt
    from sttabt_edge.verify import Tolerance, reference_reducer, verify

    try:
        pred = load(model, verify_digest=not no_verify_digest)
        if is_trained_dir(reference):  # a train concrete|baseline output: its fine-tuned model
            net = load_sttabt(reference).model
        else:
            net = load_model(reference)
        reference = str(model_files(reference))  # synsets.json sits beside the weights
        reducer = reference_reducer(pred.metadata.raw, net, approx)
        if data.is_dir():
            examples, task = (
                image_folder(data, model_class_names(reference) if Path(reference).is_dir() else None),
                None,
            )
        else:
            examples, task = glue_tsv(data), data.parent.name
        examples = examples[:max_samples] if max_samples else examples
        report = verify(
            pred,
            SparseClassifier(net, reducer),
            examples,
            batch_size,
            Tolerance(max_abs_logit, min_top1_agreement, min_kept_agreement),
            task,
        )
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))
    typer.echo(json.dumps(report.to_dict(), indent=2))
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:
        typer.secho("verify FAILED: " + "; ".join(report.failures), fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.secho(f"verify passed on {report.samples} samples", fg=typer.colors.GREEN, err=True)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
    app.command("run")(run_cmd)
    app.command("bench")(bench_cmd)
    app.command("show")(show_cmd)
