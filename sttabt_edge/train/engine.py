"""The one training loop every trainer uses (ApproxNet distillation, concrete, baselines).

Single process on CPU by default. Under ``torchrun --nproc_per_node N`` (RANK /
WORLD_SIZE / LOCAL_RANK in the environment) it joins a ``torch.distributed`` group (gloo
on CPU, nccl on GPU), wraps the objective in DDP and gives each rank its own batches of
the shared plan (see train/data.py). Nothing else is distributed by hand.

Reproducibility: at every optimizer step the global torch RNG is reseeded from
(seed, step, rank), so dropout and the concrete noise depend on the step number only,
and the batch of each micro-step is a pure function of its index. With the optimizer,
scheduler and weights restored, a resumed run computes exactly what an uninterrupted
one does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from sttabt_edge.errors import InputError
from sttabt_edge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sttabt_edge.train.config import TrainConfig
from sttabt_edge.train.data import BatchSource
from sttabt_edge.train.distributed import Dist, TensorBatch, batch_stream, to_device

METRICS_FILE = "metrics.jsonl"
StepLogs = dict[str, torch.Tensor]


class Objective(nn.Module):
    """What a trainer optimises. The engine calls ``forward`` (through DDP when distributed)."""

    def forward(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, StepLogs]:
        """-> (loss, detached scalars to log, e.g. {"retention": ...})."""
        raise NotImplementedError

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """AdamW groups; each may set its own "lr" and "weight_decay"."""
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights a checkpoint holds (frozen teachers are not among them)."""
        raise NotImplementedError

    def on_step(self, step: int, total: int) -> None:
        """Set train/eval modes and phases for ``step``; must depend on ``step`` only (resume)."""
        self.train()


# wall-clock fields of metrics.jsonl: they differ between otherwise identical (resumed) runs
TIMING_KEYS = frozenset({"step_time", "ms_per_view", "train_s"})


def decay_groups(
    params: Mapping[str, nn.Parameter], lr: float, weight_decay: float, clip: str = "main"
) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on matrices only (never on biases, norms or thresholds).

    ``clip`` names the set whose gradient norm is clipped together (see :func:`clip_sets`).
    """
    live = {n: p for n, p in params.items() if p.requires_grad}
    decay = [p for p in live.values() if p.dim() >= 2]
    other = [p for p in live.values() if p.dim() < 2]
    groups = (
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "clip": clip},
        {"params": other, "lr": lr, "weight_decay": 0.0, "clip": clip},
    )
    return [g for g in groups if g["params"]]


def clip_sets(param_groups: Sequence[Mapping[str, Any]]) -> dict[str, list[nn.Parameter]]:
    """Parameters by the groups' "clip" key (default "main"), each set clipped to its own norm.

    A global norm would let one exploding part (e.g. gradients reaching the ApproxNet through
    log-importances of near-zero tokens) scale every other gradient down to Adam's epsilon.
    """
    sets: dict[str, list[nn.Parameter]] = {}
    for g in param_groups:
        sets.setdefault(str(g.get("clip", "main")), []).extend(g["params"])
    return sets


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay; never exactly 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def step_seed(seed: int, step: int, rank: int) -> int:
    """Per-step torch seed: dropout / concrete noise are a function of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# ---- logging -------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (rank 0): one JSON object per log step or evaluation."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled:  # --resume on a fresh --out starts there (it used to fail at the first log line)
            path.parent.mkdir(parents=True, exist_ok=True)
        if enabled and resume_step is not None and path.is_file():  # drop lines past the checkpoint
            keep = [
                ln
                for ln in path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        elif enabled:
            path.write_text("", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def reduce_mean(values: dict[str, float], dist: Dist) -> dict[str, float]:
    """Average logged scalars over ranks (same keys on every rank)."""
    if dist.world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return {k: float(v) / dist.world for k, v in zip(keys, t.tolist(), strict=True)}


def progress_bar(enabled: bool) -> Any:
    """Rich bar on stderr (stdout stays clean for the CLI's JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def short_info(logs: Mapping[str, float]) -> str:
    keys = [k for k in ("loss", "retention", "attn_kl", "lr") if k in logs]
    return " ".join(f"{k} {logs[k]:.4g}" for k in keys)


# ---- the loop ------------------------------------------------------------------------------------


@dataclass
class FitResult:
    step: int  # optimizer steps done (including those before a resume)
    total_steps: int
    finished: bool  # False when ``stop_after`` ended the run early
    seconds: float  # wall time of this call's steps (not counting eval and checkpoints)
    step_time: float  # mean seconds per optimizer step in this call
    last_logs: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)


def autocast(cfg: TrainConfig, device: torch.device) -> Any:
    if cfg.optim.amp == "none":
        return nullcontext()
    if cfg.optim.amp == "fp16" and device.type != "cuda":
        raise InputError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.optim.amp == "bf16" else torch.float16)


def fit(
    objective: Objective,
    source: BatchSource,
    cfg: TrainConfig,
    run_dir: Path,
    dist: Dist,
    fingerprint: Mapping[str, Any],
    evaluate: Callable[[], dict[str, float]] | None = None,
    resume: bool = False,
    name: str = "train",
) -> FitResult:
    """Optimise ``objective`` on ``source`` for ``cfg``'s schedule, checkpointing into ``run_dir``."""
    run_dir = Path(run_dir)
    objective.to(dist.device)
    total = cfg.optim.total_steps(source.local_batches(dist.world))
    hard_limit = min(total, cfg.run.stop_after) if cfg.run.stop_after else total
    # fused: one kernel for all params (the single-tensor loop costs ~0.5 s/step on MiniLM's embeddings)
    opt = torch.optim.AdamW(
        objective.param_groups(cfg), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True
    )
    warm = cfg.optim.warmup_steps(total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total))
    scaler = torch.amp.GradScaler("cuda") if cfg.optim.amp == "fp16" else None
    start = _restore(run_dir, objective, opt, sched, scaler, fingerprint, resume)
    log = MetricsLog(run_dir / METRICS_FILE, dist.is_main, start if resume else None)
    model: nn.Module = objective
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)
    params = clip_sets(opt.param_groups)
    batches = batch_stream(
        source, dist, start * cfg.optim.grad_accum, hard_limit * cfg.optim.grad_accum, cfg.data.num_workers
    )
    window: dict[str, float] = {}
    n_window, busy, done_here, last_logs, eval_metrics = 0, 0.0, 0, {}, {}

    def save(step: int) -> None:
        if dist.is_main:
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler else {},
            }
            meta = {
                "fingerprint": dict(fingerprint),
                "config": cfg.to_dict(),
                "total_steps": total,
                "rng": {
                    "scheme": "torch.manual_seed(step_seed(seed, step, rank)) per step",
                    "seed": cfg.optim.seed,
                },
            }
            save_checkpoint(
                run_dir, step, objective.checkpoint_modules(), state, meta, cfg.run.keep_checkpoints
            )
        dist.barrier()

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate() if (evaluate is not None and dist.is_main) else {}
        if metrics:
            log.write({"step": step, "eval": metrics, "train_s": busy})  # train_s: this call's step time
        dist.barrier()
        return metrics

    with progress_bar(cfg.run.progress and dist.is_main) as bar:
        job = bar.add_task(name, total=total, completed=start, info="")
        for step in range(start, hard_limit):
            objective.on_step(step, total)  # untimed: may run a one-off calibration (the hard-phase snap)
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(cfg.optim.seed, step, dist.rank))
            lr = opt.param_groups[0]["lr"]
            logs = _one_step(model, batches, cfg, dist, opt, scaler, params)
            sched.step()
            busy += time.perf_counter() - t0
            done_here += 1
            for k, v in logs.items():
                window[k] = window.get(k, 0.0) + v
            n_window += 1
            end = step + 1 == hard_limit
            if (step + 1) % max(1, cfg.run.log_every) == 0 or end:
                last_logs = reduce_mean({k: v / n_window for k, v in window.items()}, dist)
                last_logs["lr"] = lr
                step_time = busy / done_here  # mean seconds per optimizer step in this call
                views = (
                    cfg.optim.batch_size * cfg.optim.grad_accum * dist.world
                )  # images / sequences per step
                log.write(
                    {
                        "step": step + 1,
                        **last_logs,
                        "step_time": step_time,
                        "ms_per_view": 1e3 * step_time / views,
                    }
                )
                bar.update(job, completed=step + 1, info=short_info(last_logs))
                window, n_window = {}, 0
            else:
                bar.update(job, completed=step + 1)
            if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < total:
                eval_metrics = run_eval(step + 1)
            if (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0) or end:
                save(step + 1)
    finished = hard_limit == total
    if finished:
        eval_metrics = run_eval(total)
    return FitResult(hard_limit, total, finished, busy, busy / max(1, done_here), last_logs, eval_metrics)


def _no_sync(model: nn.Module) -> AbstractContextManager[None]:
    """DDP's no_sync (no gradient all-reduce for this micro-batch); only a run with world > 1 accumulates
    unsynced, and there ``fit`` wrapped the objective in DDP."""
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    return model.no_sync()


def _one_step(
    model: nn.Module,
    batches: Iterator[TensorBatch],
    cfg: TrainConfig,
    dist: Dist,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    params: dict[str, list[nn.Parameter]],
) -> dict[str, float]:
    """grad_accum micro-batches, clipping, one optimizer step; returns the step's mean logs."""
    sums: dict[str, float] = {}
    for micro in range(cfg.optim.grad_accum):
        inputs, labels = to_device(next(batches), dist.device)
        sync = dist.world == 1 or micro == cfg.optim.grad_accum - 1
        with nullcontext() if sync else _no_sync(model), autocast(cfg, dist.device):
            loss, logs = model(inputs, labels)
        loss = loss.float() / cfg.optim.grad_accum
        (scaler.scale(loss) if scaler else loss).backward()
        for k, v in {"loss": loss.detach() * cfg.optim.grad_accum, **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v) / cfg.optim.grad_accum
    if scaler:
        scaler.unscale_(opt)
    if cfg.optim.grad_clip > 0:
        for name, group in params.items():
            key = "grad_norm" if name == "main" else f"grad_norm_{name}"
            sums[key] = float(torch.nn.utils.clip_grad_norm_(group, cfg.optim.grad_clip))
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    if scaler is None and not math.isfinite(sums["loss"]):  # fp16 skips such steps itself
        raise FloatingPointError(
            f"non-finite training loss {sums}; lower the learning rate or check the data"
        )
    return sums


def _restore(
    run_dir: Path,
    objective: Objective,
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: Any,
    fingerprint: Mapping[str, Any],
    resume: bool,
) -> int:
    """Load the latest checkpoint when resuming; refuse to overwrite one otherwise. -> first step."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    if not resume:
        raise InputError(
            f"{run_dir} already holds a training checkpoint ({ckpt.name}); pass --resume "
            "(resume=True) to continue it, or use another output directory"
        )
    trainer_state, state = load_checkpoint(ckpt, objective.checkpoint_modules(), fingerprint)
    opt.load_state_dict(trainer_state["optimizer"])
    sched.load_state_dict(trainer_state["scheduler"])
    if scaler is not None and trainer_state.get("scaler"):
        scaler.load_state_dict(trainer_state["scaler"])
    return int(state["step"])
