"""Typed reducer specs: one frozen config per reducer kind, its JSON form and its capabilities.

A spec is a reducer without its weights (an STTABT ApproxNet is passed to the factory, see
:func:`sttabt_edge.reducers.factory.build`), so user options, export metadata and trained
output dirs all describe a reducer the same way, and a reducer describes itself with
``reducer.spec()`` instead of being recognised by its name and attributes.

``to_metadata()`` is ``{"name": kind, <every field>}`` (tuples as lists); ``from_metadata``
ignores keys that are not fields, so a container may add its own (``"approx"`` in a
trained dir's ``sttabt.json``). Each spec validates itself once, in ``__post_init__``: whoever
holds a spec (an export request, a training config, compress's choice, a reducer's ``spec()``)
holds a valid one. Pure data: nothing is built here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar, overload

from sttabt_edge.defaults import default_keep_ratio
from sttabt_edge.method.backtrack import DEFAULT_MIN_KEEP, HEAD_REDUCES, NESTINGS, HeadReduce, Nesting

ConcreteKind: TypeAlias = Literal["ste", "official"]
Target: TypeAlias = Literal["onnx", "tflite"]
Ratio: TypeAlias = float | tuple[float, ...]  # one keep ratio, or one per layer

CONCRETE_KINDS: tuple[ConcreteKind, ...] = ("ste", "official")
TARGETS: tuple[Target, ...] = ("onnx", "tflite")

S = TypeVar("S", bound="ReducerSpec")


@overload
def as_ratio(v: float | Sequence[float]) -> Ratio: ...


@overload
def as_ratio(v: Any) -> Ratio | None: ...


def as_ratio(v: Any) -> Ratio | None:
    """A scalar stays a float; a sequence (list, tuple, tensor) becomes a tuple of floats: specs compare equal."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return tuple(float(x) for x in v)


def as_counts(v: Any) -> int | tuple[int, ...] | None:
    """An int stays an int; a sequence becomes a tuple of ints."""
    if v is None:
        return None
    if isinstance(v, int):
        return int(v)
    return tuple(int(x) for x in v)


def _choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _fractions(keep_ratio: Ratio | None) -> None:
    """Keep ratios are shares of the tokens: each in (0, 1] (NaN is none)."""
    ratios = () if keep_ratio is None else (keep_ratio,) if isinstance(keep_ratio, float) else keep_ratio
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"keep ratios must be in (0, 1] (a fraction of the tokens), got {keep_ratio}")


@dataclass(frozen=True)
class ReducerOptions:
    """What a command's options say about a reducer (``--keep-ratio``, ``--nesting``, ``--min-keep``),
    before its kind takes those that apply to it (:func:`spec_from_options`): the one place
    where options become a spec, so no caller assembles per-kind arguments."""

    keep_ratio: Ratio | None = None  # one or one per layer (training's schedules); None: the kind's default
    nesting: Nesting = "union"
    min_keep: int = DEFAULT_MIN_KEEP
    num_layers: int | None = None  # the model's; LTP's untrained thresholds are one per layer

    def ratio(self, kind: str) -> Ratio:
        return default_keep_ratio(kind) if self.keep_ratio is None else as_ratio(self.keep_ratio)


@dataclass(frozen=True)
class ReducerSpec:
    """Base of the specs. ``kind`` is the reducer's name (``Reducer.name``, metadata ``method``)."""

    kind: ClassVar[str] = "base"
    targets: ClassVar[tuple[Target, ...]] = ()  # export targets whose graph can run this reducer

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass in __post_init__

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_metadata(cls: type[S], meta: Mapping[str, Any]) -> S:
        name = meta.get("name", cls.kind)
        if name != cls.kind:
            raise ValueError(f"{cls.__name__} reads {cls.kind!r} metadata, got name={name!r}")
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)

    def exportable(self, target: str) -> bool:
        """Whether an ``onnx`` / ``tflite`` graph can compute this reducer (model-specific limits,
        e.g. top-k on text, are checked by the exporters)."""
        return target in self.targets

    def keep_schedule(self, num_layers: int) -> list[float] | None:
        """Per-layer keep ratios of a ratio-scheduled reducer (the export's ``keep_schedule``), else None."""
        return None

    @classmethod
    def from_options(cls: type[S], options: ReducerOptions) -> S:
        """The spec a command's options describe (each kind takes the options it has)."""
        return cls()

    def for_inference(self: S) -> S:
        """The spec of the reducer's inference form (LTP: hard masks); most kinds have one form."""
        return self


def _schedule(keep_ratio: Ratio | None, num_layers: int) -> list[float] | None:
    if keep_ratio is None:
        return None
    ratios = [keep_ratio] * num_layers if isinstance(keep_ratio, float) else list(keep_ratio)
    if len(ratios) != num_layers:
        raise ValueError(f"keep_ratio schedule has {len(ratios)} entries, model has {num_layers} layers")
    return ratios


@dataclass(frozen=True)
class DenseSpec(ReducerSpec):
    """The unpruned model."""

    kind: ClassVar[str] = "dense"
    targets: ClassVar[tuple[Target, ...]] = ("onnx", "tflite")


@dataclass(frozen=True)
class SttabtSpec(ReducerSpec):
    """STTABT back-tracking: top-k ratios (``keep_ratio``) or learned concrete threshold logits
    (``thresholds``, with ``concrete`` kind and ``temperature``; None: the kind's default).
    ``nesting`` only applies to top-k; ``min_keep`` is the short-input floor of both."""

    kind: ClassVar[str] = "sttabt"
    targets: ClassVar[tuple[Target, ...]] = ("onnx", "tflite")
    keep_ratio: Ratio | None = None
    thresholds: tuple[float, ...] | None = None
    concrete: ConcreteKind = "ste"
    temperature: float | None = None
    p: float = 0.1
    head_reduce: HeadReduce = "mean"
    nesting: Nesting = "union"
    min_keep: int = DEFAULT_MIN_KEEP

    def __post_init__(self) -> None:
        self._set("keep_ratio", as_ratio(self.keep_ratio))
        _fractions(self.keep_ratio)
        th = as_ratio(self.thresholds)
        self._set("thresholds", None if th is None else (th,) if isinstance(th, float) else th)
        if (self.keep_ratio is None) == (self.thresholds is None):
            raise ValueError("give exactly one of keep_ratio (top-k) or thresholds (concrete)")
        _choice("nesting", self.nesting, NESTINGS)
        _choice("head_reduce", self.head_reduce, HEAD_REDUCES)
        _choice("concrete", self.concrete, CONCRETE_KINDS)
        if int(self.min_keep) < (1 if self.thresholds is None else 0):  # concrete floors may be 0
            raise ValueError(f"min_keep must be >= 1, got {self.min_keep}")
        self._set("min_keep", int(self.min_keep))
        self._set("p", float(self.p))
        self._set("temperature", None if self.temperature is None else float(self.temperature))

    @classmethod
    def from_options(cls, options: ReducerOptions) -> SttabtSpec:  # top-k; thresholds come trained
        return cls(keep_ratio=options.ratio(cls.kind), nesting=options.nesting, min_keep=options.min_keep)

    def keep_schedule(self, num_layers: int) -> list[float] | None:
        return _schedule(self.keep_ratio, num_layers)


@dataclass(frozen=True)
class TopkSpec(ReducerSpec):
    """EViT-style top-k by CLS attention after each layer of ``prune_layers`` (None: every layer)."""

    kind: ClassVar[str] = "topk"
    targets: ClassVar[tuple[Target, ...]] = ("onnx",)
    keep_ratio: Ratio = 0.7
    prune_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self._set("keep_ratio", as_ratio(self.keep_ratio))
        _fractions(self.keep_ratio)
        pl = as_counts(self.prune_layers)
        self._set("prune_layers", (pl,) if isinstance(pl, int) else pl)

    @classmethod
    def from_options(cls, options: ReducerOptions) -> TopkSpec:
        return cls(keep_ratio=options.ratio(cls.kind))

    def keep_schedule(self, num_layers: int) -> list[float] | None:
        return _schedule(self.keep_ratio, num_layers)


@dataclass(frozen=True)
class LtpSpec(ReducerSpec):
    """Learned Token Pruning: threshold per layer (a scalar needs ``num_layers``); ``soft``: the
    sigmoid mask in mask mode (None: when training)."""

    kind: ClassVar[str] = "ltp"
    targets: ClassVar[tuple[Target, ...]] = ("onnx",)
    thresholds: Ratio = 0.0
    num_layers: int | None = None
    temperature: float = 0.1
    min_keep: int = 1
    soft: bool | None = None

    def __post_init__(self) -> None:
        self._set("thresholds", as_ratio(self.thresholds))
        self._set("temperature", float(self.temperature))
        self._set("min_keep", int(self.min_keep))

    @classmethod
    def from_options(cls, options: ReducerOptions) -> LtpSpec:  # thresholds 0 (keep all) until calibrated
        return cls(num_layers=options.num_layers)

    def for_inference(self) -> LtpSpec:
        return self.replace(soft=False)


@dataclass(frozen=True)
class TomeSpec(ReducerSpec):
    """Token merging: exactly one of ``r`` (merges per layer) or ``keep_ratio`` (see ``tome_schedule``)."""

    kind: ClassVar[str] = "tome"
    targets: ClassVar[tuple[Target, ...]] = ("onnx",)
    r: int | tuple[int, ...] | None = None
    keep_ratio: Ratio | None = None

    def __post_init__(self) -> None:
        self._set("r", as_counts(self.r))
        self._set("keep_ratio", as_ratio(self.keep_ratio))
        _fractions(self.keep_ratio)
        if (self.r is None) == (self.keep_ratio is None):
            raise ValueError("give exactly one of r or keep_ratio")

    @classmethod
    def from_options(cls, options: ReducerOptions) -> TomeSpec:
        return cls(keep_ratio=options.ratio(cls.kind))


SPECS: dict[str, type[ReducerSpec]] = {
    s.kind: s for s in (DenseSpec, SttabtSpec, TopkSpec, LtpSpec, TomeSpec)
}


def spec_class(name: str) -> type[ReducerSpec]:
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown reducer {name!r}; choose one of {', '.join(SPECS)}") from None


def make_spec(name: str, **options: Any) -> ReducerSpec:
    """``make_spec("topk", keep_ratio=0.5)``: a spec from user options (CLI flags, configs)."""
    cls = spec_class(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise TypeError(f"bad arguments for reducer {name!r}: {err}") from err


def spec_from_options(name: str, options: ReducerOptions) -> ReducerSpec:
    """``spec_from_options("topk", ReducerOptions(keep_ratio=0.5))``: a command's options as a spec."""
    return spec_class(name).from_options(options)


def spec_from_metadata(meta: Mapping[str, Any]) -> ReducerSpec:
    """Inverse of ``spec.to_metadata()`` for any kind (dispatch on ``meta["name"]``)."""
    return spec_class(str(meta["name"])).from_metadata(meta)


def exportable_kinds(target: str) -> tuple[str, ...]:
    return tuple(k for k, s in SPECS.items() if target in s.targets)
