"""train/distributed.py: two gloo processes train the same ApproxNet."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from trainkit import cfg, vit

from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.train.approx import train_approx
from sttabt_edge.train.data import prepare_data

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _ddp_worker(rank: int, port: int, image_dir: str, out: str) -> None:
    import os

    from safetensors.torch import save_file

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    teacher = vit()
    approx = train_approx(
        teacher,
        prepare_data(image_dir, teacher),
        init="random",
        cfg=cfg(steps=3, batch_size=2),
        out=Path(out) / "run",
    )
    save_file({k: v.contiguous() for k, v in approx.state_dict().items()}, f"{out}/rank{rank}.safetensors")


def test_two_process_gloo_ranks_agree(image_dir, tmp_path):
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(port, str(image_dir), str(tmp_path)), nprocs=2, start_method="fork"
    )
    a, b = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    init = build_approxnet(vit(), 4, "random").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], init[k]) for k in a)  # it trained
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 3  # rank 0 logged
