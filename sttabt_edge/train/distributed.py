"""torch.distributed glue: join the torchrun group, pick the device, shard batches by rank.

Only ``torch.distributed`` itself is used (gloo on CPU, nccl on GPU); without RANK /
WORLD_SIZE in the environment everything runs as one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeAlias

import torch
import torch.distributed as tdist

from sttabt_edge.train.config import TrainConfig
from sttabt_edge.train.data import BatchSource

# a batch as the engine receives it: BatchSource's numpy Batch (train.data) as tensors; labels None: unlabeled
TensorBatch: TypeAlias = tuple[dict[str, torch.Tensor], "torch.Tensor | None"]

# ---- distribution -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(cfg.device)
    return torch.device(f"cuda:{local_rank}") if dev.type == "cuda" and dev.index is None else dev


@contextmanager
def distributed(cfg: TrainConfig) -> Iterator[Dist]:
    """Join the torchrun group if the environment names one (and leave it afterwards)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg, local_rank)
    created = False
    if world > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    try:
        if tdist.is_initialized():
            yield Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, device)
        else:
            yield Dist(0, 1, 0, device)
    finally:
        if created:
            tdist.destroy_process_group()


# ---- data loading --------------------------------------------------------------------------------


class _RankBatches(torch.utils.data.Dataset):
    """Rank-local batch k -> tensors; DataLoader workers may prepare them in parallel."""

    def __init__(self, source: BatchSource, rank: int, world: int):
        self.source, self.rank, self.world = source, rank, world

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> TensorBatch:
        inputs, labels = self.source.get(k, self.rank, self.world)
        return {n: torch.from_numpy(v) for n, v in inputs.items()}, (
            None if labels is None else torch.from_numpy(labels)
        )


def _identity(batch: TensorBatch) -> TensorBatch:
    return batch


def batch_stream(
    source: BatchSource, dist: Dist, first: int, last: int, workers: int
) -> Iterator[TensorBatch]:
    """Micro-batches ``first`` .. ``last - 1`` of this rank, in order.

    The iterator is created here, and with its own generator: a DataLoader iterator draws a
    seed when it starts, which must not shift the global RNG stream of whichever step
    happens to start it (a resumed run starts it at another step).
    """
    loader = torch.utils.data.DataLoader(
        _RankBatches(source, dist.rank, dist.world),
        batch_size=None,
        sampler=range(first, last),
        num_workers=workers,
        # batch_size=None: collate_fn gets one item, where the stub only knows batching (a list)
        collate_fn=_identity,  # type: ignore[arg-type]
        pin_memory=dist.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)


def to_device(batch: TensorBatch, device: torch.device) -> TensorBatch:
    inputs, labels = batch
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}, (
        None if labels is None else labels.to(device, non_blocking=True)
    )
