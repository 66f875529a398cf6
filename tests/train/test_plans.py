"""train/plans.py: length-bucketed batches, sharded by rank."""

from __future__ import annotations

import numpy as np
import pytest

from sttabt_edge.train.plans import bucketed_batches, shard

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_bucketing_and_sharding():
    lengths = np.random.default_rng(0).integers(1, 50, 103)
    plan = bucketed_batches(lengths, 8, np.random.default_rng(1), chunk_batches=4)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(103))
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in plan)  # sorted inside each batch
    r0, r1 = shard(plan, 0, 2), shard(plan, 1, 2)
    assert len(r0) == len(r1) == len(plan) // 2
    assert not set(np.concatenate(r0)) & set(np.concatenate(r1))
