"""train/sweep.py: a sweep end to end on a tiny ViT, its CLI commands, unreachable targets recorded."""

from __future__ import annotations

import pytest
from trainkit import cfg, vit

from sttabt_edge.train.config import SparseTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _tiny_sweep(image_dir, tmp_path, **plan):
    """A sweep of a saved tiny ViT on ``image_dir`` with 2-step trainings; ``plan`` overrides SweepPlan
    fields. Returns (plan, results)."""
    from sttabt_edge.train.config import ApproxConfig
    from sttabt_edge.train.sweep import SweepPlan, run_sweep

    model_dir = tmp_path / "vit"
    vit().save_pretrained(model_dir)
    fields = dict(
        approx_cfg=cfg(steps=2),
        sparse_cfg=cfg(steps=2),
        max_eval=8,
        acfg=ApproxConfig(factor=4, heads=None, init="random"),  # all 4 heads: the reachable levels below
        scfg=SparseTrainConfig(calib_samples=8),
    )
    sweep_plan = SweepPlan(**{**fields, **plan})
    return sweep_plan, run_sweep(model_dir, image_dir, tmp_path / "work", sweep_plan, log=lambda s: None)


def test_sweep_end_to_end(image_dir, tmp_path):
    from sttabt_edge.train.sweep import plot_curves

    _, res = _tiny_sweep(image_dir, tmp_path, targets=[0.5])
    assert [p["method"] for p in res["points"]] == ["concrete", "ltp", "topk", "tome", "sttabt-topk"]
    assert all(0 < p["retention"] < 0.9 and p["num_samples"] == 8 for p in res["points"])
    assert res["approx"]["heldout_attention_kl"] > 0 and len(res["commands"]) == 4
    plot_curves(res, tmp_path / "curve.png", "tiny")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_sweep_commands_name_the_calibration_and_init_schedule(tmp_path):
    from sttabt_edge.train.sweep import SweepPlan, cli_commands

    plan = SweepPlan(targets=[0.3], methods=["concrete", "ltp"])
    plain = cli_commands(tmp_path / "m", tmp_path / "d", tmp_path / "w", plan)
    assert not any("--calib-on" in c or "--init-schedule" in c for c in plain)
    plan.calib_on_eval, plan.scfg = True, plan.scfg.replace(init_schedule="shared")
    cmds = cli_commands(tmp_path / "m", tmp_path / "d", tmp_path / "w", plan)
    assert all("--calib-on eval" in c for c in cmds[1:])
    assert "--init-schedule shared" in cmds[1] and "--init-schedule" not in cmds[2]  # concrete only


def test_sweep_records_unreachable_targets(image_dir, tmp_path):
    from sttabt_edge.train.sweep import run_sweep

    plan, res = _tiny_sweep(
        image_dir,
        tmp_path,
        targets=[0.05],  # below both floors: concrete's always-kept tokens, ToMe's half-per-layer merging
        methods=["concrete", "tome"],
        approx_cfg=cfg(steps=1),
    )
    model_dir = tmp_path / "vit"
    assert [(u["method"], u["target"]) for u in res["unreachable"]] == [("concrete", 0.05)]
    assert "outside what the STTABT thresholds can reach" in res["unreachable"][0]["reason"]
    assert not (tmp_path / "work" / "concrete-0.05" / "sttabt.json").exists()
    (tome,) = res["points"]
    assert tome["method"] == "tome" and not tome["target_reachable"] and tome["calib_retention"] > 0.2
    # 17 tokens, one keep ratio for every layer, union nesting: retention moves in coarse steps
    # (each step of k adds a token to every layer); 0.5 is within REACH_TOL of one of them
    plan.approx_dir, plan.targets, plan.methods = tmp_path / "work" / "approx", [0.5], ["sttabt-topk"]
    again = run_sweep(model_dir, image_dir, tmp_path / "work2", plan, log=lambda s: None)
    assert again["approx"]["dir"] == str(plan.approx_dir) and not (tmp_path / "work2" / "approx").exists()
    assert again["points"][0]["target_reachable"] and "train approx" not in " ".join(again["commands"])
    assert isinstance(again["points"][0]["keep_ratio"], float)  # one ratio for every layer, as exported
