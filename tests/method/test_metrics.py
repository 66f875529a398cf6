"""Retention (ours, real tokens, L entries) and occupancy (the paper's, L+1 entries, padded length)."""

import pytest
import torch

from sttabt_edge.method.metrics import occupancy, retention
from sttabt_edge.sparse_model import SparseClassifier


def test_occupancy_hand_worked():
    n_in = torch.tensor([[10, 6, 3], [4, 4, 2]])  # (B, L) real tokens entering each layer
    n_real = torch.tensor([10, 4])
    # (10 + 6 + 3 + 1 CLS) / (4 entries * 10) and (4 + 4 + 2 + 1) / (4 * 4)
    torch.testing.assert_close(occupancy(n_in, 1, n_real), torch.tensor([0.5, 11 / 16], dtype=torch.float64))
    # over the padded length T = 20, as the official GLUE evaluation divides
    torch.testing.assert_close(
        occupancy(n_in, 1, n_real, 20), torch.tensor([0.25, 11 / 80], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="shorter than a sample"):
        occupancy(n_in, 1, n_real, 8)


def test_retention_and_occupancy_differ_as_defined():
    pad = torch.tensor([[True] * 10])
    keep = [
        torch.ones(1, 10, dtype=torch.bool),
        torch.arange(10)[None] < 6,
        torch.arange(10)[None] < 3,
        torch.arange(10)[None] < 1,
    ]
    ret = retention(keep, pad)  # (1, 3): the L layer inputs only
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.6, 0.3]]))
    occ = occupancy(torch.tensor([[10, 6, 3]]), 1, pad.sum(1))
    assert float(ret.mean()) == pytest.approx(19 / 30) and float(occ) == pytest.approx(20 / 40)


def test_evaluate_reports_both(tmp_path):
    from tiny import tiny_bert

    from sttabt_edge.data import Example
    from sttabt_edge.evaluate import evaluate
    from sttabt_edge.reducers import DenseReducer, SttabtReducer

    class Tok:  # a stand-in TextPreprocess: ids from word lengths, padded per batch
        def __call__(self, texts, max_length=None, truncation=False):
            import numpy as np

            rows = [[1, *[10 + len(w) for w in t.split()], 2] for t in texts]
            n = max(map(len, rows))
            ids = np.zeros((len(rows), n), dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, : len(r)], mask[i, : len(r)] = r, 1
            return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    examples = [Example("a b c d e f g h", 0), Example("a b c", 1), Example("a b c d e f g h i j k", 0)]
    model = tiny_bert()
    dense = evaluate(
        SparseClassifier(model, DenseReducer()), examples, text=Tok(), progress=False, occupancy_length=13
    )
    layers = model.config.num_hidden_layers
    lengths = torch.tensor([10.0, 5.0, 13.0])
    expect = float(((layers * lengths + 1) / ((layers + 1) * 13)).mean())
    assert dense.retention == pytest.approx(1.0) and dense.occupancy == pytest.approx(expect)
    assert dense.occupancy_length == 13
    sparse = evaluate(
        SparseClassifier(model, SttabtReducer(keep_ratio=0.3)), examples, text=Tok(), progress=False
    )
    assert sparse.occupancy_length is None and 0 < sparse.occupancy < 1 and sparse.retention < 1
