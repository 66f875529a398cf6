"""`sttabt-edge train`'s generic checks: the schedule's numbers and the output folder, before the model loads.

The verbs build a TrainConfig from ``--config`` and their options (``cli_train._train_config``);
this checks what NaN or an infinity would slip past (``--epochs inf`` reached the scheduler,
``--lr nan`` trains on NaN) and what only exhausts memory later (``--batch-size 100000``), that the
data is of the model's kind (images for an image model), that an ApproxNet to build fits the
model (config.json) and one to load is an ApproxNet folder, and that ``--out`` is a folder that can
be written and holds none of the inputs. Torch-free, but for ``--amp fp16`` (is there CUDA?).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sttabt_edge.cli_common import MAX_BATCH, check_at_least, check_range, fail
from sttabt_edge.cli_inputs import check_approx_dir, check_approx_shape, check_training_data
from sttabt_edge.cli_outputs import check_output_dir

if TYPE_CHECKING:  # annotations only: the checks stay torch-free
    from sttabt_edge.train.train_config import TrainConfig

MAX_EPOCHS = 10_000.0
MAX_STEPS = 10**9
MAX_LR = 10.0
MAX_WORKERS = 256
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_APPROX = 1024  # ApproxNet width divisor and head count (the runtime contract's bound)
INPUTS = ("model", "data", "eval_data", "config", "approx", "sparse_config")


def check_train_run(cfg: TrainConfig, options: Mapping[str, Any]) -> None:
    """``cfg``: the verb's TrainConfig; ``options``: the verb's own arguments (``dict(locals())``)."""
    optim = cfg.optim
    counts = (
        ("--steps", optim.steps, 0, MAX_STEPS),
        ("--batch-size", optim.batch_size, 1, MAX_BATCH),
        ("eval_batch_size", cfg.eval.batch_size, 1, MAX_BATCH),
        ("--grad-accum", optim.grad_accum, 1, MAX_BATCH),
        ("--max-eval-samples", cfg.eval.max_samples, 0, None),
        ("--num-workers", cfg.data.num_workers, 0, MAX_WORKERS),
        ("--save-every", cfg.run.save_every, 0, None),
        ("--log-every", cfg.run.log_every, 0, None),
        ("--seed", optim.seed, 0, MAX_SEED),
        ("--factor", options.get("factor"), 1, MAX_APPROX),
        ("--heads", options.get("heads"), 0, MAX_APPROX),
    )
    for name, value, low, high in counts:
        check_at_least(name, value, low, high)
    check_range("--epochs", optim.epochs, 0.0, MAX_EPOCHS, low_open=True)
    check_range("--lr", optim.lr, 0.0, MAX_LR, low_open=True)
    for name in ("warmup", "weight_decay", "grad_clip"):
        check_range(name, getattr(optim, name), 0.0, float(MAX_STEPS))
    check_range("--track-weight", options.get("track_weight"), 0.0, 1e6)
    if options.get("factor") is not None:  # `train approx` builds an ApproxNet of the model
        check_approx_shape(
            options["model"], options["factor"], options.get("heads") or None, "--factor / --heads"
        )
    check_approx_dir("--approx", options.get("approx"))
    if optim.amp == "fp16":  # the engine refused it only after the load, below a GradScaler warning
        import torch

        if cfg.device in ("cpu", "mps") or not torch.cuda.is_available():
            fail("--amp fp16 needs a CUDA device (none here); use --amp bf16 on CPU")
    check_training_data(options["model"], options["data"])
    check_training_data(options["model"], options.get("eval_data"), "--eval-data")
    check_output_dir("--out", options["out"], [(f"--{k.replace('_', '-')}", options.get(k)) for k in INPUTS])
