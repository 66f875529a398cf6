"""`sttabt-edge train approx|concrete|baseline`: thin shells over sttabt_edge.train."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sttabt_edge.cli_common import check_exists, check_fraction, fail
from sttabt_edge.cli_config_checks import (
    SPARSE_RULES,
    TRAIN_RULES,
    check_options,
    fit_max_length,
    read_config,
)
from sttabt_edge.cli_inputs import model_family, model_positions
from sttabt_edge.cli_train_checks import check_train_run
from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.model_info import TRAINED_FILE

if TYPE_CHECKING:  # torch-heavy: imported by the verbs when they run
    from torch import nn

    from sttabt_edge.train.config import TrainConfig
    from sttabt_edge.train.data import TrainData

train_app = typer.Typer(
    no_args_is_help=True, help="Train an ApproxNet, STTABT thresholds, or LTP/top-k.", rich_markup_mode=None
)  # plain help layout, as the top-level app (cli.py)


class Init(str, Enum):
    interpolate = "interpolate"
    random = "random"


class InitSchedule(str, Enum):
    constant = "constant"
    union = "union"
    shared = "shared"


class ConcreteVariant(str, Enum):
    ste = "ste"
    official = "official"


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
TargetOpt = Annotated[
    float | None, typer.Option(help="mean fraction of real tokens entering each layer [default: 0.5]")
]
SparseConfigOpt = Annotated[
    Path | None, typer.Option(help="SparseTrainConfig JSON (losses, phases); explicit options override it")
]
TaskWeightOpt = Annotated[float | None, typer.Option(help="weight of the labels' loss (0: KD only)")]


class RetentionControl(str, Enum):
    penalty = "penalty"
    lagrangian = "lagrangian"


class MainParams(str, Enum):
    all = "all"
    norms_biases = "norms_biases"


RetentionControlOpt = Annotated[
    RetentionControl | None,
    typer.Option(help="soft-phase retention term: penalty (official) | lagrangian (holds the target)"),
]
MainParamsOpt = Annotated[
    MainParams | None, typer.Option(help="main-model weights to fine-tune: all | norms_biases")
]


class CalibOn(str, Enum):
    train = "train"
    eval = "eval"


CalibOpt = Annotated[
    CalibOn,
    typer.Option(
        help="inputs the retention level is calibrated on (labels unused): train | eval (held-out, transductive)"
    ),
]


def _train_config(config: Path | None, defaults: dict[str, Any], options: dict[str, Any]) -> TrainConfig:
    """TrainConfig from --config (either form, else the verb's defaults); the verb's options that
    name a TrainConfig option (flat names: FLAT_TRAIN_KEYS, the one map of options onto groups) and
    were given (not None) override it. The file is checked field by field first, and a text model's
    max_length against its positions (cli_config_checks)."""
    from sttabt_edge.train.train_config import FLAT_TRAIN_KEYS, TrainConfig, nest_train

    data = read_config("--config", config, TRAIN_RULES, "TrainConfig") if config else None
    base = TrainConfig.from_dict(data) if data is not None else TrainConfig.of(**defaults)
    given = {k: v for k, v in options.items() if (k in FLAT_TRAIN_KEYS or k == "device") and v is not None}
    cfg = base.with_options(given)
    in_file = data is not None and "max_length" in nest_train(data).get("data", {})
    where = f"--config {config}" if in_file else None
    limit = model_positions(options["model"]) if model_family(options["model"]) == "bert" else None
    return cfg.replace(data=cfg.data.replace(max_length=fit_max_length(cfg.data.max_length, limit, where)))


def _load_training(
    model: str, data: Path, eval_data: Path | None, labeled: bool, seed: int, calib_on: str = "train"
) -> tuple[nn.Module, TrainData, Path | None]:
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


def _sparse_config(path: Path | None, options: dict[str, Any]) -> Any:
    """SparseTrainConfig from --sparse-config (else the defaults); the options given (not None) override it.
    Enum options arrive as their values. The file and the options are checked field by field first."""
    from sttabt_edge.errors import InputError
    from sttabt_edge.train.config import SparseTrainConfig

    check_options(SPARSE_RULES, options)
    data = read_config("--sparse-config", path, SPARSE_RULES, "SparseTrainConfig") if path else {}
    try:  # either form: the old flat reducer keys are grouped on load
        base = SparseTrainConfig.from_dict(data)
    except ValueError as e:  # a cross-field rule, e.g. a field given both flat and grouped
        raise InputError(f"--sparse-config {path}: {e}") from e
    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items() if v is not None}
    if "concrete" in given:  # --concrete: the one option that sets the STTABT reducer's settings
        given["sttabt"] = base.sttabt.replace(concrete=given.pop("concrete"))
    return base.replace(**given)


def _train_errors() -> tuple[type[BaseException], ...]:
    from sttabt_edge.errors import SttabtError

    return (SttabtError, ValueError, FileNotFoundError)


@train_app.command("approx", short_help="Distil an ApproxNet (labels unused).")
def train_approx_cmd(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    factor: Annotated[int, typer.Option(help="hidden/FFN widths divided by this")] = APPROX_FACTOR,
    init: Annotated[Init, typer.Option(help="interpolate (resized teacher) | random")] = Init.interpolate,
    heads: Annotated[
        int, typer.Option(help="attention heads (a divisor of the model's; 0: as many as the model)")
    ] = APPROX_HEADS,
    track_weight: Annotated[
        float, typer.Option(help="weight of the back-tracking KL (importance ranking)")
    ] = 0.0,
    eval_data: EvalDataOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    grad_accum: AccumOpt = None,
    amp: AmpOpt = None,
    seed: IntOpt = None,
    num_workers: IntOpt = None,
    save_every: IntOpt = None,
    log_every: IntOpt = None,
    max_eval_samples: IntOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Distil an ApproxNet (attention KL + hidden MSE; labels unused). Reports held-out attention KL."""
    options = dict(locals())
    _check_common(data, eval_data, config)
    try:
        cfg = _train_config(config, {"lr": 5e-4, "steps": 1000}, options)
        check_train_run(cfg, options)
        from sttabt_edge.train.approx import REPORT_FILE, train_approx  # torch: after every check
        from sttabt_edge.train.config import ApproxConfig

        net, train_data, _ = _load_training(model, data, eval_data, labeled=False, seed=cfg.optim.seed)
        acfg = ApproxConfig(factor=factor, init=init.value, heads=heads or None, track_weight=track_weight)
        train_approx(net, train_data, cfg=cfg, out=out, acfg=acfg, resume=resume)
    except _train_errors() as e:
        fail(str(e))
    report = out / REPORT_FILE
    if _is_rank0():
        typer.echo(report.read_text() if report.is_file() else "{}")


@train_app.command("concrete", short_help="Learn STTABT's per-layer thresholds (concrete masking).")
def train_concrete_cmd(
    model: ModelOpt,
    approx: Annotated[Path, typer.Option(help="ApproxNet dir from `train approx`")],
    data: DataOpt,
    out: OutOpt,
    target_retention: TargetOpt = None,
    freeze_main: Annotated[bool | None, typer.Option(help="train thresholds (+ ApproxNet) only")] = None,
    task_weight: TaskWeightOpt = None,
    kd_weight: FloatOpt = None,
    retention_control: RetentionControlOpt = None,
    main_params: MainParamsOpt = None,
    retention_weight: FloatOpt = None,
    threshold_lr: FloatOpt = None,
    hard_frac: Annotated[float | None, typer.Option(help="last fraction of steps with hard masks")] = None,
    concrete: Annotated[
        ConcreteVariant | None,
        typer.Option(
            help="ste (ours: noise + straight-through) | official (the paper's code: Φ of z-scored scores, "
            "T 0.1) [default: ste]"
        ),
    ] = None,
    init_schedule: Annotated[
        InitSchedule | None,
        typer.Option(
            help="initial keep schedule: constant (every layer ~target) | union (one own fraction per layer, sets "
            "grow toward the input) | shared (one threshold offset; the official init). Default: constant "
            "for ste, shared for official"
        ),
    ] = None,
    calib_on: CalibOpt = CalibOn.train,
    eval_data: EvalDataOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    grad_accum: AccumOpt = None,
    amp: AmpOpt = None,
    seed: IntOpt = None,
    num_workers: IntOpt = None,
    save_every: IntOpt = None,
    log_every: IntOpt = None,
    max_eval_samples: IntOpt = None,
    config: ConfigOpt = None,
    sparse_config: SparseConfigOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Learn STTABT's per-layer thresholds for a retention target (concrete masking), then a hard phase."""
    options = dict(locals())
    _check_common(data, eval_data, config, target_retention, sparse_config)
    check_exists("--approx", approx, "dir")
    try:
        cfg = _train_config(config, {"lr": 2e-5, "steps": 500}, options)
        check_train_run(cfg, options)
        names = (
            *("target_retention", "freeze_main", "concrete", "init_schedule", "task_weight", "kd_weight"),
            *("retention_weight", "retention_control", "main_params", "threshold_lr", "hard_frac"),
        )
        scfg = _sparse_config(sparse_config, {k: options[k] for k in names})
        if init_schedule is None and sparse_config is None:  # the variant's own default init
            scfg = scfg.replace(init_schedule="shared" if scfg.sttabt.concrete == "official" else "constant")
        from sttabt_edge.method.approxnet import ApproxNet  # torch: after every check
        from sttabt_edge.train.concrete import train_concrete

        net, train_data, model_dir = _load_training(
            model, data, eval_data, True, cfg.optim.seed, calib_on.value
        )
        train_concrete(
            net,
            ApproxNet.load(approx, net.config),
            train_data,
            cfg=cfg,
            scfg=scfg,
            out=out,
            resume=resume,
            source_dir=model_dir,
        )
    except _train_errors() as e:
        fail(str(e))
    _echo_trained(out / TRAINED_FILE)


@train_app.command("baseline", short_help="Train an LTP or top-k baseline with STTABT's losses.")
def train_baseline_cmd(
    method: Annotated[Baseline, typer.Option(help="ltp (learned thresholds) or topk (fixed schedule)")],
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    target_retention: TargetOpt = None,
    task_weight: TaskWeightOpt = None,
    retention_control: RetentionControlOpt = None,
    calib_on: CalibOpt = CalibOn.train,
    eval_data: EvalDataOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    grad_accum: AccumOpt = None,
    amp: AmpOpt = None,
    seed: IntOpt = None,
    num_workers: IntOpt = None,
    save_every: IntOpt = None,
    log_every: IntOpt = None,
    max_eval_samples: IntOpt = None,
    config: ConfigOpt = None,
    sparse_config: SparseConfigOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train an LTP or top-k baseline with the same losses (task + KD + retention) as STTABT."""
    options = dict(locals())
    _check_common(data, eval_data, config, target_retention, sparse_config)
    try:
        cfg = _train_config(config, {"lr": 2e-5, "steps": 500}, options)
        check_train_run(cfg, options)
        names = ("target_retention", "task_weight", "retention_control")
        scfg = _sparse_config(sparse_config, {k: options[k] for k in names})
        from sttabt_edge.train.baselines import train_baseline  # torch: after every check

        net, train_data, model_dir = _load_training(
            model, data, eval_data, True, cfg.optim.seed, calib_on.value
        )
        train_baseline(
            method.value, net, train_data, None, cfg, scfg, out=out, resume=resume, source_dir=model_dir
        )
    except _train_errors() as e:
        fail(str(e))
    _echo_trained(out / TRAINED_FILE)


def _check_common(
    data: Path,
    eval_data: Path | None,
    config: Path | None,
    target: float | None = None,
    sparse_config: Path | None = None,
) -> None:
    """The inputs every train verb reads, checked before the model loads."""
    check_exists("--data", data)
    check_exists("--eval-data", eval_data)
    check_exists("--config", config, "file")
    check_exists("--sparse-config", sparse_config, "file")
    if target is not None:
        check_fraction("--target-retention", target)


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


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
