"""Crash-safe training checkpoints: safetensors weights + JSON state, swapped in atomically.

Layout of a run directory::

    RUN/checkpoints/ckpt-000100/   <name>.safetensors per module, trainer.pt, state.json
    RUN/checkpoints/latest         "ckpt-000100" (the only file a reader trusts)

A checkpoint is written into a hidden temp dir beside its final place, renamed into
place, and only then does ``latest`` (replaced with ``os.replace``) point to it. A crash
at any moment leaves ``latest`` naming a complete checkpoint; stale temp dirs and the
``.<name>.*.tmp`` files of a killed atomic write are ignored by readers and removed by the
next save. ``latest`` may only name a ``ckpt-NNNNNN`` folder of the run itself: a pointer
edited to lead elsewhere (``../..``, an absolute path, a symlink) is refused.

Weights are safetensors. Optimizer / scheduler / GradScaler state (tensors, numbers and
lists only) is ``torch.save``d and read back with ``torch.load(weights_only=True)``, so
loading runs no pickled code; a file it refuses, or damaged weights or state, is one
CheckpointMismatchError line.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt_edge import compat
from sttabt_edge.atomic import atomic_dir, atomic_write_text  # noqa: F401 (re-exported: train's writers use them)
from sttabt_edge.errors import CheckpointMismatchError, InputError, one_line
from sttabt_edge.models.loading import load_state_dict_checked, pickle_refusal, read_safetensors
from sttabt_edge.train.hf import hf_config

CKPT_ROOT = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.json"
TRAINER_FILE = "trainer.pt"
FORMAT = "sttabt-train-checkpoint"
CKPT_NAME = re.compile(r"ckpt-\d{6,}")
_MAX_POINTER_BYTES = 256


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a state dict (copies: safetensors refuses tensors that share storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_module(module: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(module_tensors(module), str(path), metadata=dict(metadata or {}))


def load_module(module: nn.Module, path: Path) -> None:
    """Strict load; key or shape differences raise CheckpointMismatchError."""
    device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    try:
        state = read_safetensors(path, device=str(device))
    except InputError as e:
        raise CheckpointMismatchError(str(e)) from e
    load_state_dict_checked(module, state, what=str(path))


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: Mapping[str, nn.Module],
    trainer_state: Mapping[str, Any],
    state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune all but ``keep`` newest.

    ``state`` (JSON-able) must hold a ``fingerprint``: what the checkpoint belongs to.
    """
    root = Path(run_dir) / CKPT_ROOT
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:
        for name, module in modules.items():
            save_module(module, tmp / f"{name}.safetensors", {"format": FORMAT, "step": str(step)})
        torch.save(dict(trainer_state), tmp / TRAINER_FILE)
        payload = {"format": FORMAT, "step": step, "modules": sorted(modules), **state}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, final.name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    ckpts = sorted(p for p in root.glob("ckpt-*") if p.is_dir())
    for p in ckpts[: max(0, len(ckpts) - max(keep, 1))]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".ckpt-*"):  # temp dirs of an interrupted save
        shutil.rmtree(p, ignore_errors=True)
    for folder in (root, root.parent):  # the run's own atomic writes (latest, report.json ...) cut short
        remove_stale_temps(folder)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that atomic writes leave when killed mid-write.

    Only while this process is the run's one writer (a checkpoint save): a live write's temp
    file would go too."""
    gone = [p for p in folder.glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when the run has none.

    The pointer must name a ``ckpt-NNNNNN`` folder directly inside the run's checkpoints
    folder: anything else (``../x``, an absolute path, a symlink out) is refused, never followed."""
    root = Path(run_dir) / CKPT_ROOT
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    with open(pointer, "rb") as f:
        raw = f.read(_MAX_POINTER_BYTES + 1)
    name = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_POINTER_BYTES or not CKPT_NAME.fullmatch(name):
        raise CheckpointMismatchError(
            f"{pointer} names {name[:60]!r}, not a checkpoint folder of this run (ckpt-NNNNNN); refusing to follow it"
        )
    path = root / name
    if path.is_symlink() or path.resolve().parent != root.resolve():
        raise CheckpointMismatchError(f"{path} leads outside {root}; refusing to follow it")
    if not (path / STATE_FILE).is_file():
        raise CheckpointMismatchError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointMismatchError(
            f"{ckpt / STATE_FILE}: unreadable checkpoint state ({one_line(e)})"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointMismatchError(
            f"{ckpt / STATE_FILE} holds a {type(state).__name__}, not a checkpoint state"
        )
    if state.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{ckpt} is not a training checkpoint (format={state.get('format')!r})")
    return state


def check_fingerprint(saved: Mapping[str, Any], expected: Mapping[str, Any], where: Path) -> None:
    """What the checkpoint was trained for (model class, sizes, method ...) must match this run."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs this run {expected.get(k)!r}"
        for k in sorted(set(saved) | set(expected))
        if saved.get(k) != expected.get(k)
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {where} was written for a different model or method: "
            + "; ".join(diffs)
            + ". Use another --out directory, or the same model/method options as the interrupted run."
        )


def load_checkpoint(
    ckpt: Path, modules: Mapping[str, nn.Module], fingerprint: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load module weights in place; return (trainer_state, state.json). Mismatches raise."""
    state = read_state(ckpt)
    check_fingerprint(state.get("fingerprint", {}), fingerprint, ckpt)
    missing = sorted(set(modules) - set(state.get("modules", [])))
    if missing:
        raise CheckpointMismatchError(f"checkpoint {ckpt} has no weights for {missing}")
    for name, module in modules.items():
        load_module(module, ckpt / f"{name}.safetensors")
    try:
        trainer_state = torch.load(ckpt / TRAINER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (pickled code), EOFError / RuntimeError (truncated zip) ...
        raise CheckpointMismatchError(f"{ckpt / TRAINER_FILE}: {pickle_refusal(e)}") from e
    if not isinstance(trainer_state, dict):
        raise CheckpointMismatchError(
            f"{ckpt / TRAINER_FILE} holds a {type(trainer_state).__name__}, not trainer state"
        )
    return trainer_state, state


def model_fingerprint(kind: str, model: nn.Module) -> dict[str, Any]:
    """The model-shape part of a run's fingerprint; resume refuses a checkpoint whose fingerprint differs."""
    c = hf_config(model)
    return {
        "kind": kind,
        "model_class": compat.class_name(model),
        "layers": int(c.num_hidden_layers),
        "hidden": int(c.hidden_size),
    }
