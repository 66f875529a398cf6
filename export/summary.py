"""What ``run_export`` returns: one typed summary for ONNX and TFLite exports.

A TypedDict, not a dataclass: it is written as JSON as it is (``export --json``), read by the CLI
table, ``compress`` and the benchmarks by key, and those keys are now checked by the type checker.
"""

from __future__ import annotations

from typing import Any, TypedDict


class KeptSummary(TypedDict):
    kept_tokens_per_layer_mean: list[float]  # (L,) mean real tokens entering each layer
    real_tokens_mean: float


class WrittenFiles(TypedDict):
    size_mb: float  # of the file asked for (``--out``)
    files: list[str]  # every file written, ``--out`` first


class ExportSummary(TypedDict, total=False):
    out: str
    method: str
    target: str  # "tflite" (absent: ONNX)
    batch: int | str
    exporter: str
    opset: int
    calibration: str
    parity: dict[str, Any] | None
    kept_tokens_per_layer_mean: list[float]
    real_tokens_mean: float
    flops: dict[str, float]
    attention_widths_sample0: list[int]  # key-axis length of every Softmax, sample 0
    fusion: dict[str, Any]
    ort_nodes: dict[str, int]  # per op type, after ORT's graph optimisation
    quantization: dict[str, Any]
    tflite: dict[str, Any]
    size_mb: float
    files: list[str]
    latency_ms: dict[str, Any]
    latency_note: str
