"""The JSON round trip every training config shares, and the move of old flat files into groups.

Configs are stored in every checkpoint and final output, so a run can be resumed or reproduced
from its directory alone. Unknown keys are an error on load: a typo in a JSON config must not
silently fall back to a default. Configs that were flat and became grouped (#27) keep loading
their old files: :func:`nest_flat` moves each old key into its group before the fields are read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` for a dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON dict as the fields take it (a config that changed its form converts older files here)."""
        return data

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = cls.prepare(data)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        from sttabt_edge.train.checkpoint import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def check_finite(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not (math.isfinite(value) and value >= 0):  # NaN passes every comparison: test it by name
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def nest_flat(
    data: Mapping[str, Any], flat: Mapping[str, tuple[str, str]], groups: Mapping[str, type]
) -> dict[str, Any]:
    """A config dict in either form -> the grouped form: each key of ``flat`` (the old form's,
    -> (group, field)) moves into its group. A field given both flat and grouped is an error, not a
    silent choice; ``groups`` names each group's class for the message."""
    out = {k: v for k, v in data.items() if k not in flat}
    for key, (group, name) in flat.items():
        if key not in data:
            continue
        nested = out.get(group, {})
        if not isinstance(nested, dict):
            raise ValueError(f"{group} must be an object of {groups[group].__name__} fields")
        if name in nested:
            raise ValueError(f"{key} is given twice: flat (the old form) and as {group}.{name}")
        out[group] = {**nested, name: data[key]}
    return out


def split_flat(
    options: Mapping[str, Any],
    flat: Mapping[str, tuple[str, str]],
    top_level: Sequence[str],
    what: str,
    error: type[Exception] = ValueError,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Options by flat name (a CLI's, a recipe's) -> (top-level fields, {group: {field: value}}), each
    key of ``flat`` into its group; any other name is an ``error`` naming the ``what`` options."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if key in flat:
            group, name = flat[key]
            groups.setdefault(group, {})[name] = value
        elif key in top_level:
            top[key] = value
        else:
            known = sorted([*flat, *top_level])
            raise error(f"unknown {what} option {key!r}; expected one of {known}")
    return top, groups


def typed_groups(data: dict[str, Any], groups: Mapping[str, type[JsonConfig]]) -> dict[str, Any]:
    """``data`` with each group given as a dict (JSON) built into its class."""
    return {
        k: (groups[k].from_dict(v) if k in groups and isinstance(v, dict) else v) for k, v in data.items()
    }


def check_groups(owner: object, groups: Mapping[str, type]) -> None:
    for name, group in groups.items():
        if not isinstance(getattr(owner, name), group):
            raise ValueError(f"{name} must be a {group.__name__}, got {getattr(owner, name)!r}")
