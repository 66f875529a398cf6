"""The quickstart's INT8 parity bar (benchmarks/quickstart_steps.py): per task, and for DeiT a test on
the sample, so that one or two flips in a 16-image smoke sample are not read as a failed export."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def steps():
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(BENCHMARKS))  # quickstart_steps imports its sibling `common`
    try:
        return importlib.import_module("quickstart_steps")
    finally:
        mp.undo()


def test_deit_bar_allows_what_a_small_sample_shows(steps):
    tol = steps.int8_tolerance("deit", 16)
    assert 13 / 16 >= tol.min_top1_agreement > 12 / 16  # 3 flips pass (the smoke showed 2), 4 fail
    assert steps.int8_tolerance("deit", 128).min_top1_agreement == (128 - 13) / 128
    assert tol.max_abs_logit == 2.0 and tol.min_kept_agreement == 0.99


@pytest.mark.parametrize("n", [16, 128, 872])
def test_sst2_bar_stays_a_plain_rate(steps, n):
    assert steps.int8_tolerance("sst2", n).min_top1_agreement == 0.95


def test_allowed_flips_grows_with_the_sample_and_the_rate(steps):
    counts = [steps.allowed_flips(n, 0.05) for n in (1, 16, 64, 128, 500)]
    assert counts == sorted(counts) and counts[1] == 3
    assert steps.allowed_flips(16, 0.0) == 0 and steps.allowed_flips(16, 1.0) == 16
    assert steps.allowed_flips(128, 0.03) < steps.allowed_flips(128, 0.05)
