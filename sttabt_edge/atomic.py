"""Atomic file writes: readers see the old file or the new one, never half of one.

The one helper for every writer (checkpoints, trained dirs, ApproxNets, TFLite sidecars,
benchmark results). A temp file ``.<name>.<random>.tmp`` in the same folder is written,
fsynced and ``os.replace``d over the target; a killed write leaves only such a temp file,
which readers ignore and ``train.checkpoint`` cleans up. Imports nothing of the project.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` fills a temp file beside ``path``, which then replaces ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fsync_file(tmp)  # on disk before the rename, so a crash cannot leave an empty file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``path``; on success it replaces ``path`` (old version removed).

    The swap is two renames (old aside, new in). Readers that need a single atomic switch
    use a pointer file instead (see :func:`sttabt_edge.train.checkpoint.save_checkpoint`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def staging(path: Path) -> Iterator[Path]:
    """A temp folder ``.<name>.<random>.tmp`` beside ``path`` where a writer builds a file and its
    companions under their final names; :func:`publish` moves them out. Whatever is left (an error
    or an interrupt before or during ``publish``) is removed with the folder; nothing else is touched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as work:
        yield Path(work)


def publish(work: Path, dest: Path, names: Sequence[str]) -> None:
    """Move ``names`` from the staging folder ``work`` into ``dest`` (same file system): each is
    fsynced first, then renamed in order, so list the file readers look for (the model) last: an
    interruption leaves at most its companions, never a model without them nor half of one."""
    for name in names:
        fsync_file(work / name)
    for name in names:
        os.replace(work / name, dest / name)
    try:  # the renames themselves on disk (not every platform can open a folder)
        fd = os.open(dest, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
