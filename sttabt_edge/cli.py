"""`sttabt-edge` command line. Each command is a thin shell over a tested Python function.

Importing this module pulls in no torch: `run`, `bench` and `info` work on a runtime-only
install; the other commands import torch when they run. Errors reach the user as one line
(``error: ...``, exit 2) through :class:`~sttabt_edge.cli_common.ErrorHandlingGroup`.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sttabt_edge.cli_common import (
    ErrorHandlingGroup,
    approx_choice,
    check_at_least,
    check_batch,
    check_exists,
    check_fraction,
    error_line,
    fail,
    quiet_third_party,
)
from sttabt_edge.cli_export_checks import check_combination, check_export
from sttabt_edge.cli_inputs import check_approx_shape, check_model
from sttabt_edge.cli_options import KEEP_RATIO_HELP, MinKeepOpt, Nesting, NestingOpt
from sttabt_edge.cli_summary import print_export_summary
from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS, default_keep_ratio
from sttabt_edge.model_info import is_trained_dir

if TYPE_CHECKING:
    from sttabt_edge.reducers.spec import ReducerSpec

app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    add_completion=False,
    help="STTABT token pruning for edge CPUs.",
    # click's plain help layout: rich's option table squeezes each help into a column a few characters
    # wide (and cuts long option names) in an 80-column terminal. Up to 100 columns on wider ones;
    # every subcommand's context inherits it (tests/cli/test_cli_help.py).
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)


@app.callback()
def main_options(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="show third-party warnings, log lines and progress bars, and full error messages",
        ),
    ] = False,
) -> None:
    """STTABT token pruning for edge CPUs."""
    ctx.with_resource(quiet_third_party(verbose))


@app.command(short_help="Family, layers, heads and labels, from config.json alone.")
def info(model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")]) -> None:
    """Show what sttabt-edge sees in a model (from config.json alone): family, layers, heads, prefix tokens."""
    from sttabt_edge.model_info import config_file, describe, read_config

    cfg = config_file(model)
    if cfg is not None:
        typer.echo(json.dumps(describe(read_config(cfg), str(cfg)), indent=2))
        return
    from sttabt_edge.compat import model_parts  # a timm file (no config.json) or a hub id: load it
    from sttabt_edge.models.loading import load_model

    net = load_model(model)
    prefix = model_parts(net).num_prefix_tokens
    typer.echo(json.dumps(describe(net.config.to_dict(), model, num_prefix_tokens=prefix), indent=2))


def _register_subcommands() -> None:
    from sttabt_edge import cli_compress, cli_eval, cli_runtime, cli_show, cli_train, cli_verify

    cli_eval.register(app)
    cli_verify.register(app)
    cli_runtime.register(app)
    cli_show.register(app)
    cli_train.register(app)
    cli_compress.register(app)


_register_subcommands()


# ---- export: a thin shell over sttabt_edge.export.pipeline ------------------------------------


UNTRAINED_FACTOR = APPROX_FACTOR  # --approx untrained: ApproxNet widths / this unless --approx-factor


class ExportTarget(str, Enum):
    onnx = "onnx"
    tflite = "tflite"


class Slots(str, Enum):  # export --target tflite: STTABT's static token slots (docs/method.md)
    calibrated = "calibrated"
    bound = "bound"


class ExportMethod(str, Enum):
    sttabt = "sttabt"
    dense = "dense"
    topk = "topk"
    tome = "tome"


class Quantize(str, Enum):
    int8 = "int8"
    int8_dynamic = "int8-dynamic"
    int8_static = "int8-static"


@app.command("export", short_help="Export to ONNX or TFLite, verified against PyTorch.")
def export_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")],
    out: Annotated[Path, typer.Option(help="output file (.onnx or .tflite)")],
    target: Annotated[
        ExportTarget, typer.Option(help="onnx (dynamic shapes) | tflite (static, batch 1)")
    ] = ExportTarget.onnx,
    seq_len: Annotated[int, typer.Option(help="tflite text models: static sequence length")] = 128,
    method: Annotated[
        ExportMethod,
        typer.Option(help="sttabt | dense | topk | tome (ViT only); LTP: --model an LTP dir"),
    ] = ExportMethod.sttabt,
    approx: Annotated[
        str | None,
        typer.Option(help="ApproxNet DIR (from `train approx`) | untrained (for latency only)"),
    ] = None,
    approx_factor: Annotated[
        int | None,
        typer.Option(
            help=f"--approx untrained: width divisor of its ApproxNet (default: {UNTRAINED_FACTOR})"
        ),
    ] = None,
    approx_heads: Annotated[
        int | None,
        typer.Option(
            help=f"--approx untrained: head count of its ApproxNet (default: {APPROX_HEADS}; 0: the model's)"
        ),
    ] = None,
    keep_ratio: Annotated[float | None, typer.Option(help=KEEP_RATIO_HELP)] = None,
    nesting: NestingOpt = Nesting.union,
    slots: Annotated[
        Slots | None, typer.Option(help="tflite STTABT slots: calibrated (default) | bound")
    ] = None,
    min_keep: MinKeepOpt = 4,
    quantize: Annotated[
        Quantize | None,
        typer.Option(help="int8 (dynamic; the fp32 file goes beside --out) | int8-static (QDQ)"),
    ] = None,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size N")] = "dynamic",
    calib: Annotated[Path | None, typer.Option(help="image folder or GLUE TSV (verification data)")] = None,
    calib_samples: Annotated[int, typer.Option(help="examples taken from --calib")] = 16,
    opset: int = 17,
    dynamo: Annotated[bool, typer.Option(help="dynamo exporter (default: legacy TorchScript)")] = False,
    simplify: Annotated[bool, typer.Option(help="run onnxslim (parity re-verified)")] = True,
    latency_runs: Annotated[int, typer.Option(help="runs per latency median; 0 skips timing")] = 20,
    threads: Annotated[int, typer.Option(help="onnxruntime threads for timing")] = 2,
    fuse: Annotated[
        bool,
        typer.Option(
            "--fuse/--no-fuse",
            help="fused attention kernels (faster on x86 ONNX Runtime; docs/export.md)",
        ),
    ] = False,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="write the full summary as JSON ('-': stdout, no table)"),
    ] = None,
) -> None:
    """Export to one ONNX graph (ApproxNet -> back-tracking -> sparse model), verified against PyTorch."""
    check_model(model)
    fixed_batch = check_batch(batch)
    trained = is_trained_dir(model)  # a train concrete|baseline output: its own reducer
    approx_dir = None if trained and approx is None else _export_approx(approx, method)
    inputs = [("--model", model), ("--calib", calib), ("--approx", approx_dir)]
    quantized = quantize is not None
    check_export(
        model, out, json_out, target.value, quantized, inputs, calib, opset, seq_len, calib_samples, threads
    )
    check_combination(
        target.value, quantize.value if quantize else None, fuse, fixed_batch, slots.value if slots else None
    )
    _check_untrained_shape(approx, approx_factor, approx_heads)
    if approx == "untrained" and method == ExportMethod.sttabt and not trained:
        heads = APPROX_HEADS if approx_heads is None else (approx_heads or None)
        factor = UNTRAINED_FACTOR if approx_factor is None else approx_factor
        check_approx_shape(model, factor, heads, "--approx-factor / --approx-heads")
    check_exists("--calib", calib)
    for name, value, low in (
        ("--calib-samples", calib_samples, 1),
        ("--latency-runs", latency_runs, 0),
        ("--threads", threads, 1),
        ("--seq-len", seq_len, 1),
        ("--approx-factor", approx_factor, 1),
        ("--approx-heads", approx_heads, 0),
    ):
        check_at_least(name, value, low)
    keep_ratio = default_keep_ratio(method.value) if keep_ratio is None else keep_ratio
    if method != ExportMethod.dense:
        check_fraction("--keep-ratio", keep_ratio)
    import contextlib
    import sys

    from sttabt_edge.errors import SttabtError
    from sttabt_edge.export.pipeline import run_export
    from sttabt_edge.export.request import (
        ExportRequest,
        GraphOptions,
        ModelSource,
        QuantizeOptions,
        VerifyOptions,
    )

    try:  # the options' one mapping onto the request; run_export checks it before it loads anything
        req = ExportRequest(
            source=ModelSource(
                model=model,
                approx=approx_dir,
                approx_factor=UNTRAINED_FACTOR if approx_factor is None else approx_factor,
                approx_heads=APPROX_HEADS if approx_heads is None else (approx_heads or None),
            ),
            out=out,
            reducer=_export_spec(model, trained, method, keep_ratio, nesting, min_keep),
            graph=GraphOptions(
                target=target.value,
                seq_len=seq_len,
                slots=slots.value if slots else None,
                batch=fixed_batch,
                opset=opset,
                dynamo=dynamo,
                simplify=simplify,
                fuse=fuse,
            ),
            quantize=QuantizeOptions(mode=quantize.value if quantize else None),
            verify=VerifyOptions(
                calib=calib, calib_samples=calib_samples, latency_runs=latency_runs, threads=threads
            ),
        )
        with contextlib.redirect_stdout(sys.stderr):  # converters log to stdout; stdout is the summary
            summary = run_export(req, warn=lambda m: typer.secho(f"WARNING: {m}", fg="yellow", err=True))
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))
    print_export_summary(summary, json_out)


def _export_spec(
    model: str, trained: bool, method: ExportMethod, keep_ratio: float, nesting: Nesting, min_keep: int
) -> ReducerSpec:
    """The export's reducer spec, built once here: a trained dir's own (its metadata), else the options'."""
    from sttabt_edge.errors import InputError
    from sttabt_edge.reducers.spec import ReducerOptions, spec_from_options
    from sttabt_edge.train.artifacts import trained_spec

    if trained:
        return trained_spec(model)
    try:
        return spec_from_options(method.value, ReducerOptions(keep_ratio, nesting.value, min_keep))
    except ValueError as e:  # the spec's own checks, e.g. a keep ratio out of (0, 1]
        raise InputError(f"--method {method.value}: {e}") from e


def _export_approx(approx: str | None, method: ExportMethod) -> Path | None:
    """sttabt needs an explicit ApproxNet: a trained DIR or 'untrained' (never a silent default)."""
    if method != ExportMethod.sttabt:
        if approx is not None:
            fail("--approx applies to --method sttabt only")
        return None
    return approx_choice(
        approx,
        "untrained",
        "export --method sttabt",
        "an untrained ApproxNet: the latency is representative, the token choice is not",
    )


def _check_untrained_shape(approx: str | None, factor: int | None, heads: int | None) -> None:
    """--approx-factor / --approx-heads shape only the ApproxNet built for --approx untrained; a DIR
    (or a trained model) brings its own, and silently ignoring them would mislabel the export."""
    given = [
        name for name, value in (("--approx-factor", factor), ("--approx-heads", heads)) if value is not None
    ]
    if given and approx != "untrained":
        verb = "applies" if len(given) == 1 else "apply"
        fail(
            f"{' / '.join(given)} {verb} only to --approx untrained (an ApproxNet DIR or a trained model "
            "has its own widths and heads); drop it"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
