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

``state.json`` records a sha256 per file of the checkpoint and one over its own content, and
resume checks them before anything is parsed: a bit flipped inside tensor data loads without
error, so only a digest catches it. Checkpoints written before digests (``format``
``sttabt-train-checkpoint``) still resume, with a warning that their files are unchecked.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
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
FORMAT = "sttabt-train-checkpoint"  # safetensors metadata, and state.json before digests
SEALED_FORMAT = "sttabt-train-checkpoint/2"  # state.json with a digest per file
DIGESTS = "digests"
STATE_DIGEST = "state_digest"
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
        write_state(tmp, {"step": step, "modules": sorted(modules), **state})
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, final.name)
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _files(state: Mapping[str, Any]) -> list[str]:
    return [f"{name}.safetensors" for name in state.get("modules", [])] + [TRAINER_FILE]


def _state_digest(state: Mapping[str, Any]) -> str:
    """sha256 of the state's canonical JSON without this digest (whitespace is not content)."""
    body = {k: v for k, v in state.items() if k != STATE_DIGEST}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_state(ckpt: Path, state: Mapping[str, Any]) -> None:
    """Write ``state.json`` sealed: a digest of every file the checkpoint holds (its modules'
    weights and trainer state, already written into ``ckpt``) and one over itself."""
    payload = {k: v for k, v in state.items() if k not in (DIGESTS, STATE_DIGEST)}
    payload["format"] = SEALED_FORMAT
    payload[DIGESTS] = {name: _sha256(ckpt / name) for name in _files(payload)}
    payload = json.loads(json.dumps(payload, default=str))  # what a reader will see
    payload[STATE_DIGEST] = _state_digest(payload)
    (ckpt / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))


def _check_digests(ckpt: Path, state: Mapping[str, Any]) -> None:
    """Every file of a sealed checkpoint hashes to what ``state.json`` recorded when it was written."""
    if state.get("format") == FORMAT:
        warnings.warn(
            f"{ckpt} was written before checkpoint digests: its files cannot be checked", stacklevel=3
        )
        return
    recorded = state.get(DIGESTS)
    digests: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    missing = [n for n in _files(state) if n not in digests]
    if missing:
        raise CheckpointMismatchError(f"{ckpt / STATE_FILE} records no digest for {missing}")
    for name in _files(state):
        try:
            actual = _sha256(ckpt / name)
        except OSError as e:
            raise CheckpointMismatchError(f"{ckpt / name}: cannot read it ({one_line(e)})") from e
        if actual != digests[name]:
            raise CheckpointMismatchError(
                f"{ckpt / name}: digest mismatch, the file was corrupted or changed after the checkpoint "
                "was written; resume from an earlier checkpoint or start over"
            )


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
    if state.get("format") not in (FORMAT, SEALED_FORMAT):
        raise CheckpointMismatchError(f"{ckpt} is not a training checkpoint (format={state.get('format')!r})")
    if state["format"] == SEALED_FORMAT and state.get(STATE_DIGEST) != _state_digest(state):
        raise CheckpointMismatchError(
            f"{ckpt / STATE_FILE}: digest mismatch, the checkpoint state was corrupted or changed after it was written"
        )
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
    """Load module weights in place; return (trainer_state, state.json). Mismatches, and files that
    do not hash to their recorded digests, raise before anything is parsed."""
    state = read_state(ckpt)
    check_fingerprint(state.get("fingerprint", {}), fingerprint, ckpt)
    missing = sorted(set(modules) - set(state.get("modules", [])))
    if missing:
        raise CheckpointMismatchError(f"checkpoint {ckpt} has no weights for {missing}")
    _check_digests(ckpt, state)
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
