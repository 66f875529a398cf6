"""The two token-budget metrics, each defined once.

* **retention** (this project's): the fraction of a sample's *real* tokens entering each
  layer, (B, L); its mean over layers is what ``target_retention`` and the tables call
  retention. It is what the compute depends on.
* **occupancy** (the paper's "average token retention", the official ``mask_occupy`` /
  ``concrete_occupy``): the mean over **L + 1** entries (each layer's input set, plus the
  prefix-only output of the top layer, the head's input) of the kept count divided by a
  length T: the **padded** length when one is given (the official GLUE evaluation pads
  each chunk to its longest sentence), otherwise the sample's real length. Compare with
  the paper only in occupancy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def retention(keep: Sequence[torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of real tokens entering each layer, per sample: (B, L). Soft masks allowed."""
    pad = pad_mask.to(torch.float32)
    n_real = pad.sum(dim=1, keepdim=True)
    return torch.stack([(k.to(torch.float32) * pad).sum(dim=1) for k in keep[:-1]], dim=1) / n_real


def occupancy(
    n_in: torch.Tensor, num_prefix_tokens: int, n_real: torch.Tensor, padded_length: int | None = None
) -> torch.Tensor:
    """The paper's occupancy per sample, (B,), from the real tokens entering each layer.

    n_in (B, L) kept real tokens per layer input; n_real (B,) real lengths; ``padded_length``
    T (None: each sample's real length). The (L+1)-th entry is the head's input, the prefix.
    """
    n_in = n_in.to(torch.float64)
    total = n_in.sum(dim=1) + num_prefix_tokens  # (B,)
    length = (
        n_real.to(torch.float64) if padded_length is None else torch.full_like(total, float(padded_length))
    )
    if padded_length is not None and bool((n_real > padded_length).any()):
        raise ValueError(
            f"padded_length {padded_length} is shorter than a sample ({int(n_real.max())} tokens)"
        )
    return total / ((n_in.shape[1] + 1) * length)
