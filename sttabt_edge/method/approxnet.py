"""ApproxNet: a narrow copy of the model that predicts its attention maps cheaply.

Same class, depth and head count as the teacher; hidden and FFN widths divided by
``factor``. Attention maps therefore have the teacher's shape (L, B, H, N, N) and can
be back-tracked directly (:class:`sttabt_edge.reducers.sttabt.SttabtReducer`). Our own
layer loop (:func:`sttabt_edge.method.sparse.dense_forward`) runs it, so the compat
layer and adapter work unchanged. Linear ``transfers`` lift its hidden states to the
teacher's width for hidden-state distillation (:mod:`sttabt_edge.method.distill`).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt_edge import compat
from sttabt_edge.compat import ModelParts
from sttabt_edge.errors import (
    CheckpointMismatchError,
    InputError,
    ModelNotFoundError,
    UnsupportedModelError,
    one_line,
)
from sttabt_edge.method.flops import model_flops
from sttabt_edge.method.sparse import dense_counts, dense_forward
from sttabt_edge.models.adapter import classify, embed

INITS = ("random", "interpolate")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "approxnet.json"
FORMAT = "sttabt-approxnet"
APPROX_SCOPE = "/approx_maps/"  # name prefix of the ApproxNet's nodes in exported ONNX graphs


def approx_config(teacher_config: Any, factor: int, heads: int | None = None) -> Any:
    """Deep copy of an HF config with hidden and intermediate widths divided by ``factor``.

    Depth and labels are kept. ``heads`` (default: the teacher's) may be a divisor of the
    teacher's head count: approx head j then predicts the mean map of teacher heads
    [j g, (j+1) g), g = H / heads. Back-tracking averages heads anyway, so fewer heads
    predict the same mean map with an H/heads times cheaper softmax.
    """
    if not isinstance(factor, int) or factor < 1:
        raise InputError(f"factor must be a positive int, got {factor!r}")
    hidden, teacher_heads = int(teacher_config.hidden_size), int(teacher_config.num_attention_heads)
    heads = teacher_heads if heads is None else heads
    if not isinstance(heads, int) or heads < 1 or teacher_heads % heads:
        raise InputError(f"heads must divide the teacher's {teacher_heads} attention heads, got {heads!r}")
    if hidden % factor or (hidden // factor) % heads:
        raise InputError(
            f"factor {factor} does not fit hidden_size {hidden} with {heads} heads: hidden_size / factor "
            f"= {hidden / factor:g} must be an integer divisible by the head count; pick a factor dividing "
            f"{hidden // heads} (the per-head width)"
        )
    inter = int(teacher_config.intermediate_size) // factor
    if inter < 1:
        raise InputError(f"factor {factor} leaves no FFN width (intermediate_size {teacher_config.intermediate_size})")
    cfg = copy.deepcopy(teacher_config)
    cfg.hidden_size = hidden // factor
    cfg.intermediate_size = inter
    cfg.num_attention_heads = heads
    cfg._attn_implementation = "eager"
    return cfg


def group_heads(attn: torch.Tensor, heads: int) -> torch.Tensor:
    """Teacher maps (..., H, N, N) -> (..., heads, N, N): mean over groups of H / heads consecutive heads."""
    h = attn.shape[-3]
    if h == heads:
        return attn
    if h % heads:
        raise ValueError(f"{h} heads cannot be grouped into {heads}")
    return attn.unflatten(-3, (heads, h // heads)).mean(dim=-3)


@dataclass
class ApproxOutput:
    attentions: torch.Tensor  # (L, B, H, N, N) probabilities
    hidden_states: list[torch.Tensor]  # L+1 entries (B, N, C_small): embeddings, then each layer
    logits: torch.Tensor  # (B, num_labels)
    pad_mask: torch.Tensor  # (B, N) bool, True = real token


@dataclass
class TeacherTargets:
    attentions: torch.Tensor  # (L, B, H, N, N)
    hidden_states: list[torch.Tensor]  # L+1 entries (B, N, C)
    logits: torch.Tensor  # (B, K)
    pad_mask: torch.Tensor  # (B, N)


class MapsPass(nn.Module):
    """The back-tracking maps pass, run as a module call so that the exported graph's nodes
    are named ``/approx_maps/...``: INT8 quantization finds and keeps them fp32 by that prefix
    (``sttabt_edge.export.quantize``), because token choice is what quantization noise hurts most."""

    def forward(self, parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        x, pad = embed(parts, inputs)  # (B, N, c), (B, N)
        return dense_forward(parts, x, pad, need_attn=True, prefix_only_top=True).attentions


class ApproxNet(nn.Module):
    """Narrow HF model of the teacher's class + linear transfers to the teacher's width."""

    def __init__(self, model: nn.Module, factor: int, init: str, teacher_hidden_size: int):
        super().__init__()
        self.model = model
        self.parts: ModelParts = compat.model_parts(model)
        self.factor = factor
        self.init = init
        self.teacher_hidden_size = teacher_hidden_size
        c = self.parts.hidden_size
        self.transfers = nn.ModuleList(nn.Linear(c, teacher_hidden_size) for _ in range(len(self.parts.layers) + 1))
        self.approx_maps = MapsPass()  # no parameters: names the exported nodes (APPROX_SCOPE)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ApproxOutput:
        x, pad = embed(self.parts, inputs)  # (B, N, c), (B, N)
        res = dense_forward(self.parts, x, pad, need_attn=True, need_hidden=True)
        logits = classify(self.parts, res.prefix_hidden)
        return ApproxOutput(torch.stack(res.attentions), res.hidden_states, logits, pad)

    @property
    def heads(self) -> int:
        """Attention heads (the teacher's, or fewer: see :func:`approx_config`)."""
        return self.parts.num_heads

    def attentions(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Predicted attention maps for back-tracking (the AttentionSource protocol).

        L maps (B, H, N, N), except the top layer's (B, H, P, N): back-tracking reads only
        the rows of the prefix tokens there, so its other query rows (and their
        projections and MLP) are never computed. :meth:`forward` gives the full maps.
        """
        return self.approx_maps(self.parts, inputs)

    def flops(self, pad_mask: torch.Tensor) -> torch.Tensor:
        """(B,) analytic FLOPs of :meth:`attentions` on each sample's real tokens (the reducer's extra
        cost): a dense pass whose top layer computes only the prefix rows, plus the unused head."""
        n, n_out = dense_counts(pad_mask, len(self.parts.layers), self.parts.num_prefix_tokens, True)
        return model_flops(self.parts, n, n_out)  # (B,) float64, incl. patch conv and head

    # ---- persistence -------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``approxnet.json`` atomically into ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT,
            "version": 1,
            "factor": self.factor,
            "heads": self.heads,
            "init": self.init,
            "model_class": compat.class_name(self.model),
            "teacher_hidden_size": self.teacher_hidden_size,
            "config": self.model.config.to_dict(),
        }
        tags = {"format": FORMAT, "factor": str(self.factor), "model_class": meta["model_class"]}
        _atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=tags))
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        _atomic_write(d / META_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return d

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], teacher_config: Any = None, *, factor: int | None = None,
        device: str | torch.device = "cpu",
    ) -> ApproxNet:
        """Rebuild from :meth:`save` output (safetensors only); shape mismatches raise CheckpointMismatchError.

        ``teacher_config`` / ``factor``, when given, are checked against the checkpoint. A damaged
        or foreign file (invalid JSON, a pickle renamed .safetensors) is one CheckpointMismatchError line.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        d = Path(directory)
        meta_path, weights_path = d / META_FILE, d / WEIGHTS_FILE
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise ModelNotFoundError(f"{p} not found: not an ApproxNet directory (see ApproxNet.save)")
        meta = _read_description(meta_path)
        model_cls = _model_class(meta["model_class"])
        try:
            config = model_cls.config_class.from_dict(meta["config"])
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointMismatchError(f"{meta_path}: invalid model config ({one_line(e)})") from e
        config._attn_implementation = "eager"
        saved_factor = int(meta["factor"])
        if factor is not None and factor != saved_factor:
            raise CheckpointMismatchError(f"{d} holds an ApproxNet with factor {saved_factor}, expected {factor}")
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                tags = f.metadata() or {}
        except Exception as e:  # SafetensorError is a bare Exception
            raise CheckpointMismatchError(f"{weights_path}: not a readable safetensors file ({one_line(e)})") from e
        if tags.get("factor", str(saved_factor)) != str(saved_factor):
            raise CheckpointMismatchError(
                f"{weights_path} was saved with factor {tags['factor']} but {meta_path} says {saved_factor}"
            )
        if teacher_config is not None:
            _check_teacher(config, int(meta["teacher_hidden_size"]), teacher_config, saved_factor, d)
        with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the global RNG
            net = cls(model_cls(config), saved_factor, str(meta["init"]), int(meta["teacher_hidden_size"]))
        try:
            state = load_file(str(weights_path), device=str(device))
        except Exception as e:  # a valid header over truncated tensor data
            raise CheckpointMismatchError(f"{weights_path}: not a readable safetensors file ({one_line(e)})") from e
        _check_state(net.state_dict(), state, weights_path)
        net.load_state_dict(state)
        return net.to(device).eval()


def build_approxnet(
    teacher: nn.Module, factor: int = 4, init: str = "random", seed: int = 0, heads: int | None = None
) -> ApproxNet:
    """ApproxNet for ``teacher``: HF init of the small config, or its weights area-interpolated.

    ``heads``: see :func:`approx_config` (default: the teacher's head count).

    Deterministic given ``seed``; the global RNG state is left untouched.
    """
    if init not in INITS:
        raise InputError(f"init must be one of {INITS}, got {init!r}")
    teacher_parts = compat.model_parts(teacher)  # also rejects unsupported classes
    cfg = approx_config(teacher.config, factor, heads)
    ref = next(teacher.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ApproxNet(type(teacher)(cfg), factor, init, teacher_parts.hidden_size)
    net = net.to(device=ref.device, dtype=ref.dtype)
    if init == "interpolate":
        interpolate_init(teacher_parts, net.parts, net.model)
        _upsample_transfers(net.transfers)
    return net.train(teacher.training)


@torch.no_grad()
def teacher_targets(parts: ModelParts, inputs: Mapping[str, torch.Tensor]) -> TeacherTargets:
    """The dense teacher's attentions, hidden states and logits (no grad) for distillation."""
    x, pad = embed(parts, inputs)
    res = dense_forward(parts, x, pad, need_attn=True, need_hidden=True)
    return TeacherTargets(torch.stack(res.attentions), res.hidden_states, classify(parts, res.prefix_hidden), pad)


# ---- interpolation init ------------------------------------------------------------------


def area_resize(t: torch.Tensor, shape: tuple[int, ...], input_dims: tuple[int, ...] = ()) -> torch.Tensor:
    """Area-average ``t`` down to ``shape``; scale by big/small along each dim in ``input_dims``.

    Averaging an output dim gives the mean of a group of channels. Averaging an input dim
    of a weight matrix would also divide the product by the group size f (a sum of C/f
    terms instead of C), so it is multiplied back by f: if the input activations are
    roughly constant within a group, W' x' then equals the group-average of W x, and the
    narrow network's activations keep the teacher's magnitude.
    """
    out = t
    for dim, size in enumerate(shape):
        out = _pool_dim(out, dim, size)
    for dim in input_dims:
        out = out * (t.shape[dim] / shape[dim])
    return out


def _pool_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    n = t.shape[dim]
    if n % size == 0:  # groups of n/size consecutive entries: a plain reshape-mean (fast)
        return t.unflatten(dim, (size, n // size)).mean(dim=dim + 1)
    moved = t.movedim(dim, -1)
    lead = moved.shape[:-1]
    pooled = F.adaptive_avg_pool1d(moved.reshape(-1, 1, n), size)  # (M, 1, size)
    return pooled.reshape(*lead, size).movedim(-1, dim)


@torch.no_grad()
def interpolate_init(teacher: ModelParts, student: ModelParts, student_model: nn.Module) -> None:
    """Copy every teacher weight into the narrow student, area-resized (head-aware for attention).

    Q/K/V: (H*D, C) -> (H, D, C) -> (H, D/f, C/f) so each head keeps its own channels;
    O likewise on its input dim. Norms, embeddings, tokens, patch conv: channel averages.
    Q is also scaled by sqrt(D / d): a dot product over d = D/f channels, scaled by
    1/sqrt(d) instead of 1/sqrt(D), would otherwise flatten every attention map. With fewer
    student heads, student head j takes the channels of teacher heads [j g, (j+1) g). With it,
    a teacher that is a nearest-upsampled narrow net is reproduced exactly (attention,
    logits, and hidden states up to the upsampling the transfers start as).
    """
    done: set[int] = set()
    heads = student.num_heads  # a student head pools a group of H / heads teacher heads
    _copy_module(teacher.embeddings, student.embeddings, done)
    for lt, ls in zip(teacher.layers, student.layers, strict=True):
        temp = ((lt.q.out_features / teacher.num_heads) / (ls.q.out_features / heads)) ** 0.5  # sqrt(D / d)
        for src, dst, scale in ((lt.q, ls.q, temp), (lt.k, ls.k, 1.0), (lt.v, ls.v, 1.0)):
            _set(dst.weight, _resize_heads_out(src.weight, heads, dst.weight.shape) * scale, done)
            if src.bias is not None:
                _set(dst.bias, _resize_heads_out(src.bias, heads, dst.bias.shape) * scale, done)
        _set(ls.o.weight, _resize_heads_in(lt.o.weight, heads, ls.o.weight.shape), done)
        if lt.o.bias is not None:
            _set(ls.o.bias, area_resize(lt.o.bias, tuple(ls.o.bias.shape)), done)
        for src_m, dst_m in ((lt.fc1, ls.fc1), (lt.fc2, ls.fc2), (lt.norm1, ls.norm1), (lt.norm2, ls.norm2)):
            _copy_module(src_m, dst_m, done)
    for src_m, dst_m in ((teacher.final_norm, student.final_norm), (teacher.pooler, student.pooler)):
        if src_m is not None and dst_m is not None:
            _copy_module(src_m, dst_m, done)
    for src_m, dst_m in zip(teacher.classifiers, student.classifiers, strict=True):
        _copy_module(src_m, dst_m, done)
    missed = [n for n, p in student_model.named_parameters() if id(p) not in done]
    if missed:  # a new HF submodule that compat.model_parts does not reach
        raise UnsupportedModelError(f"interpolate init does not cover parameters {missed}; extend compat.py")


def _resize_heads_out(t: torch.Tensor, heads: int, shape: torch.Size) -> torch.Tensor:
    """Q/K/V weight (H*D, C) or bias (H*D,) -> (H*d, c), per head."""
    per_head = t.reshape(heads, -1, *t.shape[1:])  # (H, D[, C])
    small = (heads, shape[0] // heads, *shape[1:])
    return area_resize(per_head, small, input_dims=(2,) if t.dim() == 2 else ()).reshape(shape)


def _resize_heads_in(t: torch.Tensor, heads: int, shape: torch.Size) -> torch.Tensor:
    """O weight (C, H*D) -> (c, H*d): input dim split per head, averaged and scaled."""
    per_head = t.reshape(t.shape[0], heads, -1)  # (C, H, D)
    return area_resize(per_head, (shape[0], heads, shape[1] // heads), input_dims=(2,)).reshape(shape)


def _copy_module(src: nn.Module, dst: nn.Module, done: set[int]) -> None:
    """Linears: both dims resized, input scaled. Anything else (norms, embeddings, conv, tokens):
    channel-averaged, no scaling (their inputs are pixels, ids or normalised activations)."""
    for (name_s, ms), (name_d, md) in zip(src.named_modules(), dst.named_modules(), strict=True):
        if name_s != name_d:
            raise UnsupportedModelError(f"teacher/student module trees differ: {name_s!r} vs {name_d!r}")
        for pname, ps in ms.named_parameters(recurse=False):
            pd = getattr(md, pname)
            scale = (1,) if isinstance(ms, nn.Linear) and pname == "weight" else ()
            _set(pd, area_resize(ps, tuple(pd.shape), input_dims=scale), done)


def _set(dst: nn.Parameter, value: torch.Tensor, done: set[int]) -> None:
    if tuple(dst.shape) != tuple(value.shape):
        raise UnsupportedModelError(f"interpolate init: resized shape {tuple(value.shape)} != {tuple(dst.shape)}")
    dst.copy_(value)
    done.add(id(dst))


@torch.no_grad()
def _upsample_transfers(transfers: nn.ModuleList) -> None:
    """Start each transfer as the inverse of the area pooling (copy each narrow channel to its group)."""
    for t in transfers:
        big, small = t.weight.shape
        pool = _pool_dim(torch.eye(big, dtype=t.weight.dtype, device=t.weight.device), 0, small)  # (c, C)
        up = pool.t()  # (C, c)
        t.weight.copy_(up / up.sum(dim=1, keepdim=True))
        t.bias.zero_()


# ---- persistence helpers --------------------------------------------------------------


def _read_description(path: Path) -> dict[str, Any]:
    """approxnet.json with the keys :meth:`ApproxNet.load` reads, or one CheckpointMismatchError line."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointMismatchError(f"{path}: unreadable ApproxNet description ({one_line(e)})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointMismatchError(f"{path} is not an ApproxNet description (format={found!r})")
    ints = ("factor", "teacher_hidden_size")
    bad = [k for k in ("model_class", "init", "config", *ints) if k not in meta]
    bad += [k for k in ints if k in meta and (isinstance(meta[k], bool) or not isinstance(meta[k], int) or meta[k] < 1)]
    if bad or not isinstance(meta["config"], dict):
        raise CheckpointMismatchError(f"{path}: missing or invalid {bad or ['config']}")
    return meta


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _model_class(name: str) -> type[nn.Module]:
    if name not in compat.SUPPORTED_CLASSES:
        raise UnsupportedModelError(f"ApproxNet checkpoint for {name}; supported: {', '.join(compat.SUPPORTED_CLASSES)}")
    import transformers

    return getattr(transformers, name)


def _check_teacher(config: Any, teacher_hidden: int, teacher_config: Any, factor: int, d: Path) -> None:
    heads = int(config.num_attention_heads)
    if int(teacher_config.num_attention_heads) % heads:
        raise CheckpointMismatchError(
            f"ApproxNet in {d} has {heads} heads, which do not group the teacher's {teacher_config.num_attention_heads}"
        )
    want = approx_config(teacher_config, factor, heads)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_labels")
    bad = [f"{k}: checkpoint {getattr(config, k)} vs expected {getattr(want, k)}"
           for k in keys if getattr(config, k) != getattr(want, k)]
    if teacher_hidden != int(teacher_config.hidden_size):
        bad.append(f"teacher hidden_size: checkpoint {teacher_hidden} vs {teacher_config.hidden_size}")
    if bad:
        raise CheckpointMismatchError(f"ApproxNet in {d} does not fit this teacher (factor {factor}): " + "; ".join(bad))


def _check_state(want: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(want[k].shape)}"
              for k in sorted(set(want) & set(got)) if got[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"wrong shapes {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
        raise CheckpointMismatchError(f"{path} does not match its approxnet.json: " + "; ".join(parts))
