"""What ``sttabt-edge compress`` is asked to do: one typed, validated request, grouped by concern.

Everything that can be wrong with a request is checked here, before any model loads, so a
bad option costs the user a one-line error and not a ten-minute distillation. The groups:
``goal`` (the accuracy budget or a retention), ``budget`` (training time and steps),
``delivery`` (the file), ``approxnet`` (the ApproxNet), ``selection`` (the held-out split and the
search), ``batch`` and ``bench``. Run dirs' report.json stores the config: written grouped;
the flat form written before #27 still reads (``FLAT_COMPRESS_KEYS``, :func:`flat_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import InputError
from sttabt_edge.train.jsonconfig import JsonConfig, check_groups, nest_flat, split_flat, typed_groups

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from sttabt_edge.reducers.spec import Target

Quantize = Literal["int8"]  # dynamic-range INT8 (the delivered file and the dense baseline alike)
TARGETS: tuple[Target, ...] = ("onnx", "tflite")
QUANTIZE: tuple[Quantize | None, ...] = (None, *get_args(Quantize))


def _path(owner: object, *names: str) -> None:
    """JSON gives paths as strings; the fields are Paths."""
    for name in names:
        if isinstance(getattr(owner, name), str):
            object.__setattr__(owner, name, Path(getattr(owner, name)))


def _at_least(*checks: tuple[str, int, int]) -> None:
    for name, value, low in checks:
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")


@dataclass(frozen=True)
class Goal(JsonConfig):
    """``max_drop`` (accuracy points on the held-out split) or ``target_retention``, exactly one."""

    max_drop: float | None = None  # search: the most aggressive retention within this many points of dense
    target_retention: float | None = None  # or: one fixed retention level

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.target_retention is None):
            raise InputError(
                "give exactly one of --max-drop (accuracy points) and --target-retention (a fraction)"
            )
        if self.max_drop is not None and not 0.0 <= self.max_drop < 100.0:
            raise InputError(f"--max-drop is in accuracy points, in [0, 100), got {self.max_drop:g}")
        if self.target_retention is not None and not 0.0 < self.target_retention <= 1.0:
            raise InputError(f"--target-retention must be in (0, 1], got {self.target_retention:g}")


@dataclass(frozen=True)
class Budget(JsonConfig):
    """Training time: distillation, then threshold training with what distillation left."""

    minutes: float = 30.0  # training time (distillation + threshold training), approximate
    approx_steps: int | None = None  # distillation steps, instead of the budget's share (reproducible runs)
    threshold_steps: int | None = None  # threshold-training steps, instead of what the budget leaves
    concrete: bool = True  # train thresholds (concrete masking) when the budget allows

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise InputError(f"--budget-minutes must be > 0, got {self.minutes:g}")
        _at_least(
            ("--approx-steps", self.approx_steps or 1, 1), ("--threshold-steps", self.threshold_steps or 1, 1)
        )

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


@dataclass(frozen=True)
class Delivery(JsonConfig):
    """The delivered file (the dense baseline is exported the same way, to compare like with like)."""

    target: Target = "onnx"
    quantize: Quantize | None = None
    fuse: bool = False  # ONNX: fused attention kernels for the delivered file and the dense baseline alike

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.quantize not in QUANTIZE:
            raise InputError(f"--quantize must be int8 or absent, got {self.quantize!r}")
        if self.fuse and self.target != "onnx":
            raise InputError("--fuse is ONNX-only (fused kernels are ONNX Runtime contrib ops)")


@dataclass(frozen=True)
class ApproxSource(JsonConfig):
    """The ApproxNet: a distilled one reused (``path``), or the shape of one distilled here."""

    path: Path | None = None  # a distilled ApproxNet dir to reuse (skips distillation)
    factor: int = APPROX_FACTOR  # ApproxNet widths / this, when distilling here
    heads: int | None = APPROX_HEADS  # ApproxNet heads, when distilling here (None: the model's)

    def __post_init__(self) -> None:
        _path(self, "path")
        _at_least(("--approx-factor", self.factor, 1))
        if self.path is not None and (self.factor != APPROX_FACTOR or self.heads != APPROX_HEADS):
            raise InputError(
                "--approx-factor / --approx-heads shape an ApproxNet distilled here; drop them with --approx"
            )


@dataclass(frozen=True)
class Selection(JsonConfig):
    """The data every choice is made on (a held-out split), the report-only set, and the search."""

    eval_data: Path | None = None  # labelled data reported at the end, never used for a choice
    holdout_data: Path | None = None  # labelled selection data (default: a split of --data)
    holdout: int = 1000  # examples in the held-out split of --data
    holdout_min_tokens: int = 16  # text: the shortest held-out input (sentences, not SST-2's sub-phrases)
    search_steps: int = 7  # bisection steps of the training-free keep-ratio search

    def __post_init__(self) -> None:
        _path(self, "eval_data", "holdout_data")
        _at_least(
            ("--holdout", self.holdout, 10),
            ("--search-steps", self.search_steps, 1),
            ("--holdout-min-tokens", self.holdout_min_tokens, 0),
        )


@dataclass(frozen=True)
class Batch(JsonConfig):
    """Batches of training and evaluation."""

    size: int = 32
    max_length: int = 128  # text: longest input (tokens) used in training and evaluation

    def __post_init__(self) -> None:
        _at_least(("--batch-size", self.size, 1), ("--max-length", self.max_length, 8))


@dataclass(frozen=True)
class Bench(JsonConfig):
    """The latency benchmark against dense."""

    threads: int = 2  # ONNX Runtime threads for the benchmark
    runs: int = 30

    def __post_init__(self) -> None:
        _at_least(("--threads", self.threads, 1), ("--bench-runs", self.runs, 1))


_GROUPS: dict[str, type[JsonConfig]] = {
    "goal": Goal,
    "budget": Budget,
    "delivery": Delivery,
    "approxnet": ApproxSource,
    "selection": Selection,
    "batch": Batch,
    "bench": Bench,
}
# the flat keys: report.json's "config" written before #27 grouped it, and the CLI's option names
FLAT_COMPRESS_KEYS: dict[str, tuple[str, str]] = {
    "max_drop": ("goal", "max_drop"),
    "target_retention": ("goal", "target_retention"),
    "budget_minutes": ("budget", "minutes"),
    **{k: ("budget", k) for k in ("approx_steps", "threshold_steps", "concrete")},
    **{k: ("delivery", k) for k in ("target", "quantize", "fuse")},
    "approx": ("approxnet", "path"),
    "approx_factor": ("approxnet", "factor"),
    "approx_heads": ("approxnet", "heads"),
    **{
        k: ("selection", k)
        for k in ("eval_data", "holdout_data", "holdout", "holdout_min_tokens", "search_steps")
    },
    "batch_size": ("batch", "size"),
    "max_length": ("batch", "max_length"),
    "threads": ("bench", "threads"),
    "bench_runs": ("bench", "runs"),
}
TOP_LEVEL = ("model", "data", "out", "seed")


def flat_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config in either form -> the flat one (report.json's readers: one key per option)."""
    out = {k: v for k, v in data.items() if k not in _GROUPS}
    for key, (group, name) in FLAT_COMPRESS_KEYS.items():
        nested = data.get(group)
        if isinstance(nested, dict) and name in nested:
            out[key] = nested[name]
    return out


@dataclass(frozen=True)
class CompressConfig(JsonConfig):
    """A compress request; build it with :meth:`of` from flat option names (the CLI's)."""

    model: str  # dense model dir (or alias)
    data: Path  # training data; the held-out split for selection is carved out of it
    out: Path
    goal: Goal
    budget: Budget = field(default_factory=Budget)
    delivery: Delivery = field(default_factory=Delivery)
    approxnet: ApproxSource = field(default_factory=ApproxSource)
    selection: Selection = field(default_factory=Selection)
    batch: Batch = field(default_factory=Batch)
    bench: Bench = field(default_factory=Bench)
    seed: int = 0

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Either JSON form (grouped, or the flat one of old report.json files), its groups typed."""
        return typed_groups(nest_flat(data, FLAT_COMPRESS_KEYS, _GROUPS), _GROUPS)

    def __post_init__(self) -> None:
        _path(self, "data", "out")
        try:
            check_groups(self, _GROUPS)
        except ValueError as e:
            raise InputError(str(e)) from None
        for name, path in (
            ("--data", self.data),
            ("--approx", self.approxnet.path),
            ("--eval-data", self.selection.eval_data),
            ("--holdout-data", self.selection.holdout_data),
        ):
            if path is not None and not Path(path).exists():
                raise InputError(f"{name} {path}: no such file or folder")

    @classmethod
    def of(cls, **options: Any) -> CompressConfig:
        """From flat names (the CLI's options, FLAT_COMPRESS_KEYS) and the top-level fields."""
        top, groups = _split(options)
        built: dict[str, Any] = {g: _GROUPS[g](**groups.get(g, {})) for g in _GROUPS}
        return cls(**top, **built)

    def with_options(self, **options: Any) -> CompressConfig:
        """This config with ``options`` (flat names, as :meth:`of`) changed."""
        top, groups = _split(options)
        return replace(self, **top, **{g: replace(getattr(self, g), **v) for g, v in groups.items()})

    def to_dict(self) -> dict[str, Any]:
        """Grouped, paths as strings (JSON)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, JsonConfig):
                value = {k: str(v) if isinstance(v, Path) else v for k, v in value.to_dict().items()}
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    return split_flat(options, FLAT_COMPRESS_KEYS, TOP_LEVEL, "compress", InputError)
