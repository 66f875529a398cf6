"""`sttabt-edge compress`: a dense model and its training data in, a verified fast file and a report out."""

from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from sttabt_edge.cli_common import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    MAX_THREADS,
    check_at_least,
    check_range,
    fail,
)
from sttabt_edge.cli_inputs import (
    check_approx_dir,
    check_approx_shape,
    check_training_data,
    model_family,
    model_positions,
)
from sttabt_edge.cli_outputs import InputPath, check_output_dir
from sttabt_edge.cli_stderr import quiet_litert
from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS

MAX_BUDGET_MINUTES = 7 * 24 * 60.0  # a week: the budget is a schedule, not a timeout
MAX_SEARCH_STEPS = 30  # bisection of the keep ratio in (0, 1]: 2^-30 is far below any accuracy change
MAX_APPROX = 1024  # ApproxNet width divisor and head count (the runtime contract's bound)
MAX_LENGTH = 128  # text: the default longest input, unless the model has fewer positions


class Target(str, Enum):
    onnx = "onnx"
    tflite = "tflite"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


def compress_cmd(
    model: Annotated[str, typer.Option(help="dense model dir (with tokenizer.json for text)")],
    data: Annotated[
        Path,
        typer.Option(
            help="training data (GLUE task dir / .tsv, image folder); the held-out "
            "selection split is carved out of it"
        ),
    ],
    out: Annotated[Path, typer.Option(help="output dir: model.onnx, baseline/, approx/, sttabt/, report.*")],
    max_drop: Annotated[
        float | None,
        typer.Option(
            help="accuracy points below dense allowed on the held-out split: the lowest retention within it"
        ),
    ] = None,
    target_retention: Annotated[
        float | None, typer.Option(help="or: one retention level (fraction of tokens)")
    ] = None,
    budget_minutes: Annotated[
        float, typer.Option(help="training time (distillation + thresholds), approximate")
    ] = 30.0,
    approx_steps: Annotated[
        int | None,
        typer.Option(
            help="distillation steps instead of the budget's share (makes a run repeatable on any machine)"
        ),
    ] = None,
    threshold_steps: Annotated[
        int | None, typer.Option(help="threshold-training steps instead of what the budget leaves")
    ] = None,
    target: Annotated[Target, typer.Option(help="export format")] = Target.onnx,
    quantize: Annotated[
        Quantize, typer.Option(help="int8: dynamic INT8 (baseline: dense INT8)")
    ] = Quantize.none,
    fuse: Annotated[
        bool,
        typer.Option(
            help="ONNX: fused attention kernels, for the delivered file and the dense baseline alike"
        ),
    ] = False,
    approx: Annotated[
        Path | None, typer.Option(help="a distilled ApproxNet dir to reuse (skips distillation)")
    ] = None,
    approx_factor: Annotated[
        int, typer.Option(help="ApproxNet widths / this (distilled here)")
    ] = APPROX_FACTOR,
    approx_heads: Annotated[
        int | None,
        typer.Option(help=f"ApproxNet heads (distilled here; default {APPROX_HEADS}; 0: the model's)"),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="labelled data to report at the end (default: dev.tsv / the folder's split); never used to choose"
        ),
    ] = None,
    holdout_data: Annotated[
        Path | None,
        typer.Option(help="labelled selection data (TSV / image folder) instead of a split of --data"),
    ] = None,
    holdout: Annotated[int, typer.Option(help="training examples held out for selection")] = 1000,
    holdout_min_tokens: Annotated[int, typer.Option(help="text: shortest held-out input, in tokens")] = 16,
    concrete: Annotated[
        bool, typer.Option(help="train thresholds (concrete masking) when the budget allows")
    ] = True,
    search_steps: Annotated[int, typer.Option(help="bisection steps of the keep-ratio search")] = 7,
    max_length: Annotated[
        int | None,
        typer.Option(help=f"text: longest input in tokens [default: {MAX_LENGTH}, or the model's positions]"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="training batch")] = 32,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads for the benchmark")] = 2,
    bench_runs: Annotated[int, typer.Option(help="benchmark rounds per pair")] = 30,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[
        bool, typer.Option(help="continue a run in --out (finished stages are reused)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
) -> None:
    """Distil, search the most aggressive retention within --max-drop (or --target-retention), train
    thresholds, export, verify and benchmark against dense; writes report.{json,md,png} in --out."""
    from sttabt_edge.compress import CompressConfig, run_compress
    from sttabt_edge.errors import SttabtError

    check_range("--budget-minutes", budget_minutes, 0.0, MAX_BUDGET_MINUTES, low_open=True)
    for name, value, low, high in (
        ("--batch-size", batch_size, 1, MAX_BATCH),
        ("--threads", threads, 1, MAX_THREADS),
        ("--search-steps", search_steps, 1, MAX_SEARCH_STEPS),
        ("--approx-factor", approx_factor, 1, MAX_APPROX),
        ("--approx-heads", approx_heads, 0, MAX_APPROX),
    ):
        check_at_least(name, value, low, high)
    try:
        positions = model_positions(model) if model_family(model) == "bert" else None
    except SttabtError as e:
        fail(str(e))
    max_length = _max_length(max_length, positions)
    check_approx_dir("--approx", approx)
    if approx is None:  # distilled here: its shape must fit the model
        heads = APPROX_HEADS if approx_heads is None else (approx_heads or None)
        check_approx_shape(model, approx_factor, heads, "--approx-factor / --approx-heads")
    inputs: list[tuple[str, InputPath]] = [("--model", model), ("--data", data), ("--approx", approx)]
    inputs += [("--eval-data", eval_data), ("--holdout-data", holdout_data)]
    check_output_dir("--out", out, inputs)
    for name, path in (("--data", data), ("--eval-data", eval_data), ("--holdout-data", holdout_data)):
        check_training_data(model, path, name)
    try:  # every option is checked here, before any model loads
        cfg = CompressConfig.of(  # the one place the options land on the config (flat names)
            model=model,
            data=data,
            out=out,
            max_drop=max_drop,
            target_retention=target_retention,
            budget_minutes=budget_minutes,
            approx_steps=approx_steps,
            threshold_steps=threshold_steps,
            target=target.value,
            quantize=None if quantize is Quantize.none else "int8",
            fuse=fuse,
            approx=approx,
            approx_factor=approx_factor,
            approx_heads=APPROX_HEADS if approx_heads is None else (approx_heads or None),
            eval_data=eval_data,
            holdout_data=holdout_data,
            holdout=holdout,
            holdout_min_tokens=holdout_min_tokens,
            concrete=concrete,
            search_steps=search_steps,
            max_length=max_length,
            batch_size=batch_size,
            threads=threads,
            bench_runs=bench_runs,
            seed=seed,
        )
        if approx is not None and approx_heads is not None:
            fail("--approx-heads shapes an ApproxNet distilled here; drop it with --approx")
        from sttabt_edge.compress.pipeline import check_out

        check_out(cfg, resume)
    except SttabtError as e:
        fail(str(e))
    try:
        with quiet_litert() if target is Target.tflite else contextlib.nullcontext():
            report = run_compress(cfg, resume=resume)
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo((out / "report.md").read_text())
    if not report["files"]["passed"]:
        typer.secho(
            "error: an exported file failed verification (see report.json files.verify)", err=True, fg="red"
        )
        raise typer.Exit(1)


def _max_length(given: int | None, positions: int | None) -> int:
    """--max-length in [8, the model's positions]; not given: MAX_LENGTH, or the positions if fewer."""
    if given is None:
        return min(MAX_LENGTH, positions or MAX_LENGTH)
    check_at_least("--max-length", given, 8, MAX_SEQ_LEN)
    if positions is not None and given > positions:
        fail(f"--max-length {given} is over the model's {positions} positions (max_position_embeddings)")
    return given


def register(app: typer.Typer) -> None:
    app.command("compress", short_help="An accuracy budget in; a verified, timed file out.")(compress_cmd)
