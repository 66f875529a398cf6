"""What ``sttabt-edge compress`` is asked to do: one typed, validated request.

Everything that can be wrong with a request is checked here, before any model loads, so a
bad option costs the user a one-line error and not a ten-minute distillation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from sttabt_edge.defaults import APPROX_FACTOR, APPROX_HEADS
from sttabt_edge.errors import InputError

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from sttabt_edge.reducers.spec import Target

Quantize = Literal["int8"]  # dynamic-range INT8 (the delivered file and the dense baseline alike)
TARGETS: tuple[Target, ...] = ("onnx", "tflite")
QUANTIZE: tuple[Quantize | None, ...] = (None, *get_args(Quantize))


@dataclass(frozen=True)
class CompressConfig:
    """``max_drop`` (accuracy points on the held-out split) or ``target_retention``, not both."""

    model: str  # dense model dir (or alias)
    data: Path  # training data; the held-out split for selection is carved out of it
    out: Path
    max_drop: float | None = None  # search: the most aggressive retention within this many points of dense
    target_retention: float | None = None  # or: one fixed retention level
    budget_minutes: float = 30.0  # training time (distillation + threshold training), approximate
    approx_steps: int | None = None  # distillation steps, instead of the budget's share (reproducible runs)
    threshold_steps: int | None = None  # threshold-training steps, instead of what the budget leaves
    target: Target = "onnx"
    quantize: Quantize | None = None
    fuse: bool = False  # ONNX: fused attention kernels for the delivered file and the dense baseline alike
    approx: Path | None = None  # a distilled ApproxNet dir to reuse (skips distillation)
    approx_factor: int = APPROX_FACTOR  # ApproxNet widths / this, when distilling here
    approx_heads: int | None = APPROX_HEADS  # ApproxNet heads, when distilling here (None: the model's)
    eval_data: Path | None = None  # labelled data reported at the end, never used for a choice
    holdout_data: Path | None = None  # labelled selection data (default: a split of --data)
    holdout: int = 1000  # examples in the held-out split of --data
    holdout_min_tokens: int = 16  # text: the shortest held-out input (sentences, not SST-2's sub-phrases)
    concrete: bool = True  # train thresholds (concrete masking) when the budget allows
    search_steps: int = 7  # bisection steps of the training-free keep-ratio search
    max_length: int = 128  # text: longest input (tokens) used in training and evaluation
    batch_size: int = 32
    threads: int = 2  # ONNX Runtime threads for the benchmark
    bench_runs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.target_retention is None):
            raise InputError(
                "give exactly one of --max-drop (accuracy points) and --target-retention (a fraction)"
            )
        if self.max_drop is not None and not 0.0 <= self.max_drop < 100.0:
            raise InputError(f"--max-drop is in accuracy points, in [0, 100), got {self.max_drop:g}")
        if self.target_retention is not None and not 0.0 < self.target_retention <= 1.0:
            raise InputError(f"--target-retention must be in (0, 1], got {self.target_retention:g}")
        if self.budget_minutes <= 0:
            raise InputError(f"--budget-minutes must be > 0, got {self.budget_minutes:g}")
        if self.target not in TARGETS:
            raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.quantize not in QUANTIZE:
            raise InputError(f"--quantize must be int8 or absent, got {self.quantize!r}")
        if self.fuse and self.target != "onnx":
            raise InputError("--fuse is ONNX-only (fused kernels are ONNX Runtime contrib ops)")
        for name, value, low in (
            ("--approx-steps", self.approx_steps or 1, 1),
            ("--threshold-steps", self.threshold_steps or 1, 1),
            ("--holdout", self.holdout, 10),
            ("--search-steps", self.search_steps, 1),
            ("--approx-factor", self.approx_factor, 1),
            ("--batch-size", self.batch_size, 1),
            ("--threads", self.threads, 1),
            ("--bench-runs", self.bench_runs, 1),
            ("--max-length", self.max_length, 8),
            ("--holdout-min-tokens", self.holdout_min_tokens, 0),
        ):
            if value < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        if self.approx is not None and (
            self.approx_factor != APPROX_FACTOR or self.approx_heads != APPROX_HEADS
        ):
            raise InputError(
                "--approx-factor / --approx-heads shape an ApproxNet distilled here; drop them with --approx"
            )
        for name, path in (
            ("--data", self.data),
            ("--approx", self.approx),
            ("--eval-data", self.eval_data),
            ("--holdout-data", self.holdout_data),
        ):
            if path is not None and not Path(path).exists():
                raise InputError(f"{name} {path}: no such file or folder")

    @property
    def budget_s(self) -> float:
        return self.budget_minutes * 60.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
