"""Threshold ties (export/threshold_ties.py): which samples a runtime's float noise may flip, and the
only differences the exporter forgives. Tiny random ViT, PyTorch only (no conversion)."""

import numpy as np
import pytest
import torch
from tiny import tiny_vit

from sttabt_edge.compat import model_parts
from sttabt_edge.export.graph import ExportModule, example_args
from sttabt_edge.export.threshold_ties import split_ties, threshold_ties
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.method.concrete import MIN_IMPORTANCE, ConcreteThresholds, normalized_importance
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier


@torch.no_grad()
def kept_counts(sc: SparseClassifier, pixels: torch.Tensor) -> np.ndarray:
    module = ExportModule(sc).eval()
    return module(*example_args("vit", {"pixel_values": pixels}))[1].numpy()


@pytest.fixture(scope="module")
def tied():
    """A threshold model whose top layer's threshold is exactly one token's log importance on
    sample 0 (a token neither CLS nor in the min_keep floor): PyTorch drops it, by 0 margin."""
    vit = tiny_vit()
    th = ConcreteThresholds(3, init=0.25).eval()  # not 0: a uniform map's tokens sit at log 1 = 0
    approx = build_approxnet(vit, 4, "random").eval()
    with torch.no_grad():  # random maps are near uniform (every token ~ the mean): sharpen them
        for name, w in approx.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w.mul_(20.0)
    reducer = SttabtReducer(approx, thresholds=th).eval()
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    parts = model_parts(vit)
    with torch.no_grad():
        x, pad = embed(parts, {"pixel_values": pixels[:1]})
        top = reducer.backtrack(parts, {"pixel_values": pixels[:1]}, x, pad).scores[-1]
        log_s = torch.log(normalized_importance(top, pad).clamp_min(MIN_IMPORTANCE))[0]
        token = int(torch.argsort(log_s[1:], descending=True)[len(log_s) // 2]) + 1  # a middling one
        th.logits[-1] = log_s[token]
    return SparseClassifier(vit, reducer), pixels


@torch.no_grad()
def min_margins(sc: SparseClassifier, pixels: torch.Tensor) -> np.ndarray:
    """(S,) the smallest |log importance - threshold| over each sample's tokens and layers."""
    parts, th = model_parts(sc.model), sc.reducer.thresholds.logits
    x, pad = embed(parts, {"pixel_values": pixels})
    scores = sc.reducer.backtrack(parts, {"pixel_values": pixels}, x, pad).scores
    gaps = [
        (torch.log(normalized_importance(s, pad).clamp_min(MIN_IMPORTANCE)) - th[i]).abs().min(1).values
        for i, s in enumerate(scores)
    ]
    return torch.stack(gaps, 1).min(1).values.numpy()


def test_a_token_on_its_threshold_is_a_tie_and_the_thresholds_come_back(tied):
    sc, pixels = tied
    before = sc.reducer.thresholds.logits.detach().clone()
    ties = threshold_ties(sc.reducer.thresholds, lambda: kept_counts(sc, pixels))
    assert ties is not None and ties[0]  # the planted tie
    far = min_margins(sc, pixels) > 1e-4  # the random maps are near uniform: other samples may tie too
    assert far.sum() >= 3 and not ties[far].any()
    assert torch.equal(sc.reducer.thresholds.logits, before)  # restored bit for bit
    assert threshold_ties(None, lambda: kept_counts(sc, pixels)) is None  # top-k: nothing to move


def outputs(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 3), dtype=np.float32), np.full((n, 2), 5, dtype=np.int32)


def off_at(i: int, out: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    logits, kept = out[0].copy(), out[1].copy()
    logits[i] += 0.1  # one more token: other logits too
    kept[i] += 1
    return logits, kept


def never() -> np.ndarray:
    raise AssertionError("asked for ties with nothing to forgive")


def test_only_differences_on_ties_are_forgiven():
    ref = outputs()
    got, ref_left, forgiven = split_ties(off_at(2, ref), ref, 1e-4, lambda: np.array([0, 0, 1, 0], bool))
    assert forgiven == [2] and got[0].shape == (3, 3) and np.array_equal(got[1], ref_left[1])
    for ties in ([0, 0, 0, 0], [0, 1, 0, 0]):  # the differing sample is not a tie
        assert split_ties(off_at(2, ref), ref, 1e-4, lambda t=ties: np.array(t, bool))[2] == []
    assert split_ties(off_at(2, ref), ref, 1e-4, lambda: None)[2] == []  # no thresholds
    two = off_at(1, off_at(2, ref))  # one tie, one real difference: nothing forgiven
    assert split_ties(two, ref, None, lambda: np.array([0, 0, 1, 0], bool))[2] == []
    assert split_ties(ref, ref, 1e-4, never)[2] == []  # equal: ties not even computed
    every = off_at(0, off_at(1, off_at(2, off_at(3, ref))))  # nothing would be left to judge
    assert split_ties(every, ref, 1e-4, lambda: np.ones(4, bool))[2] == []


def test_int8_logit_gaps_are_not_differences():
    """``atol=None`` (INT8): only kept counts make a sample differ."""
    ref = outputs()
    logits = ref[0] + 0.5
    assert split_ties((logits, ref[1]), ref, None, never)[2] == []


@pytest.mark.tflite
def test_export_forgives_a_flip_at_a_tie_only(tied, tmp_path, monkeypatch):
    """LiteRT keeping one more token than PyTorch (simulated) passes the export on the sample at
    the planted tie, recorded in the sidecar, and fails it anywhere else."""
    pytest.importorskip("litert_torch", reason="TFLite export needs `pip install -e '.[tflite]'`")
    import sttabt_edge.export.tflite as tfl
    from sttabt_edge.errors import ExportError

    sc, pixels = tied
    real = tfl.run_tflite
    flip = {"sample": 0}

    def one_more_token(path, batch, threads=1):
        logits, kept = real(path, batch, threads)
        return off_at(flip["sample"], (logits, kept))

    monkeypatch.setattr(tfl, "run_tflite", one_more_token)
    path = tfl.export_tflite(sc, tmp_path / "tied.tflite", example_inputs={"pixel_values": pixels})
    report = tfl.read_sidecar(path)["tflite"]["verification"]["float"]
    assert report["threshold_ties"] == [0] and report["num_samples"] == 5 and report["kept_counts_equal"]
    flip["sample"] = 1
    with pytest.raises(ExportError, match="kept token counts differ|logits differ"):
        tfl.verify_tflite(path, sc, {"pixel_values": pixels})
