"""LiteRT's own log lines off a command's stderr unless ``--verbose``.

ONNX Runtime is quieted through its session options (``log_severity_level``); LiteRT has no such
switch: its C++ runtime writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to
file descriptor 2 whenever an interpreter is created (by this process or by a benchmark worker,
which inherits fd 2). So for the block, fd 2 is held in a temp file and written back without the
known INFO lines: errors and anything else still reach stderr. Python's own ``sys.stderr`` keeps
writing to the terminal meanwhile (progress bars, warnings) when it is the real fd 2.
Torch-free.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from sttabt_edge.cli_common import verbose_mode

LITERT_INFO = re.compile(
    rb"INFO: Created TensorFlow Lite (XNNPACK )?delegate for CPU\."
    rb"|INFO: Initialized TensorFlow Lite runtime\."
)


def _flush() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


def _is_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """Drop LiteRT's INFO lines from fd 2 for the block; nothing changes under ``--verbose``."""
    if verbose_mode():
        yield
        return
    _flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to hold back
        yield
        return
    python_stderr = sys.stderr
    terminal = None
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if _is_fd2(python_stderr):  # Python's writes go on reaching the terminal, as they happen
            terminal = open(os.dup(saved), "w", encoding=python_stderr.encoding, errors="backslashreplace")
            sys.stderr = terminal
        try:
            yield
        finally:
            if terminal is not None:
                terminal.flush()
                sys.stderr = python_stderr
                terminal.close()
            _flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line
                for line in held.read().splitlines(keepends=True)
                if not LITERT_INFO.fullmatch(line.rstrip(b"\r\n"))
            ]
            out = memoryview(b"".join(kept))
            with contextlib.suppress(OSError):
                while out:  # os.write may write less than asked (a pipe)
                    out = out[os.write(2, out) :]
