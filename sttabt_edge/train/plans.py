"""Batch plans: which examples form each batch of an epoch, as a seeded function of the epoch.

A plan is a list of index arrays; the batch sources (data.py) fill them. The same generator gives
the same plan, so a resumed run sees exactly the batches an uninterrupted one would, and DDP ranks
take disjoint shares of one plan (:func:`shard`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sttabt_edge.errors import InputError


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A permutation of range(n) cut into batches (the last one may be smaller)."""
    perm = rng.permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk_batches: int = 50
) -> list[np.ndarray]:
    """Length bucketing: shuffle, sort by length within chunks of ``chunk_batches`` batches,
    cut into batches, shuffle the batches. Padding shrinks, randomness stays."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * max(1, chunk_batches)
    out: list[np.ndarray] = []
    for i in range(0, len(perm), chunk):
        part = perm[i : i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def shard(plan: Sequence[np.ndarray], rank: int, world: int) -> list[np.ndarray]:
    """Rank r's batches r, r+W, ...; the tail is dropped so every rank gets the same count."""
    usable = len(plan) // world * world
    if usable == 0:
        raise InputError(
            f"{len(plan)} batches cannot be shared by {world} processes; use a smaller batch size"
        )
    return list(plan[rank:usable:world])
