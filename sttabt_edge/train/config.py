"""Typed training configs (nanoGPT style): plain dataclasses with a JSON round trip (jsonconfig.py).

The optimisation loop's ``TrainConfig`` lives in train_config.py (imported here, its home for
callers); this module holds the ApproxNet's and threshold training's configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.train.jsonconfig import JsonConfig, check_groups, nest_flat, typed_groups
from sttabt_edge.train.jsonconfig import check_finite as _finite
from sttabt_edge.train.train_config import TrainConfig as TrainConfig  # its callers' import

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from sttabt_edge.method.backtrack import HeadReduce

ApproxInit = Literal["interpolate", "random"]
# calibrated threshold init's keep schedule (see SparseTrainConfig.init_schedule)
InitSchedule = Literal["constant", "union", "shared"]
ConcreteVariant = Literal["ste", "official"]  # = reducers.spec.ConcreteKind (this module stays torch-free)
KeepSchedule = Literal["geometric", "constant"]  # the top-k baseline's per-layer keep ratios
INITS: tuple[ApproxInit, ...] = get_args(ApproxInit)
INIT_SCHEDULES: tuple[InitSchedule, ...] = get_args(InitSchedule)
CONCRETE_VARIANTS: tuple[ConcreteVariant, ...] = get_args(ConcreteVariant)
KEEP_SCHEDULES: tuple[KeepSchedule, ...] = get_args(KeepSchedule)
# the soft phase's retention term (train/retention.py): the official squared penalty, or a multiplier raised
# by dual ascent that holds the target against the KD loss's pull toward keeping more tokens
RetentionControl = Literal["penalty", "lagrangian"]
# which main-model weights threshold training fine-tunes: every one, or only LayerNorms and biases
MainParams = Literal["all", "norms_biases"]


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
    ``ltp_temperature``, ...; run dirs and config files written before #27) move into their group."""
    return nest_flat(data, LEGACY_SPARSE_KEYS, _GROUPS)


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
        return typed_groups(nest_legacy(data), _GROUPS)

    def __post_init__(self) -> None:
        check_groups(self, _GROUPS)
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
