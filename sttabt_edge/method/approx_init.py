"""ApproxNet interpolation init: the teacher's weights, area-resized to the narrow widths.

Head-aware for attention (each student head keeps its own channels), with scales chosen so
the narrow network's activations and attention logits keep the teacher's magnitude (see
:func:`interpolate_init`). Used by :func:`sttabt_edge.method.approxnet.build_approxnet`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sttabt_edge.compat import ModelParts
from sttabt_edge.errors import UnsupportedModelError


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
    optional = ((teacher.final_norm, student.final_norm), (teacher.pooler, student.pooler))
    for src_o, dst_o in optional:
        if src_o is not None and dst_o is not None:
            _copy_module(src_o, dst_o, done)
    for src_c, dst_c in zip(teacher.classifiers, student.classifiers, strict=True):
        _copy_module(src_c, dst_c, done)
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


def _set(dst: torch.Tensor, value: torch.Tensor, done: set[int]) -> None:
    if tuple(dst.shape) != tuple(value.shape):
        raise UnsupportedModelError(
            f"interpolate init: resized shape {tuple(value.shape)} != {tuple(dst.shape)}"
        )
    dst.copy_(value)
    done.add(id(dst))


@torch.no_grad()
def upsample_transfers(transfers: nn.ModuleList) -> None:
    """Start each transfer as the inverse of the area pooling (copy each narrow channel to its group)."""
    for t in transfers:
        assert isinstance(t, nn.Linear)  # ApproxNet.transfers holds Linears
        big, small = t.weight.shape
        pool = _pool_dim(torch.eye(big, dtype=t.weight.dtype, device=t.weight.device), 0, small)  # (c, C)
        up = pool.t()  # (C, c)
        t.weight.copy_(up / up.sum(dim=1, keepdim=True))
        t.bias.zero_()
