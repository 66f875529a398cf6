"""Which code produced a result: every results JSON names its commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("sttabt_edge", "export", "runtime", "benchmarks")


def git_commit(root: Path = ROOT) -> str:
    """Short HEAD (with "+dirty" when tracked code differs from it); "unknown" outside a checkout
    (an installed wheel)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--", *CODE_DIRS], cwd=root, capture_output=True
            ).returncode
            != 0
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
