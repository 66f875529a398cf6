"""DeiT-Tiny on imagenet-sample: distil a ÷4 ApproxNet (interpolate init), train STTABT (concrete) at
several retention targets, plus LTP / top-k (trained the same way) and ToMe / untrained back-tracking
baselines; top-1 vs retention on held-out images.

imagenet-sample has one image per class, so it is split in half with the fixed, documented
``split_half`` (SHA-256 of seed:file name; seed 0): 500 images for distillation and training
(augmented: RandomResizedCrop + flip), the other 500 for evaluation only. Writes
benchmarks/results/train_deit_<budget>.json and .png and prints the equivalent
``sttabt-edge train`` commands and the wall time.

    python benchmarks/train_deit.py --budget small    # <= 15 min on 2 cores
    python benchmarks/train_deit.py --budget full     # hours on 2 cores; the numbers to report
    python benchmarks/train_deit.py --budget smoke    # a few minutes: checks the pipeline only
"""

from __future__ import annotations

from common import SHARED, quiet_third_party
from sweep_cli import Driver, main

from sttabt_edge.train.config import ApproxConfig, SparseTrainConfig, TrainConfig
from sttabt_edge.train.sweep import SweepPlan

# a concrete step at batch 16 costs ~4 DeiT-Tiny passes over 16 images (teacher, ApproxNet, student, backward)
BUDGETS = {
    "smoke": dict(targets=[0.5], approx_steps=3, sparse_steps=2, batch=8, max_eval=32, calib=16),
    "small": dict(
        targets=[0.7, 0.5, 0.35], approx_steps=40, sparse_steps=12, batch=16, max_eval=200, calib=16
    ),
    "full": dict(
        targets=[0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        approx_steps=3000,
        sparse_steps=1000,
        batch=32,
        max_eval=0,
        calib=64,
    ),
}


def plan_for(budget: str, methods: list[str] | None) -> SweepPlan:
    b = BUDGETS[budget]
    common = dict(batch_size=b["batch"], log_every=10, eval_batch_size=50, progress=True)
    plan = SweepPlan(
        targets=b["targets"],
        approx_cfg=TrainConfig.of(
            lr=5e-4, steps=b["approx_steps"], warmup=0.05, max_eval_samples=100, **common
        ),
        sparse_cfg=TrainConfig.of(lr=1e-5, steps=b["sparse_steps"], warmup=0.1, **common),
        acfg=ApproxConfig(factor=4, init="interpolate"),
        scfg=SparseTrainConfig(threshold_lr=0.05, hard_frac=0.2, calib_samples=b["calib"]),
        max_eval=b["max_eval"],
        eval_batch_size=50,
    )
    if methods:
        plan.methods = methods
    return plan


DRIVER = Driver(
    name="train_deit",
    doc=__doc__,
    model=SHARED / "models" / "deit-tiny-imagenet",
    data=SHARED / "data" / "imagenet-sample",
    budgets=BUDGETS,
    plan_for=plan_for,
    title="DeiT-Tiny, imagenet-sample held-out half ({budget} budget)",
    eval_name="imagenet-sample held-out half",
    unit="images",
    calib_help="inputs the retention level (thresholds / knobs) is calibrated on; labels are never used. "
    "train: the training half (augmented crops); eval: unlabeled held-out images (transductive)",
    header={
        "split": "split_half(seed=0): first half of the SHA-256(seed:name) ranking trains, the rest is held out"
    },
)

if __name__ == "__main__":
    quiet_third_party()
    main(DRIVER)
