"""train/config.py: TrainConfig and SparseTrainConfig round trips and their checks."""

from __future__ import annotations

import json

import pytest
from trainkit import cfg

from sttabt_edge.train.config import LtpSettings, SparseTrainConfig, SttabtSettings, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_configs_round_trip(tmp_path):
    c = cfg(amp="bf16", seed=3)
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"lr": 1.0, "lrr": 2.0})
    with pytest.raises(ValueError, match="amp"):
        TrainConfig.of(amp="fp8")
    assert (
        SparseTrainConfig.from_dict(SparseTrainConfig(target_retention=0.3).to_dict()).target_retention == 0.3
    )


# the "sparse_config" of /work/runs/deit_fixed_medium_r0.5/sttabt.json, a run trained before #27 grouped the
# reducer settings (the old flat form), copied verbatim
OLD_FLAT_SPARSE = {
    "approx_lr_scale": 1.0,
    "calib_samples": 64,
    "concrete": "ste",
    "extra": {},
    "freeze_main": False,
    "hard_frac": 0.9,
    "head_reduce": "mean",
    "init": "calibrate",
    "init_schedule": "constant",
    "kd_temperature": 2.0,
    "kd_weight": 1.0,
    "ltp_min_keep": 1,
    "ltp_temperature": 0.1,
    "main_params": "all",
    "min_keep": 4,
    "p": 0.1,
    "retention_control": "lagrangian",
    "retention_dual_lr": 1.0,
    "retention_weight": 10.0,
    "schedule": "geometric",
    "snap": True,
    "target_retention": 0.5,
    "task_weight": 0.0,
    "temperature": 0.5,
    "threshold_lr": 0.0,
    "train_approx": False,
}


def test_sparse_config_groups_the_reducer_settings_and_reads_the_old_flat_form(tmp_path):
    """#27: the reducer settings travel as typed groups (SttabtSettings, LtpSettings); a file in the old flat
    form (``concrete``, ``ltp_temperature``, ...) loads into the same config, and saves grouped."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**OLD_FLAT_SPARSE, "concrete": "official", "ltp_min_keep": 2, "p": 0.2}))
    old = SparseTrainConfig.load(path)
    assert old.sttabt == SttabtSettings(concrete="official", temperature=0.5, min_keep=4, p=0.2)
    assert old.ltp == LtpSettings(temperature=0.1, min_keep=2)
    assert old.hard_frac == 0.9 and old.retention_control == "lagrangian" and not old.train_approx
    as_default = SparseTrainConfig.from_dict(OLD_FLAT_SPARSE)
    assert as_default.sttabt == SttabtSettings() and as_default.ltp == LtpSettings()
    saved = old.to_dict()
    assert "concrete" not in saved and saved["sttabt"]["concrete"] == "official"
    assert saved["ltp"] == {"temperature": 0.1, "min_keep": 2}
    assert SparseTrainConfig.from_dict(saved) == old  # the grouped form round-trips
    # the CLI's path: the file checked field by field (old keys by their group's rules), then --concrete on top
    from sttabt_edge.cli_config_checks import SPARSE_RULES, read_config
    from sttabt_edge.cli_train import _sparse_config

    assert read_config("--sparse-config", path, SPARSE_RULES, "SparseTrainConfig")["ltp_min_keep"] == 2
    assert _sparse_config(path, {"concrete": None}) == old
    assert _sparse_config(path, {"concrete": "ste"}).sttabt == SttabtSettings(p=0.2)
    with pytest.raises(ValueError, match="given twice"):
        SparseTrainConfig.from_dict({"p": 0.2, "sttabt": {"p": 0.3}})
    with pytest.raises(ValueError, match="unknown SttabtSettings keys"):
        SparseTrainConfig.from_dict({"sttabt": {"pp": 0.3}})
    with pytest.raises(ValueError, match="sttabt must be a SttabtSettings"):
        SparseTrainConfig(sttabt={"concrete": "ste"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        LtpSettings(temperature=float("nan"))
