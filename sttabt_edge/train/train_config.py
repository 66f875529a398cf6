"""``TrainConfig``: the optimisation loop every trainer shares (engine.py), grouped by concern.

``optim`` (the schedule and optimiser), ``data`` (batches), ``eval`` (held-out evaluation), ``run``
(logging, checkpoints, stopping) and ``device``: each group small, frozen, and checked once when
built. Files are written grouped. Flat files (recipes under benchmarks/recipes/, run dirs'
train_config.json, checkpoints' state.json, ``--config`` files written before #27) still load:
``FLAT_TRAIN_KEYS`` moves each flat key into its group, and the CLI maps its options through
the same table (:meth:`TrainConfig.with_options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from sttabt_edge.train.jsonconfig import JsonConfig, check_groups, nest_flat, split_flat, typed_groups

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from sttabt_edge.train.augment import AugmentConfig

AmpMode = Literal["none", "bf16", "fp16"]
AMP_MODES: tuple[AmpMode, ...] = get_args(AmpMode)
# "auto": cuda:LOCAL_RANK if available, else cpu; "cuda": cuda:LOCAL_RANK (train/distributed.pick_device)
Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[Device, ...] = get_args(Device)


@dataclass(frozen=True)
class OptimSettings(JsonConfig):
    """The schedule and the optimiser: what decides the weights a run ends with."""

    lr: float = 5e-5  # peak learning rate of the main model (other groups scale from it)
    steps: int = 0  # optimizer steps; 0 = derive from ``epochs``
    epochs: float = 1.0  # used only when steps == 0
    batch_size: int = 32  # per-process micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup: float = 0.1  # linear warmup: fraction of the steps if < 1, else a number of steps
    weight_decay: float = 0.01  # AdamW; never applied to biases, norms, thresholds (params with dim < 2)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    amp: AmpMode = "none"  # "none" | "bf16" (CPU or GPU autocast) | "fp16" (CUDA, with GradScaler)
    seed: int = 0  # data order, dropout and concrete noise all derive from (seed, step)

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class DataSettings(JsonConfig):
    """How training batches are made (the held-out ones: EvalSettings)."""

    max_length: int = 128  # text: truncate longer inputs (tokens, incl. [CLS]/[SEP])
    bucket_batches: int = 50  # text: sort by length within chunks of this many batches
    # images: RandomResizedCrop + flip for training batches (False: eval preprocessing). An AugmentConfig
    # (JSON: "strong" = DeiT's recipe, or a dict of AugmentConfig fields, the rest default) adds
    # RandAugment, random erasing, mixup / cutmix and label smoothing; labels become soft (B, C) targets
    augment: bool | AugmentConfig = True
    num_workers: int = 0  # DataLoader workers preparing batches

    def __post_init__(self) -> None:
        recipe: Any = self.augment
        if isinstance(recipe, str | dict):  # from JSON
            from sttabt_edge.train.augment import AugmentConfig

            if isinstance(recipe, str) and recipe != "strong":
                raise ValueError(
                    f'augment must be true, false, "strong" or a dict of AugmentConfig fields, got {recipe!r}'
                )
            object.__setattr__(
                self, "augment", AugmentConfig.from_dict(recipe if isinstance(recipe, dict) else {})
            )


@dataclass(frozen=True)
class EvalSettings(JsonConfig):
    """Held-out evaluation during and after training."""

    every: int = 0  # optimizer steps between evaluations; 0 = only at the end
    batch_size: int = 64
    max_samples: int = 0  # 0 = the whole eval set


@dataclass(frozen=True)
class RunSettings(JsonConfig):
    """What a run leaves behind and when it stops: logs, checkpoints, the progress bar."""

    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted
    stop_after: int = 0  # stop (with a checkpoint) after this many steps of the schedule; 0 = run to the end
    progress: bool = True  # rich progress bar (rank 0 only)


_GROUPS: dict[str, type[JsonConfig]] = {
    "optim": OptimSettings,
    "data": DataSettings,
    "eval": EvalSettings,
    "run": RunSettings,
}
# the flat keys: files written before #27 grouped TrainConfig, and the CLI's option names -> (group, field)
FLAT_TRAIN_KEYS: dict[str, tuple[str, str]] = {
    **{k: ("optim", k) for k in ("lr", "steps", "epochs", "batch_size", "grad_accum", "warmup")},
    **{k: ("optim", k) for k in ("weight_decay", "grad_clip", "amp", "seed")},
    **{k: ("data", k) for k in ("max_length", "bucket_batches", "augment", "num_workers")},
    "eval_every": ("eval", "every"),
    "eval_batch_size": ("eval", "batch_size"),
    "max_eval_samples": ("eval", "max_samples"),
    **{k: ("run", k) for k in ("log_every", "save_every", "keep_checkpoints", "stop_after", "progress")},
}


def nest_train(data: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict in either form (or a mix) -> the grouped form; a field given both ways is an error."""
    return nest_flat(data, FLAT_TRAIN_KEYS, _GROUPS)


@dataclass
class TrainConfig(JsonConfig):
    """The optimisation loop shared by every trainer (engine.py)."""

    optim: OptimSettings = field(default_factory=OptimSettings)
    data: DataSettings = field(default_factory=DataSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)
    device: Device = "auto"

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Either JSON form (grouped, or the old flat one: :func:`nest_train`), its groups typed."""
        return typed_groups(nest_train(data), _GROUPS)

    def __post_init__(self) -> None:
        check_groups(self, _GROUPS)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")

    def with_options(self, options: Mapping[str, Any]) -> TrainConfig:
        """This config with ``options`` set: flat names (the CLI's options, the recipes' keys, each
        moved into its group by FLAT_TRAIN_KEYS) or ``device``."""
        top, changes = split_flat(options, FLAT_TRAIN_KEYS, ("device",), "TrainConfig")
        return self.replace(**top, **{g: replace(getattr(self, g), **v) for g, v in changes.items()})

    @classmethod
    def of(cls, **options: Any) -> TrainConfig:
        """The defaults with ``options`` (flat names, as :meth:`with_options`): recipes, scripts, tests."""
        return cls().with_options(options)
