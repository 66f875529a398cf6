"""On-device latency benchmark for exported models (torch-free).

Each model runs in its own worker process with explicit thread counts; the parent asks
the workers for one run at a time, alternating A B A B ..., so machine drift hits both
equally and two ONNX Runtime sessions never contend inside one process (they slow each
other down, see ../shared/EXPORT_NOTES.md). Only one worker computes at any moment.

Alternating single runs means each model starts with caches the other just filled, which
adds about the same milliseconds to both and pulls the ratio towards 1. ``block=K`` runs
each model K times per round instead (A A A B B B ...), drops the first (cold) run of each
block and compares the medians of the warm ones: the latency a device that runs one model
continuously sees, with drift still cancelled round by round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import InputError
from sttabt_edge.runtime.bench_inputs import read_inputs
from sttabt_edge.runtime.predictor import Predictor, load
from sttabt_edge.runtime.sessions import time_ms


@dataclass
class LatencyStats:
    path: str
    size_mb: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float  # samples per second at the median latency
    peak_rss_mb: float  # the worker process's own peak (what a device running only this model needs)
    kept_per_layer: list[float] | None  # mean real tokens entering each layer
    runs_ms: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    batch: int
    threads: int
    seq_len: int | None
    runs: int
    a: LatencyStats
    b: LatencyStats | None = None
    ratio_p50: float | None = None  # median over rounds of latency(A) / latency(B)
    ratio_p10: float | None = None
    ratio_p90: float | None = None
    spinning: bool = False
    block: int = 1  # consecutive runs per model per round (first one dropped when > 1)
    environment: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = (
        None  # real inputs timed (bench_inputs.RealInputs.summary); None: synthetic
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_inputs(pred: Predictor, batch: int, seq_len: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """A representative batch: normalized noise images, or random-vocabulary text of ``seq_len`` tokens."""
    rng = np.random.default_rng(seed)
    if pred.image is not None:
        s = pred.image.image_size
        return {"pixel_values": rng.standard_normal((batch, 3, s, s)).astype(np.float32)}
    if pred.text is None:
        raise InputError(f"{pred.path.name} has no preprocessing metadata; cannot build inputs")
    tok = pred.text.tokenizer
    vocab = tok.get_vocab_size()
    texts = [
        tok.decode(rng.integers(1000 if vocab > 2000 else 1, vocab, size=seq_len * 2).tolist())
        for _ in range(batch)
    ]
    enc = pred.text(texts, max_length=seq_len, truncation=True)
    return {k: v for k, v in enc.items() if k in pred.input_names}


def _model_size_mb(path: Path) -> float:
    extra = path.with_name(path.name + ".data")
    return (path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 2**20


@dataclass(frozen=True)
class WorkerSpec:
    """What a benchmark worker process loads and runs; passed to it as one JSON argument."""

    path: str
    threads: int
    batch: int
    seq_len: int
    spinning: bool = False
    verify_digest: bool = True
    inputs_path: str = ""  # real inputs (bench_inputs.read_inputs); "" = one synthetic batch
    input_limit: int = 256


def peak_rss_mb() -> float:
    """This process's own peak resident memory. Linux: VmHWM of /proc/self/status, which starts
    afresh at exec; getrusage's ru_maxrss keeps the forking parent's peak across exec, so a worker
    started by a 2 GB training process reported 2 GB (macOS and others: ru_maxrss, in bytes there)."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _worker(spec: WorkerSpec) -> None:
    """Serve runs over stdin/stdout: 'run' -> elapsed ms; 'stats' -> JSON; EOF ends. With
    ``spec.inputs_path``, run k takes real feed k (cyclically), so paired workers stay in step."""
    pred = load(spec.path, threads=spec.threads, spinning=spec.spinning, verify_digest=spec.verify_digest)
    if spec.inputs_path:
        feeds = read_inputs(pred, spec.inputs_path, spec.batch, spec.input_limit).feeds
    else:
        feeds = [synthetic_inputs(pred, spec.batch, spec.seq_len)]
    kept: list[np.ndarray] = []
    k = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            ms, out = time_ms(partial(pred.run, feeds[k % len(feeds)]))
            k += 1
            if "kept_counts" in out:
                kept.append(np.asarray(out["kept_counts"], dtype=np.float64).mean(0))
            print(f"{ms:.6f}", flush=True)
        elif cmd == "stats":
            per_layer = np.mean(kept, 0).tolist() if kept else None
            print(json.dumps({"peak_rss_mb": peak_rss_mb(), "kept_per_layer": per_layer}), flush=True)


class _Worker:
    def __init__(self, spec: WorkerSpec):
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sttabt_edge.runtime.bench", "--worker", json.dumps(asdict(spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited (code {self.proc.wait()}); see the error above")
        return line.strip()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _stats(path: Path, times: list[float], batch: int, extra: dict[str, Any]) -> LatencyStats:
    ts = np.asarray(times)
    p50 = float(np.percentile(ts, 50))
    return LatencyStats(
        path=str(path),
        size_mb=_model_size_mb(path),
        p50_ms=p50,
        p90_ms=float(np.percentile(ts, 90)),
        p99_ms=float(np.percentile(ts, 99)),
        mean_ms=float(ts.mean()),
        throughput_per_s=batch * 1e3 / p50,
        peak_rss_mb=float(extra["peak_rss_mb"]),
        kept_per_layer=extra["kept_per_layer"],
        runs_ms=list(times),
    )


def bench(
    path: str | Path,
    vs: str | Path | None = None,
    threads: int = 2,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    seq_len: int = 128,
    progress: bool = True,
    spinning: bool = False,
    block: int = 1,
    verify_digest: bool = True,
    inputs: str | Path | None = None,
    input_limit: int = 256,
) -> BenchResult:
    """Latency percentiles, throughput, peak RSS, kept tokens; with ``vs``, the interleaved ratio.

    ``spinning``: ONNX Runtime's threads busy-wait between the ops of a run and stop when it
    returns (see :func:`load`), so the idle worker does not steal the timed one's cores. Off
    by default, like :func:`load`. ``block``: runs per model per round (see the module doc);
    ``runs`` counts rounds, and the latency statistics use every warm run. ``verify_digest``: see
    :func:`load`. ``inputs``: time real inputs instead of synthetic ones
    (:mod:`~sttabt_edge.runtime.bench_inputs`; ``seq_len`` is then unused); each run takes the next
    of the first ``input_limit``, the same sequence for both models."""
    from rich.console import Console
    from rich.progress import Progress

    for name, value, low in (
        ("block", block, 1),
        ("runs", runs, 1),
        ("warmup", warmup, 0),
        ("batch", batch, 1),
        ("threads", threads, 1),
        ("seq_len", seq_len, 1),
        ("input_limit", input_limit, 1),
    ):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")

    paths = [Path(path)] + ([Path(vs)] if vs is not None else [])
    # fail fast here with the loader's clear error (the workers' would only say that they exited)
    preds = [load(p, verify_digest=verify_digest) for p in paths]
    is_text = preds[0].text is not None
    real = None
    if inputs is not None:  # read here too: a bad file is the loader's one-line error, not a dead worker
        real = [read_inputs(p, inputs, batch, input_limit) for p in preds][0].summary(Path(inputs))
    src = "" if inputs is None else str(Path(inputs).resolve())
    workers = [
        _Worker(WorkerSpec(str(p), threads, batch, seq_len, spinning, verify_digest, src, input_limit))
        for p in paths
    ]
    times: list[list[float]] = [[] for _ in paths]  # every timed (warm) run
    rounds: list[list[float]] = [[] for _ in paths]  # per round: median of the block's warm runs
    try:
        with Progress(disable=not progress, transient=True, console=Console(stderr=True)) as bar:
            job = bar.add_task("benchmark", total=warmup + runs)
            for i in range(warmup + runs):
                for w, t, r in zip(workers, times, rounds, strict=True):
                    ms = [float(w.ask("run")) for _ in range(block)][1 if block > 1 else 0 :]
                    if i >= warmup:
                        t.extend(ms)
                        r.append(statistics.median(ms))
                bar.advance(job)
        extras = [json.loads(w.ask("stats")) for w in workers]
    finally:
        for w in workers:
            w.close()
    a = _stats(paths[0], times[0], batch, extras[0])
    res = BenchResult(
        batch,
        threads,
        seq_len if is_text and real is None else None,
        runs,
        a,
        spinning=spinning,
        block=block,
        environment=_environment(),
        inputs=real,
    )
    if vs is not None:
        res.b = _stats(paths[1], times[1], batch, extras[1])
        ratios = sorted(x / y for x, y in zip(rounds[0], rounds[1], strict=True))
        res.ratio_p50 = statistics.median(ratios)
        res.ratio_p10 = float(np.percentile(ratios, 10))
        res.ratio_p90 = float(np.percentile(ratios, 90))
    return res


def bench_pairs(
    paths: dict[str, Path],
    pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    *,
    threads: int,
    runs: int,
    warmup: int,
    seq_len: int,
    block: int,
    inputs: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """``bench(a, vs=b)`` at batch 1 for each named pair, as ``{"a_vs_b": result dict}`` without the
    raw per-run times: the one pair harness that ``compress`` and the quickstart report from."""
    out = {}
    for a, b in pairs:
        r = bench(
            paths[a],
            vs=paths[b],
            threads=threads,
            batch=1,
            runs=runs,
            warmup=warmup,
            seq_len=seq_len,
            block=block,
            inputs=inputs,
        ).to_dict()
        for side in (r["a"], r["b"]):
            side.pop("runs_ms", None)
        out[f"{a}_vs_{b}"] = r
    return out


def _environment() -> dict[str, Any]:
    import platform

    import onnxruntime

    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
    }


def plot(result: BenchResult, out: str | Path) -> None:
    """Latency distributions of A (and B) as box plots, with the ratio in the title."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "--plot needs matplotlib (pip install matplotlib); the benchmark itself does not"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [result.a] + ([result.b] if result.b else [])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([s.runs_ms for s in stats], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(stats) + 1), [Path(s.path).name for s in stats])
    ax.set_xlabel(f"latency ms (batch {result.batch}, {result.threads} threads)")
    title = f"p50 {' vs '.join(f'{s.p50_ms:.1f}' for s in stats)} ms"
    if result.ratio_p50 is not None:
        title += f"; ratio {result.ratio_p50:.3f}"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker(WorkerSpec(**json.loads(sys.argv[2])))
