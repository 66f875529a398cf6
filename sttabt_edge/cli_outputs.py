"""What a command writes: checked before any work starts, never onto its own inputs, atomic.

A command names its outputs (``--out``, ``--json``, ``--plot``) and its inputs (model, data,
reference, ...). Before anything loads, every output is checked: the nearest existing folder
above it is writable (missing folders are created when it is written), a file is not a folder and
a folder is not a file; no output is, or lies inside, one of the inputs (symlinks and hard
links resolved: ``os.path.samefile``), and no two outputs are the same file. Files are then
written to a temp file beside the target and renamed over it (``os.replace``), so a reader, or a
failed write, never sees half a file. Torch-free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sttabt_edge.cli_common import fail

InputPath = str | os.PathLike[str] | None  # a path, an alias or hub id (not a path here), or not given
Inputs = Iterable[tuple[str, InputPath]]  # (option name, input)


def _existing(inputs: Inputs) -> list[tuple[str, Path]]:
    """The inputs that are paths on this machine (an alias or a hub id is not)."""
    out = []
    for name, value in inputs:
        if value is None:
            continue
        path = Path(value).expanduser()
        if path.exists():
            out.append((name, path))
    return out


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symlinks resolved."""
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _same(a: Path, b: Path) -> bool:
    """The same file: one path a symlink or hard link of the other, or both resolving alike."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _clash(option: str, path: Path, inputs: list[tuple[str, Path]]) -> None:
    for name, source in inputs:
        if _same(path, source):
            fail(f"{option} {path} is the command's input {name}; writing it would destroy the input")
        if source.is_dir() and path.exists() and _inside(path, source):
            fail(f"{option} {path} is a file inside the input {name} {source}; choose a path outside it")


def _check_folder(option: str, path: Path, itself: bool = False) -> None:
    """The nearest existing folder above ``path`` (``itself``: or ``path``) is a writable folder;
    missing ones are created when the output is written."""
    ancestor = path.absolute() if itself else path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        fail(f"{option} {path}: {ancestor} is a file, not a folder")
    if not _can_create_in(ancestor):
        fail(f"{option} {path}: folder {ancestor} is not writable")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, tried with a hidden temp file removed at once:
    access(2) tells root yes on /proc, /sys and other file systems that refuse new files (a
    ``--json /proc/x.json`` used to fail with a traceback after the work)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".sttabt-edge-write-check.", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    with suppress(OSError):
        os.unlink(name)
    return True


def check_output_file(
    option: str, path: Path, inputs: Inputs = (), suffixes: Iterable[str] | None = None
) -> None:
    """``path`` can be written as a file without touching any input: see the module docstring.
    ``suffixes``: the extensions the command can write (lower case, with the dot)."""
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file path")
    allowed = list(suffixes or ())
    if allowed and path.suffix.lower() not in allowed:
        fail(f"{option} {path}: the file name must end in {' or '.join(allowed)}")
    _check_folder(option, path)
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"{option} {path}: the file exists and is not writable")
    _clash(option, path, _existing(inputs))


def with_companions(name: str, model: Path | None) -> list[tuple[str, InputPath]]:
    """An exported model as a command's input, with the files the runtime reads beside it (sidecar,
    tokenizer, external data): an output onto one of those would break the model as surely."""
    if model is None:
        return [(name, None)]
    from sttabt_edge.runtime.modelfile import companion_files

    return [(name, model), *((f"{name}'s {what}", path) for what, path in companion_files(Path(model)))]


def check_not_input(option: str, path: Path, inputs: Inputs) -> None:
    """A file a command writes beside its main output (a sidecar) is none of the inputs."""
    _clash(option, path, _existing(inputs))


def check_output_dir(option: str, path: Path, inputs: Inputs = ()) -> None:
    """``path`` can be created (or reused) as a folder that holds none of the inputs' files."""
    if path.exists() and not path.is_dir():
        fail(f"{option} {path} is a file; give a folder path")
    _check_folder(option, path, itself=True)
    for name, source in _existing(inputs):
        if _same(path, source) or (source.is_dir() and _inside(path, source)):
            fail(f"{option} {path} is inside the input {name} {source}; the run would write into it")


def check_distinct(outputs: Iterable[tuple[str, Path | None]]) -> None:
    """No two outputs of one command are the same file (the second write would replace the first)."""
    seen: list[tuple[str, Path]] = []
    for name, path in outputs:
        if path is None:
            continue
        for other, before in seen:
            if _same(path, before):
                fail(f"{name} {path} is also {other}; give them different paths")
        seen.append((name, path))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` with the same suffix (writers that pick a format by suffix:
    matplotlib, Pillow); on success it replaces ``path``, on failure it is removed. Missing folders
    above ``path`` are created (:func:`check_output_file` made sure they can be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    except OSError as e:  # checked up front; a folder that changed since is still one line
        fail(f"cannot write {path}: {e.strerror or e}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            os.chmod(tmp, _mode(path))  # mkstemp's 0600 would make a report unreadable to others
            os.replace(tmp, path)
        except OSError as e:  # the target replaced by a folder since the check, say
            fail(f"cannot write {path}: {e.strerror or e}")
    finally:
        if tmp.exists():
            tmp.unlink()


def _mode(path: Path) -> int:
    """The permissions ``path`` has, or a new file would get (0666 less the umask)."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_output(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temp file that then replaces ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_output(path: Path, text: str) -> None:
    write_output(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
