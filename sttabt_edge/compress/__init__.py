"""``sttabt-edge compress``: an accuracy-budgeted token-pruning compressor (see pipeline.py)."""

from typing import Any

from sttabt_edge.compress.config import CompressConfig

__all__ = ["CompressConfig", "run_compress"]


def run_compress(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Lazy: importing the config must not import torch (the CLI validates before loading)."""
    from sttabt_edge.compress.pipeline import run_compress as run

    return run(*args, **kwargs)
