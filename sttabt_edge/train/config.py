"""Typed training configs (nanoGPT style): plain dataclasses with a JSON round trip.

Configs are stored in every checkpoint and final output, so a run can be resumed or
reproduced from its directory alone. Unknown keys are an error on load: a typo in a
JSON config must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from sttabt_edge.method.backtrack import HeadReduce
    from sttabt_edge.train.augment import AugmentConfig

AmpMode = Literal["none", "bf16", "fp16"]
ApproxInit = Literal["interpolate", "random"]
# calibrated threshold init's keep schedule (see SparseTrainConfig.init_schedule)
InitSchedule = Literal["constant", "union", "shared"]
ConcreteVariant = Literal["ste", "official"]  # = reducers.spec.ConcreteKind (this module stays torch-free)
KeepSchedule = Literal["geometric", "constant"]  # the top-k baseline's per-layer keep ratios
AMP_MODES: tuple[AmpMode, ...] = get_args(AmpMode)
INITS: tuple[ApproxInit, ...] = get_args(ApproxInit)
INIT_SCHEDULES: tuple[InitSchedule, ...] = get_args(InitSchedule)
CONCRETE_VARIANTS: tuple[ConcreteVariant, ...] = get_args(ConcreteVariant)
KEEP_SCHEDULES: tuple[KeepSchedule, ...] = get_args(KeepSchedule)
# the soft phase's retention term (train/retention.py): the official squared penalty, or a multiplier raised
# by dual ascent that holds the target against the KD loss's pull toward keeping more tokens
RetentionControl = Literal["penalty", "lagrangian"]
# which main-model weights threshold training fine-tunes: every one, or only LayerNorms and biases
MainParams = Literal["all", "norms_biases"]

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` for a dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON dict as the fields take it (a config that changed its form converts older files here)."""
        return data

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = cls.prepare(data)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        from sttabt_edge.train.checkpoint import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class TrainConfig(JsonConfig):
    """The optimisation loop shared by every trainer (engine.py)."""

    lr: float = 5e-5  # peak learning rate of the main model (other groups scale from it)
    steps: int = 0  # optimizer steps; 0 = derive from ``epochs``
    epochs: float = 1.0  # used only when steps == 0
    batch_size: int = 32  # per-process micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup: float = 0.1  # linear warmup: fraction of the steps if < 1, else a number of steps
    weight_decay: float = 0.01  # AdamW; never applied to biases, norms, thresholds (params with dim < 2)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    seed: int = 0  # data order, dropout and concrete noise all derive from (seed, step)
    amp: AmpMode = "none"  # "none" | "bf16" (CPU or GPU autocast) | "fp16" (CUDA, with GradScaler)
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    eval_every: int = 0  # optimizer steps between evaluations; 0 = only at the end
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted
    max_length: int = 128  # text: truncate longer inputs (tokens, incl. [CLS]/[SEP])
    bucket_batches: int = 50  # text: sort by length within chunks of this many batches
    # images: RandomResizedCrop + flip for training batches (False: eval preprocessing). An AugmentConfig
    # (JSON: "strong" = DeiT's recipe, or a dict of AugmentConfig fields, the rest default) adds
    # RandAugment, random erasing, mixup / cutmix and label smoothing; labels become soft (B, C) targets
    augment: bool | AugmentConfig = True
    num_workers: int = 0  # DataLoader workers preparing batches
    eval_batch_size: int = 64
    max_eval_samples: int = 0  # 0 = the whole eval set
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu", "cuda"
    stop_after: int = 0  # stop (with a checkpoint) after this many steps of the schedule; 0 = run to the end
    progress: bool = True  # rich progress bar (rank 0 only)

    def __post_init__(self) -> None:
        recipe: Any = self.augment
        if isinstance(recipe, str | dict):  # from JSON
            from sttabt_edge.train.augment import AugmentConfig

            if isinstance(recipe, str) and recipe != "strong":
                raise ValueError(
                    f'augment must be true, false, "strong" or a dict of AugmentConfig fields, got {recipe!r}'
                )
            self.augment = AugmentConfig.from_dict(recipe if isinstance(recipe, dict) else {})
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0):
            raise ValueError(f"give steps > 0 or epochs > 0 (steps={self.steps}, epochs={self.epochs})")
        if self.lr <= 0 or self.warmup < 0 or self.grad_clip < 0:
            raise ValueError(
                f"lr must be > 0, warmup and grad_clip >= 0 (lr={self.lr}, warmup={self.warmup})"
            )

    def total_steps(self, local_batches_per_epoch: int) -> int:
        """Optimizer steps of the whole schedule, given one process's batches per epoch."""
        if self.steps:
            return self.steps
        return max(1, math.ceil(self.epochs * local_batches_per_epoch / self.grad_accum))

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total)) if self.warmup < 1 else int(self.warmup)


@dataclass
class ApproxConfig(JsonConfig):
    """ApproxNet distillation (approx.py)."""

    factor: int = APPROX_FACTOR  # hidden and FFN widths are divided by this (sttabt_edge/defaults.py)
    init: ApproxInit = (
        "interpolate"  # "interpolate" (area-resized teacher weights; ViT) or "random" (text OK)
    )
    # attention heads; None = the teacher's (fewer: a cheaper mean-map predictor)
    heads: int | None = APPROX_HEADS
    attn_weight: float = 1.0  # attention KL: what back-tracking consumes
    hidden_weight: float = 1.0  # hidden-state MSE through the transfers
    embed_weight: float = 1.0
    logits_weight: float = 0.0  # logits KD: off, the ApproxNet only needs attention
    track_weight: float = 0.0  # back-tracking KL (method/distill.backtrack_kl): the importance ranking
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _finite(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not (math.isfinite(value) and value >= 0):  # NaN passes every comparison: test it by name
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class SttabtSettings(JsonConfig):
    """The STTABT reducer that threshold training builds, less its thresholds (learned): what the trained
    ``SttabtSpec`` holds besides them. Built once where input enters (``--concrete``, a config file)."""

    # concrete variant: "ste" (this project's: logistic noise, straight-through hard masks) or
    # "official" (run_bert_with_concrete: Φ(z-scored scores), T = 0.1, soft masks, method/concrete_official.py)
    concrete: ConcreteVariant = "ste"
    temperature: float = 0.5  # concrete relaxation temperature ("ste"; "official" uses 0.1)
    min_keep: int = 4  # tokens always kept per layer, prefix included (short inputs keep their words)
    p: float = 0.1  # back-tracking propagation weight (see method/backtrack.py)
    head_reduce: HeadReduce = "mean"

    def __post_init__(self) -> None:
        if self.concrete not in CONCRETE_VARIANTS:
            raise ValueError(f"concrete must be one of {CONCRETE_VARIANTS}, got {self.concrete!r}")
        _finite(self, "temperature", "p")


@dataclass(frozen=True)
class LtpSettings(JsonConfig):
    """The LTP baseline's training-time reducer settings (its thresholds are learned)."""

    temperature: float = 0.1  # LTP's sigmoid temperature (importances are O(1))
    min_keep: int = 1  # real tokens always kept per layer beyond the prefix

    def __post_init__(self) -> None:
        _finite(self, "temperature")


# the flat keys of files written before the reducer settings were grouped (#27) -> (group, field)
LEGACY_SPARSE_KEYS: dict[str, tuple[str, str]] = {
    "concrete": ("sttabt", "concrete"),
    "temperature": ("sttabt", "temperature"),
    "min_keep": ("sttabt", "min_keep"),
    "p": ("sttabt", "p"),
    "head_reduce": ("sttabt", "head_reduce"),
    "ltp_temperature": ("ltp", "temperature"),
    "ltp_min_keep": ("ltp", "min_keep"),
}
_GROUPS: dict[str, type[SttabtSettings] | type[LtpSettings]] = {"sttabt": SttabtSettings, "ltp": LtpSettings}


def nest_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A SparseTrainConfig dict in either form -> the grouped form: the old flat keys (``concrete``,
    ``ltp_temperature``, ...; run dirs and config files written before #27) move into their group.
    A field given both flat and grouped is an error, not a silent choice."""
    out = {k: v for k, v in data.items() if k not in LEGACY_SPARSE_KEYS}
    for key, (group, name) in LEGACY_SPARSE_KEYS.items():
        if key not in data:
            continue
        nested = out.get(group, {})
        if not isinstance(nested, dict):
            raise ValueError(f"{group} must be an object of {_GROUPS[group].__name__} fields")
        if name in nested:
            raise ValueError(f"{key} is given twice: flat (the old form) and as {group}.{name}")
        out[group] = {**nested, name: data[key]}
    return out


@dataclass
class SparseTrainConfig(JsonConfig):
    """Losses and phases shared by concrete (STTABT) and baseline (LTP / top-k) training."""

    target_retention: float = 0.5  # mean fraction of real tokens entering each layer
    task_weight: float = 1.0  # CE (MSE for a 1-output regression head); skipped for unlabeled data
    kd_weight: float = 1.0  # KL(dense teacher || sparse student) on logits
    kd_temperature: float = 2.0
    retention_weight: float = 10.0  # (mean retention - target)^2, soft phase only
    retention_control: RetentionControl = "penalty"  # "lagrangian": also lam (r - t), lam by dual ascent
    retention_dual_lr: float = 1.0  # lagrangian: lam += this * (r - t) per micro-batch
    main_params: MainParams = "all"  # "norms_biases": fine-tune only the main model's norms and biases
    threshold_lr: float = (
        0.05  # Adam lr of the thresholds (logits of order 1: model lr would never move them)
    )
    approx_lr_scale: float = 1.0  # ApproxNet lr = lr * this (concrete only)
    train_approx: bool = True  # concrete: let the task gradient also fine-tune the ApproxNet
    freeze_main: bool = False  # train thresholds (+ ApproxNet) only; no hard phase
    hard_frac: float = 0.2  # last fraction of the steps: thresholds frozen, hard masks, model fine-tuned
    snap: bool = True  # at the first hard step (or the end): shift thresholds so hard retention = target
    init: str = "calibrate"  # thresholds: "calibrate" (retention starts at the target) or a float
    # calibrated init's keep schedule: "constant" (every layer keeps ~target; train/concrete.shape_thresholds),
    # "union" (each layer's own selection keeps one fraction, sets grow toward the input; union_thresholds)
    # or "shared" (one offset for all layers: the importance profile decides, early layers keep everything)
    init_schedule: InitSchedule = "constant"
    calib_samples: int = 64  # random training examples the thresholds are calibrated / snapped on
    sttabt: SttabtSettings = field(default_factory=SttabtSettings)  # concrete training's reducer
    ltp: LtpSettings = field(default_factory=LtpSettings)  # the LTP baseline's
    schedule: KeepSchedule = "geometric"  # top-k baseline: "geometric" (q**l per layer) or "constant"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Either JSON form (grouped, or the old flat one: :func:`nest_legacy`), its groups typed."""
        grouped = nest_legacy(data)
        for name, group in _GROUPS.items():
            if isinstance(grouped.get(name), dict):
                grouped[name] = group.from_dict(grouped[name])
        return grouped

    def __post_init__(self) -> None:
        for name, group in _GROUPS.items():
            if not isinstance(getattr(self, name), group):
                raise ValueError(f"{name} must be a {group.__name__}, got {getattr(self, name)!r}")
        if not 0.0 < self.target_retention <= 1.0:
            raise ValueError(f"target_retention must be in (0, 1], got {self.target_retention}")
        if not 0.0 <= self.hard_frac < 1.0:
            raise ValueError(f"hard_frac must be in [0, 1), got {self.hard_frac}")
        if self.init != "calibrate":
            float(self.init)  # raises ValueError for anything else
        for name, choices in (
            ("retention_control", RetentionControl),
            ("main_params", MainParams),
            ("schedule", KeepSchedule),
        ):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {get_args(choices)}, got {getattr(self, name)!r}")
        weights = ("task_weight", "kd_weight", "kd_temperature", "retention_weight", "retention_dual_lr")
        _finite(self, *weights, "threshold_lr", "approx_lr_scale")
        if self.init_schedule not in INIT_SCHEDULES:
            raise ValueError(f"init_schedule must be one of {INIT_SCHEDULES}, got {self.init_schedule!r}")

    def hard_start(self, total_steps: int) -> int:
        """First step of the hard phase (== total_steps when there is none)."""
        if self.freeze_main:
            return total_steps
        return total_steps - int(round(self.hard_frac * total_steps))
