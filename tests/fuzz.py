"""Property-based fuzzing of token counts and padding (hypothesis): strategies and the one check.

The property: every row of a batch run through the runtime equals that row run alone (text:
trimmed to its own length, so the padding and the batch around it cannot matter) and equals
PyTorch's eager STTABT (``SparseClassifier``) on the same batch: logits within ``atol``,
kept-token counts per layer identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sttabt_edge.runtime import Predictor
from sttabt_edge.sparse_model import SparseClassifier

# derandomized: CI sees the same examples on every run; the database stays off (no .hypothesis/ dir)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def text_batches(
    draw: Any, max_len: int, vocab: int, cls_sep: tuple[int, int] | None = None, max_batch: int = 8
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Right-padded (input_ids, attention_mask, token_type_ids): batch 1..max_batch, each row 1..max_len
    real tokens, 0..(room left) extra padding columns, single texts or pairs (type 1 after a split)."""
    b = draw(st.integers(1, max_batch))
    lengths = draw(st.lists(st.integers(1 if cls_sep is None else 2, max_len), min_size=b, max_size=b))
    width = max(lengths) + draw(st.integers(0, max_len - max(lengths)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    low = 0 if cls_sep is None else 1000
    ids = rng.integers(low, vocab, (b, width)) * mask
    types = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        if cls_sep is not None:
            ids[i, 0], ids[i, n - 1] = cls_sep
        if draw(st.booleans()):  # a sentence pair: the second part has token type 1
            types[i, draw(st.integers(1, n)) : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, lengths


@st.composite
def image_batches(draw: Any, size: int, max_batch: int = 8) -> tuple[dict[str, np.ndarray], list[int]]:
    """Normalised pixels (B, 3, size, size) at several scales; every row has all its patches."""
    b = draw(st.integers(1, max_batch))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pixels = (rng.standard_normal((b, 3, size, size)) * scale).astype(np.float32)
    return {"pixel_values": pixels}, [size] * b


def _row(feed: dict[str, np.ndarray], i: int, n: int) -> dict[str, np.ndarray]:
    if "attention_mask" not in feed:
        return {k: v[i : i + 1] for k, v in feed.items()}
    return {k: v[i : i + 1, :n] for k, v in feed.items()}


def assert_rows_match(
    pred: Predictor,
    model: torch.nn.Module,
    reducer: Any,
    feed: dict[str, np.ndarray],
    lengths: list[int],
    atol: float,
) -> None:
    """The property of the module docstring, for one batch."""
    out = pred.run(feed)
    with torch.no_grad():
        ref = SparseClassifier(model, reducer).eval()(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(
        out["logits"], ref.logits.float().numpy(), atol=atol, rtol=0, err_msg="runtime vs PyTorch logits"
    )
    np.testing.assert_array_equal(
        out["kept_counts"], ref.n_in.numpy(), err_msg="runtime vs PyTorch kept counts"
    )
    for i, n in enumerate(lengths):
        alone = pred.run(_row(feed, i, n))
        np.testing.assert_allclose(
            alone["logits"][0], out["logits"][i], atol=atol, rtol=0, err_msg=f"row {i} alone vs in the batch"
        )
        np.testing.assert_array_equal(
            alone["kept_counts"][0],
            out["kept_counts"][i],
            err_msg=f"row {i} kept counts alone vs in the batch",
        )
