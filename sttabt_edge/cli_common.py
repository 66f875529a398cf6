"""What every `sttabt-edge` command shares: one-line errors, input checks, quiet third-party output.

Torch-free on purpose: `run`, `bench` and `info` import this on a device without torch.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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
    r"(torch|torchao|transformers|huggingface_hub|onnx|onnxscript|onnxruntime|onnxslim|timm)(\.|$)"
)
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


def usage_failure(e: UsageError, command_path: str) -> NoReturn:
    """A click usage error as one ``error:`` line naming the command's --help. A group called with
    no arguments has already printed its help (``no_args_is_help``): re-raised, click exits 2 quietly."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e
    where = e.ctx.command_path if e.ctx is not None else command_path
    fail(f"{e.format_message()} (see `{where} --help`)")


@contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Silence third-party warnings, log lines and progress bars for one command (``--verbose``: keep
    them). The env vars are read when huggingface_hub / transformers are first imported, which the
    commands do lazily, inside this context; levels and filters are restored on exit."""
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


# ---- input checks: each runs before any model is loaded -------------------------------------


def check_fraction(name: str, value: float) -> None:
    """A keep ratio / retention: a share of the tokens, in (0, 1]."""
    if not 0.0 < value <= 1.0:
        fail(f"{name} must be in (0, 1] (a fraction of the tokens), got {value:g}")


def check_at_least(name: str, value: int | None, low: int) -> None:
    """Counts (runs, threads, batch sizes, samples); None means 'not given' and passes."""
    if value is not None and value < low:
        fail(f"{name} must be >= {low}, got {value}")


def check_exists(name: str, path: Path | None, kind: str = "path") -> None:
    """An input file or folder the command reads; ``kind``: 'path', 'file' or 'dir'."""
    if path is None:
        return
    ok = {"path": path.exists, "file": path.is_file, "dir": path.is_dir}[kind]()
    if not ok:
        what = {"path": "no such file or folder", "file": "no such file", "dir": "no such folder"}[kind]
        fail(f"{name} {path}: {what}")


def check_batch(batch: str) -> int | str:
    """``--batch``: 'dynamic' or a positive integer (a fixed batch dimension)."""
    if batch == "dynamic":
        return batch
    if not (batch.isdigit() and int(batch) > 0):
        fail(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
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
