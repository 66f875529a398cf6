"""What every `sttabt-edge` command shares: one-line errors, input checks, quiet third-party output.

Torch-free on purpose: `run`, `bench` and `info` import this on a device without torch.
"""

from __future__ import annotations

import logging
import math
import os
import re
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:  # the click that TyperGroup is built on (typer >= 0.2x: its vendored copy)
    from typer._click import Context
    from typer._click.exceptions import UsageError

# Loggers that print at import or per call, none of it about the user's model: torchao's
# "Failed to load ..._C_*.so" (kernels for GPUs this machine lacks), torch's _pytree
# deprecation notices, transformers' advisory warnings, onnxscript's rewriter notes.
NOISY_LOGGERS = (
    "torchao",
    "torch.utils._pytree",
    "torch.onnx",
    "transformers",
    "onnxscript",
    "huggingface_hub",
)
NOISY_MODULES = (
    r"(torch|torchao|transformers|huggingface_hub|onnx|onnxscript|onnxruntime|onnxslim|timm|PIL)(\.|$)"
)
# Sanity bounds on sizes a user types: far above any real use, far below what exhausts memory or
# threads before the first check inside (a batch of 100000 asked for 112 GiB).
MAX_BATCH = 4096
MAX_THREADS = 1024
MAX_SEQ_LEN = 65_536  # tokens: the runtime contract's largest position table
# Whether this command runs under `sttabt-edge --verbose` (set for the command by quiet_third_party).
_VERBOSE: ContextVar[bool] = ContextVar("sttabt_edge_cli_verbose", default=False)
# What a damaged or foreign weights file raises from deep inside a loader: safetensors' header
# parser and torch's weights-only unpickler (by class name: importing them would pull torch into the
# torch-free commands), or anything else raised inside torch.load (an empty file: EOFError, a text
# file: KeyError) or safetensors.
WEIGHTS_ERRORS = frozenset({"SafetensorError", "UnpicklingError"})
WEIGHTS_READERS = re.compile(r"[/\\](torch[/\\]serialization|safetensors[/\\][^/\\]+)\.py$")
# typer >= 0.2x vendors click (typer._click), older typer uses click itself: its UsageError is the
# base of typer.BadParameter either way (and `click` may not be installed at all).
if not TYPE_CHECKING:
    UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def fail(msg: str) -> NoReturn:
    """The one way a command reports bad input: ``error: <msg>`` on stderr, exit status 2."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def error_line(msg: str, verbose: bool = False) -> str:
    """An exception's message as one line; the rest (e.g. a key-by-key mismatch list) with --verbose."""
    lines = [line for line in str(msg).strip().splitlines() if line.strip()] or ["(no message)"]
    if verbose or len(lines) == 1:
        return "\n".join(lines)
    return f"{lines[0]} ({len(lines) - 1} more lines with --verbose)"


class ErrorHandlingGroup(TyperGroup):
    """Turns an sttabt-edge error (SttabtError, incl. the runtime's InputError) or a bad option that
    reaches the top into ``error: <one line>`` and exit 2, never a traceback or a usage panel."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        """The top level's own options (``sttabt-edge --bogus``) are parsed here, outside invoke."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as e:
            usage_failure(e, info_name or "sttabt-edge")

    def invoke(self, ctx: Context) -> Any:
        from sttabt_edge.errors import SttabtError

        verbose = bool((ctx.params or {}).get("verbose"))
        try:
            return super().invoke(ctx)
        except SttabtError as e:
            fail(error_line(str(e), verbose))
        except UsageError as e:  # unknown verbs, bad values, missing options of a subcommand
            usage_failure(e, ctx.command_path)
        except Exception as e:
            if not weights_failure(e):
                raise
            from sttabt_edge.errors import one_line

            detail = error_line(str(e), verbose) if verbose else one_line(e, 160)
            fail(
                "cannot read the model's weights: the file is damaged or not a weights file "
                f"({type(e).__name__}: {detail})"
            )


def weights_failure(e: BaseException) -> bool:
    """Whether ``e`` is a weights file that cannot be read, rather than a bug (a traceback)."""
    if type(e).__name__ in WEIGHTS_ERRORS:
        return True
    frames = traceback.extract_tb(e.__traceback__)
    return any(WEIGHTS_READERS.search(f.filename) for f in frames)


def usage_failure(e: UsageError, command_path: str) -> NoReturn:
    """A click usage error as one ``error:`` line naming the command's --help. A group called with
    no arguments has already printed its help (``no_args_is_help``): re-raised, click exits 2 quietly."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e
    where = e.ctx.command_path if e.ctx is not None else command_path
    message = " ".join(e.format_message().split())  # click lists a missing choice's values on lines
    fail(f"{message} (see `{where} --help`)")


@contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Silence third-party warnings, log lines and progress bars for one command (``--verbose``: keep
    them). The env vars are read when huggingface_hub / transformers are first imported, which the
    commands do lazily, inside this context; levels and filters are restored on exit."""
    token = _VERBOSE.set(verbose)
    try:
        with _quiet(verbose):
            yield
    finally:
        _VERBOSE.reset(token)


def verbose_mode() -> bool:
    """Whether the running command was given ``sttabt-edge --verbose``."""
    return _VERBOSE.get()


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    if verbose:  # the exporter shows litert-torch's own output only when its logger is at DEBUG
        export_log = logging.getLogger("sttabt_edge.export")
        level = export_log.level
        export_log.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            export_log.setLevel(level)
        return
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=NOISY_MODULES)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def require_torch(command: str) -> None:
    """`show` and `verify` run the PyTorch model; a runtime-only install says so in one line."""
    import importlib.util

    try:
        missing = importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):  # a broken or deliberately blocked torch
        missing = True
    if missing:
        fail(
            f"`sttabt-edge {command}` runs the PyTorch model and needs torch (pip install torch, then "
            "sttabt-edge[export]); `run` and `bench` work without it"
        )


# ---- input checks: each runs before any model is loaded -------------------------------------


def check_fraction(name: str, value: float) -> None:
    """A keep ratio / retention: a share of the tokens, in (0, 1]."""
    if not 0.0 < value <= 1.0:
        fail(f"{name} must be in (0, 1] (a fraction of the tokens), got {value:g}")


def check_at_least(name: str, value: int | None, low: int, high: int | None = None) -> None:
    """Counts (runs, threads, batch sizes, samples), at most ``high`` if given; None means 'not
    given' and passes."""
    if value is not None and value < low:
        fail(f"{name} must be >= {low}, got {value}")
    if value is not None and high is not None and value > high:
        fail(f"{name} must be <= {high}, got {value}")


def check_range(
    name: str, value: float | None, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """A real number in [low, high] (an open end excluded): finite, so NaN and inf never pass a
    comparison that NaN makes false. None means 'not given' and passes."""
    if value is None:
        return
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not (math.isfinite(value) and inside):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        fail(f"{name} must be a finite number in {lo}{low:g}, {high:g}{hi}, got {value:g}")


def check_exists(name: str, path: Path | None, kind: str = "path") -> None:
    """An input file or folder the command reads; ``kind``: 'path', 'file' or 'dir'."""
    if path is None:
        return
    ok = {"path": path.exists, "file": path.is_file, "dir": path.is_dir}[kind]()
    if not ok:
        what = {"path": "no such file or folder", "file": "no such file", "dir": "no such folder"}[kind]
        fail(f"{name} {path}: {what}")


def check_batch(batch: str) -> Literal["dynamic"] | int:
    """``--batch``: 'dynamic' or a positive integer (a fixed batch dimension)."""
    if batch == "dynamic":
        return "dynamic"
    if not (batch.isascii() and batch.isdigit() and 0 < int(batch) <= MAX_BATCH):
        fail(f"--batch must be 'dynamic' or an integer in [1, {MAX_BATCH}], got {batch!r}")
    return int(batch)


def approx_choice(value: str | None, keyword: str, command: str, meaning: str) -> Path | None:
    """``--approx DIR`` or ``--approx <keyword>`` (-> None); a missing one is an error naming both."""
    if value is None:
        fail(
            f"{command} needs --approx: DIR (an ApproxNet from `sttabt-edge train approx`) or "
            f"'{keyword}' ({meaning})"
        )
    if value == keyword:
        return None
    path = Path(value)
    if not (path / "approxnet.json").is_file():
        fail(
            f"--approx {value}: not an ApproxNet folder (no approxnet.json); pass DIR from "
            f"`sttabt-edge train approx` or '{keyword}'"
        )
    return path
