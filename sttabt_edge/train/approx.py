"""Train an ApproxNet: distil the frozen dense model's attention (and hidden states) into it.

The ApproxNet only has to predict attention maps well enough for back-tracking, so the
loss is attention KL + hidden-state MSE (:func:`approx_distill_loss`); labels are not
needed. Its quality is reported as the attention KL on held-out data, before and after.

Output directory: the ApproxNet itself (``ApproxNet.save``: model.safetensors +
approxnet.json, loadable with ``ApproxNet.load``), plus report.json, metrics.jsonl,
train_config.json and checkpoints/ for ``resume``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.defaults import APPROX_FACTOR
from sttabt_edge.method.approxnet import ApproxNet, build_approxnet, teacher_targets
from sttabt_edge.method.distill import DistillWeights, approx_distill_loss, attention_kl
from sttabt_edge.train.checkpoint import atomic_write_text, model_fingerprint
from sttabt_edge.train.config import ApproxConfig, ApproxInit, TrainConfig
from sttabt_edge.train.data import Batch, TrainData
from sttabt_edge.train.distributed import Dist, distributed
from sttabt_edge.train.engine import Objective, StepLogs, decay_groups, fit
from sttabt_edge.train.hf import hf_config

REPORT_FILE = "report.json"


class ApproxObjective(Objective):
    """Distillation loss of ``approx`` against the frozen ``teacher`` (eval mode, no grad)."""

    def __init__(self, teacher: nn.Module, approx: ApproxNet, weights: DistillWeights):
        super().__init__()
        self.teacher = teacher
        self.approx = approx
        self.teacher_parts = compat.model_parts(teacher)
        self.weights = weights

    def forward(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, StepLogs]:
        tt = teacher_targets(self.teacher_parts, inputs)
        out = self.approx(inputs)
        loss, parts = approx_distill_loss(
            out,
            tt.attentions,
            tt.hidden_states,
            tt.logits,
            tt.pad_mask,
            list(self.approx.transfers),
            self.weights,
            self.teacher_parts.num_prefix_tokens,
        )
        return loss, parts

    def on_step(self, step: int, total: int) -> None:
        self.approx.train()
        self.teacher.eval()

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        return decay_groups(dict(self.approx.named_parameters()), cfg.optim.lr, cfg.optim.weight_decay)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"approx": self.approx}


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """requires_grad=False and eval mode for the block; the caller's flags and mode come back after."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module.eval()
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)
        module.train(was_training)


@torch.no_grad()
def heldout_attention_kl(
    teacher: nn.Module, approx: ApproxNet, batches: Sequence[Batch], device: torch.device | str = "cpu"
) -> float:
    """KL(teacher || ApproxNet) of attention rows over held-out batches (mean over layers, heads, real rows).

    Batches are weighted by their real query rows, so the value does not depend on batching.
    """
    parts = compat.model_parts(teacher)
    was = approx.training
    approx.eval()
    total, rows = 0.0, 0.0
    for np_inputs, _ in batches:
        inputs = {k: torch.as_tensor(v).to(device) for k, v in np_inputs.items()}
        tt = teacher_targets(parts, inputs)
        n = float(tt.pad_mask.sum())
        total += float(attention_kl(tt.attentions, approx(inputs).attentions, tt.pad_mask)) * n
        rows += n
    approx.train(was)
    return total / rows if rows else float("nan")


def approx_fingerprint(teacher: nn.Module, acfg: ApproxConfig) -> dict[str, Any]:
    return {
        **model_fingerprint("approx", teacher),
        "heads": acfg.heads or int(hf_config(teacher).num_attention_heads),
        "factor": acfg.factor,
        "init": acfg.init,
    }


def train_approx(
    teacher: nn.Module,
    data: TrainData,
    factor: int = APPROX_FACTOR,
    init: ApproxInit = "interpolate",
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    acfg: ApproxConfig | None = None,
    resume: bool = False,
) -> ApproxNet:
    """Distil an ApproxNet (widths / ``factor``) from ``teacher`` on ``data.train`` (labels unused).

    ``init``: "interpolate" (teacher weights area-resized; the good start for ViT) or "random".
    ``acfg`` overrides factor/init and sets the loss weights. Writes ``out`` (a temp dir
    when None) and returns the trained ApproxNet in eval mode. ``report.json`` holds the
    held-out attention KL before and after training when ``data.eval`` is given.
    """
    cfg = cfg or TrainConfig()
    acfg = acfg or ApproxConfig(factor=factor, init=init)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="approx-") as tmp:
            return train_approx(teacher, data, cfg=cfg, out=tmp, acfg=acfg, resume=resume)
    out = Path(out)
    weights = DistillWeights(
        acfg.attn_weight,
        acfg.hidden_weight,
        acfg.embed_weight,
        acfg.logits_weight,
        acfg.temperature,
        acfg.track_weight,
    )
    with distributed(cfg) as dist, frozen(teacher):
        teacher.to(dist.device)
        approx = build_approxnet(teacher, acfg.factor, acfg.init, seed=cfg.optim.seed, heads=acfg.heads)
        source = data.training_source(cfg)
        held = data.eval_batches(cfg.eval.batch_size, cfg.eval.max_samples, cfg.data.max_length)
        # before fit() restores a checkpoint, ``approx`` is the deterministic init (seeded), so a resumed
        # run measures the same "before" as the run it continues (its report may never have been written)
        kl_before = _maybe_kl(teacher, approx, held, dist)
        objective = ApproxObjective(teacher, approx, weights)

        def evaluate() -> dict[str, float]:
            return (
                {"heldout_attention_kl": heldout_attention_kl(teacher, approx, held, dist.device)}
                if held
                else {}
            )

        res = fit(
            objective,
            source,
            cfg,
            out,
            dist,
            approx_fingerprint(teacher, acfg),
            evaluate,
            resume,
            name=f"approx /{acfg.factor}",
        )
        approx.eval()
        if dist.is_main:
            _write_outputs(out, approx, cfg, acfg, res, kl_before)
        dist.barrier()
    return approx


def _maybe_kl(teacher: nn.Module, approx: ApproxNet, held: Sequence[Batch], dist: Dist) -> float | None:
    return heldout_attention_kl(teacher, approx, held, dist.device) if held and dist.is_main else None


def _write_outputs(
    out: Path, approx: ApproxNet, cfg: TrainConfig, acfg: ApproxConfig, res: Any, kl_before: float | None
) -> None:
    cfg.save(out / "train_config.json")
    acfg.save(out / "approx_config.json")
    if res.finished:  # stopped early (stop_after): the checkpoint is the output; resume to finish
        approx.save(out)
    report_path = out / REPORT_FILE
    old = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report = {
        "factor": acfg.factor,
        "init": acfg.init,
        "step": res.step,
        "steps": res.total_steps,
        "finished": res.finished,
        "heldout_attention_kl_before": kl_before
        if kl_before is not None
        else old.get("heldout_attention_kl_before"),
        "heldout_attention_kl": res.eval.get("heldout_attention_kl"),
        "final_train_logs": res.last_logs,
        "step_time_s": res.step_time,
    }
    atomic_write_text(report_path, json.dumps(report, indent=2, sort_keys=True))
