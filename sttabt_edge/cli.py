"""`sttabt-edge` command line. Each command is a thin shell over a tested Python function."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="STTABT token pruning for edge CPUs.")


class Nesting(str, Enum):
    union = "union"
    count = "count"


NestingOpt = Annotated[Nesting, typer.Option(
    help="back-tracking nesting: union (official: topk ∪ next layer's set) | count (earlier rule, for comparison)")]
MinKeepOpt = Annotated[int, typer.Option(min=1, help="tokens every layer keeps at least, CLS included")]


class Method(str, Enum):
    dense = "dense"
    sttabt = "sttabt"
    topk = "topk"
    ltp = "ltp"
    tome = "tome"


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def info(model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")]) -> None:
    """Show what sttabt-edge sees in a model: family, layers, heads, prefix tokens."""
    from sttabt_edge.compat import model_parts
    from sttabt_edge.models.loading import load_model

    parts = model_parts(load_model(model))
    typer.echo(json.dumps({
        "family": parts.family, "layers": len(parts.layers), "heads": parts.num_heads,
        "hidden": parts.hidden_size, "intermediate": parts.intermediate_size,
        "num_prefix_tokens": parts.num_prefix_tokens,
    }, indent=2))


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")],
    data: Annotated[Path, typer.Option(help="image folder, or a GLUE TSV file (e.g. SST-2/dev.tsv)")],
    method: Annotated[Method, typer.Option(help="token reducer")] = Method.dense,
    keep_ratio: Annotated[float, typer.Option(help="fraction of real tokens each layer keeps")] = 0.5,
    approx: Annotated[Path | None, typer.Option(help="ApproxNet dir for sttabt (default: oracle)")] = None,
    batch_size: int = 32,
    max_samples: Annotated[int | None, typer.Option(help="evaluate only the first N examples")] = None,
    nesting: NestingOpt = Nesting.union,
    min_keep: MinKeepOpt = 4,
    occupancy_length: Annotated[int | None, typer.Option(
        help="padded length T of the paper's occupancy (default: text: the longest example; images: N)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
) -> None:
    """Task metric, retention, occupancy and analytic FLOPs of a model under a token reducer."""
    import torch

    from sttabt_edge.data import glue_tsv, image_folder, image_preprocess_for, model_class_names
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.evaluate import evaluate
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.factory import make_reducer
    from sttabt_edge.runtime import TextPreprocess

    try:
        trained = (Path(model) / "sttabt.json").is_file()  # from `train concrete|baseline`: has its reducer
        if trained:
            from sttabt_edge.train.artifacts import load_sttabt

            net, reducer = load_sttabt(model)
            model = str(Path(model) / "model")  # tokenizer.json / synsets.json sit beside the weights
        else:
            net = load_model(model)
            kwargs: dict = {} if method in (Method.dense, Method.ltp) else {"keep_ratio": keep_ratio}
            if method == Method.ltp:
                kwargs["num_layers"] = net.config.num_hidden_layers
            if method == Method.sttabt:
                kwargs.update(nesting=nesting.value, min_keep=min_keep)
            if method == Method.sttabt and approx is not None:
                from sttabt_edge.method.approxnet import ApproxNet

                kwargs["approx"] = ApproxNet.load(approx)
            reducer = make_reducer(method.value, **kwargs)
        if data.is_dir():
            examples = image_folder(data, model_class_names(model) if Path(model).is_dir() else None)
            pre = {"image": image_preprocess_for(net)}
            task = None
        else:
            examples = glue_tsv(data)
            pre = {"text": TextPreprocess.from_file(Path(model))}
            task = data.parent.name
        examples = examples[:max_samples] if max_samples else examples
        if occupancy_length is None and "text" in pre:
            from sttabt_edge.data import longest_length

            occupancy_length = longest_length(examples, pre["text"])
        if method == Method.ltp and not trained:  # untrained LTP: thresholds set on the first batch
            from sttabt_edge.compat import model_parts
            from sttabt_edge.data import batches

            first, _ = next(batches(examples, batch_size, **pre))
            with torch.inference_mode():
                reducer.calibrate(model_parts(net), {k: torch.from_numpy(v) for k, v in first.items()}, keep_ratio)
        with torch.inference_mode():
            name = f"{reducer.name}-trained" if trained else method.value
            res = evaluate(net, reducer, examples, batch_size=batch_size, task=task, name=name,
                           occupancy_length=occupancy_length, **pre)
    except (SttabtError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(json.dumps(res.to_dict(), indent=2))
    if json_out:
        json_out.write_text(json.dumps(res.to_dict(), indent=2))


def _register_subcommands() -> None:
    from sttabt_edge.cli_runtime import register

    register(app)


_register_subcommands()


# ---- train: thin shells over sttabt_edge.train ------------------------------------------------

train_app = typer.Typer(no_args_is_help=True, help="Train an ApproxNet, STTABT thresholds, or LTP/top-k.")
app.add_typer(train_app, name="train")


class Init(str, Enum):
    interpolate = "interpolate"
    random = "random"


class InitSchedule(str, Enum):
    constant = "constant"
    shared = "shared"


class Baseline(str, Enum):
    ltp = "ltp"
    topk = "topk"


ModelOpt = Annotated[str, typer.Option(help="dense model dir (with tokenizer.json for text) or alias")]
DataOpt = Annotated[Path, typer.Option(help="GLUE task dir / .tsv / .txt, image folder, save_to_disk dir")]
OutOpt = Annotated[Path, typer.Option(help="output directory (also checkpoints/ and metrics.jsonl)")]
EvalDataOpt = Annotated[Path | None, typer.Option(help="held-out data (default: dev.tsv / image split)")]
StepsOpt = Annotated[int | None, typer.Option(help="optimizer steps (0: use --epochs)")]
EpochsOpt = Annotated[float | None, typer.Option(help="epochs, when --steps is 0")]
BatchOpt = Annotated[int | None, typer.Option(help="per-process micro-batch")]
LrOpt = Annotated[float | None, typer.Option(help="peak learning rate")]
AccumOpt = Annotated[int | None, typer.Option(help="micro-batches per optimizer step")]
AmpOpt = Annotated[str | None, typer.Option(help="none | bf16 | fp16 (CUDA)")]
IntOpt = Annotated[int | None, typer.Option()]
FloatOpt = Annotated[float | None, typer.Option()]
ConfigOpt = Annotated[Path | None, typer.Option(help="TrainConfig JSON; explicit options override it")]
ResumeOpt = Annotated[bool, typer.Option(help="continue from the latest checkpoint in --out")]
TargetOpt = Annotated[float, typer.Option(help="mean fraction of real tokens entering each layer")]


class CalibOn(str, Enum):
    train = "train"
    eval = "eval"


CalibOpt = Annotated[CalibOn, typer.Option(
    help="inputs the retention level is calibrated on (labels unused): train | eval (held-out, transductive)")]


def _train_config(config: Path | None, defaults: dict, options: dict) -> object:
    """TrainConfig from --config (else the verb's defaults); the verb's options that name a
    TrainConfig field and were given (not None) override it."""
    import dataclasses

    from sttabt_edge.train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig.load(config) if config else TrainConfig(**defaults)
    return base.replace(**{k: v for k, v in options.items() if k in names and v is not None})


def _load_training(
    model: str, data: Path, eval_data: Path | None, labeled: bool, seed: int, calib_on: str = "train"
) -> tuple:
    """(dense model, TrainData, model dir or None). ``calib_on="eval"``: thresholds are calibrated
    on the held-out inputs (labels unused) instead of training inputs."""
    import dataclasses

    from sttabt_edge.models.loading import load_model
    from sttabt_edge.train.data import prepare_data

    net = load_model(model)
    model_dir = Path(model) if Path(model).is_dir() else None
    train_data = prepare_data(data, net, model_dir, eval_data, labeled=labeled, seed=seed)
    if calib_on == "eval":
        if not train_data.eval:
            raise ValueError("--calib-on eval needs held-out data (--eval-data, or a dev.tsv / image split)")
        train_data = dataclasses.replace(train_data, calib=train_data.eval)
    return net, train_data, model_dir


def _train_errors() -> tuple[type[BaseException], ...]:
    from sttabt_edge.errors import SttabtError

    return (SttabtError, ValueError, FileNotFoundError)


@train_app.command("approx")
def train_approx_cmd(
    model: ModelOpt, data: DataOpt, out: OutOpt,
    factor: Annotated[int, typer.Option(help="hidden/FFN widths divided by this")] = 4,
    init: Annotated[Init, typer.Option(help="interpolate (resized teacher) | random")] = Init.interpolate,
    heads: Annotated[int | None, typer.Option(help="attention heads (a divisor of the model's; default: same)")] = None,
    track_weight: Annotated[float, typer.Option(help="weight of the back-tracking KL (importance ranking)")] = 0.0,
    eval_data: EvalDataOpt = None, steps: StepsOpt = None, epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None, grad_accum: AccumOpt = None, amp: AmpOpt = None, seed: IntOpt = None,
    num_workers: IntOpt = None, save_every: IntOpt = None, log_every: IntOpt = None,
    max_eval_samples: IntOpt = None, config: ConfigOpt = None, resume: ResumeOpt = False,
) -> None:
    """Distil an ApproxNet (attention KL + hidden MSE; labels unused). Reports held-out attention KL."""
    options = dict(locals())
    from sttabt_edge.train.approx import REPORT_FILE, train_approx
    from sttabt_edge.train.config import ApproxConfig

    try:
        cfg = _train_config(config, {"lr": 5e-4, "steps": 1000}, options)
        net, train_data, _ = _load_training(model, data, eval_data, labeled=False, seed=cfg.seed)
        acfg = ApproxConfig(factor=factor, init=init.value, heads=heads, track_weight=track_weight)
        train_approx(net, train_data, cfg=cfg, out=out, acfg=acfg, resume=resume)
    except _train_errors() as e:
        _fail(str(e))
    report = out / REPORT_FILE
    if _is_rank0():
        typer.echo(report.read_text() if report.is_file() else "{}")


@train_app.command("concrete")
def train_concrete_cmd(
    model: ModelOpt, approx: Annotated[Path, typer.Option(help="ApproxNet dir from `train approx`")],
    data: DataOpt, out: OutOpt, target_retention: TargetOpt = 0.5,
    freeze_main: Annotated[bool, typer.Option(help="train thresholds (+ ApproxNet) only")] = False,
    kd_weight: FloatOpt = None, retention_weight: FloatOpt = None, threshold_lr: FloatOpt = None,
    hard_frac: Annotated[float | None, typer.Option(help="last fraction of steps with hard masks")] = None,
    init_schedule: Annotated[InitSchedule, typer.Option(
        help="initial keep schedule: constant (every layer ~target) | shared (one threshold offset)")
    ] = InitSchedule.constant,
    calib_on: CalibOpt = CalibOn.train, eval_data: EvalDataOpt = None, steps: StepsOpt = None, epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None, grad_accum: AccumOpt = None, amp: AmpOpt = None, seed: IntOpt = None,
    num_workers: IntOpt = None, save_every: IntOpt = None, log_every: IntOpt = None,
    max_eval_samples: IntOpt = None, config: ConfigOpt = None, resume: ResumeOpt = False,
) -> None:
    """Learn STTABT's per-layer thresholds for a retention target (concrete masking), then a hard phase."""
    options = dict(locals())
    from sttabt_edge.method.approxnet import ApproxNet
    from sttabt_edge.train.artifacts import TRAINED_FILE
    from sttabt_edge.train.concrete import train_concrete
    from sttabt_edge.train.config import SparseTrainConfig

    try:
        cfg = _train_config(config, {"lr": 2e-5, "steps": 500}, options)
        net, train_data, model_dir = _load_training(model, data, eval_data, True, cfg.seed, calib_on.value)
        losses = {"kd_weight": kd_weight, "retention_weight": retention_weight, "threshold_lr": threshold_lr,
                  "hard_frac": hard_frac}
        scfg = SparseTrainConfig(target_retention=target_retention, freeze_main=freeze_main,
                                 init_schedule=init_schedule.value).replace(
            **{k: v for k, v in losses.items() if v is not None})
        train_concrete(net, ApproxNet.load(approx, net.config), train_data, cfg=cfg, scfg=scfg, out=out,
                       resume=resume, source_dir=model_dir)
    except _train_errors() as e:
        _fail(str(e))
    _echo_trained(out / TRAINED_FILE)


@train_app.command("baseline")
def train_baseline_cmd(
    method: Annotated[Baseline, typer.Option(help="ltp (learned thresholds) or topk (fixed schedule)")],
    model: ModelOpt, data: DataOpt, out: OutOpt, target_retention: TargetOpt = 0.5,
    calib_on: CalibOpt = CalibOn.train, eval_data: EvalDataOpt = None, steps: StepsOpt = None, epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None, grad_accum: AccumOpt = None, amp: AmpOpt = None, seed: IntOpt = None,
    num_workers: IntOpt = None, save_every: IntOpt = None, log_every: IntOpt = None,
    max_eval_samples: IntOpt = None, config: ConfigOpt = None, resume: ResumeOpt = False,
) -> None:
    """Train an LTP or top-k baseline with the same losses (task + KD + retention) as STTABT."""
    options = dict(locals())
    from sttabt_edge.train.artifacts import TRAINED_FILE
    from sttabt_edge.train.baselines import train_baseline

    try:
        cfg = _train_config(config, {"lr": 2e-5, "steps": 500}, options)
        net, train_data, model_dir = _load_training(model, data, eval_data, True, cfg.seed, calib_on.value)
        train_baseline(method.value, net, train_data, target_retention, cfg, out=out, resume=resume,
                       source_dir=model_dir)
    except _train_errors() as e:
        _fail(str(e))
    _echo_trained(out / TRAINED_FILE)


def _is_rank0() -> bool:
    """Under torchrun every rank runs the command; only rank 0 prints the summary."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _echo_trained(path: Path) -> None:
    """The summary of a finished run (or a note that only a checkpoint exists yet)."""
    if not _is_rank0():
        return
    if not path.is_file():
        typer.echo(json.dumps({"finished": False, "checkpoints": str(path.parent / "checkpoints")}))
        return
    meta = json.loads(path.read_text())
    keys = ("method", "step", "eval", "keep_schedule", "reducer")
    typer.echo(json.dumps({k: meta.get(k) for k in keys}, indent=2))


# ---- export: a thin shell over sttabt_edge.export.pipeline ------------------------------------


class ExportTarget(str, Enum):
    onnx = "onnx"
    tflite = "tflite"


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")],
    out: Annotated[Path, typer.Option(help="output file (.onnx or .tflite)")],
    target: Annotated[ExportTarget, typer.Option(help="onnx (dynamic shapes) | tflite (static, batch 1)")] = ExportTarget.onnx,
    seq_len: Annotated[int, typer.Option(help="tflite text models: static sequence length")] = 128,
    method: Annotated[str, typer.Option(help="sttabt | dense (topk | tome: ViT only)")] = "sttabt",
    approx: Annotated[Path | None, typer.Option(help="trained ApproxNet dir (default: UNTRAINED)")] = None,
    approx_factor: Annotated[int, typer.Option(help="width divisor of the untrained ApproxNet")] = 4,
    approx_heads: Annotated[int | None, typer.Option(help="head count of the untrained ApproxNet")] = None,
    keep_ratio: Annotated[float, typer.Option(help="fraction of real tokens each layer keeps")] = 0.5,
    quantize: Annotated[str | None, typer.Option(help="int8 (dynamic) | int8-static (QDQ)")] = None,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size N")] = "dynamic",
    calib: Annotated[Path | None, typer.Option(help="image folder or GLUE TSV (verification data)")] = None,
    calib_samples: Annotated[int, typer.Option(help="examples taken from --calib")] = 16,
    opset: int = 17,
    dynamo: Annotated[bool, typer.Option(help="dynamo exporter (default: legacy TorchScript)")] = False,
    simplify: Annotated[bool, typer.Option(help="run onnxslim (parity re-verified)")] = True,
    latency_runs: Annotated[int, typer.Option(help="runs per latency median; 0 skips timing")] = 20,
    threads: Annotated[int, typer.Option(help="onnxruntime threads for timing")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary as JSON")] = None,
) -> None:
    """Export to one ONNX graph (ApproxNet -> back-tracking -> sparse model), verified against PyTorch."""
    from sttabt_edge.errors import SttabtError

    if batch != "dynamic" and not (batch.isdigit() and int(batch) > 0):
        _fail(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    try:
        from sttabt_edge.export.pipeline import ExportRequest, run_export

        req = ExportRequest(
            model=model, out=out, method=method, approx=approx, approx_factor=approx_factor, approx_heads=approx_heads,
            keep_ratio=keep_ratio, quantize=quantize, batch="dynamic" if batch == "dynamic" else int(batch),
            calib=calib, calib_samples=calib_samples, opset=opset, dynamo=dynamo, simplify=simplify,
            latency_runs=latency_runs, threads=threads, target=target.value, seq_len=seq_len,
        )
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):  # converters log to stdout; stdout is the JSON summary
            summary = run_export(req, warn=lambda m: typer.secho(f"WARNING: {m}", fg="yellow", err=True))
    except (SttabtError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
