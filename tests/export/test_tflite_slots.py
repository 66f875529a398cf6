"""TFLite static slots sized from calibration (export/tflite_slots.py, issue #26).

Eager checks: the slots are the chosen quantile of the sizes the union rule (or the thresholds)
produces on the calibration inputs, other inputs give other slots, and the cut inside the slots
equals a per-sample set transcription (next layer's set kept, the rest by importance). Converted
files (``tflite`` marker): parity of LiteRT against PyTorch running the same cut rule, on the
calibration inputs and on other inputs where the sets overflow, and ``verify`` rebuilding it.
"""

import numpy as np
import pytest
import torch
from tiny import padded_text, tiny_bert, tiny_vit

from sttabt_edge.compat import model_parts
from sttabt_edge.method.approxnet import build_approxnet
from sttabt_edge.method.backtrack import topk_sizes
from sttabt_edge.method.concrete import ConcreteThresholds
from sttabt_edge.models.adapter import embed
from sttabt_edge.reducers import SttabtReducer
from sttabt_edge.sparse_model import SparseClassifier

slots_mod = pytest.importorskip("sttabt_edge.export.tflite_slots")
pytestmark = pytest.mark.usefixtures("one_thread")


def pixels(seed: int, n: int = 16) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def union(vit):
    return SttabtReducer(build_approxnet(vit, 4, "random").eval(), keep_ratio=0.3).eval()


def union_sizes(model, reducer, inputs) -> np.ndarray:
    """(S, L+1) sizes of the library's union sets, counted here (not by rule_sizes)."""
    parts = model_parts(model)
    with torch.no_grad():
        x, pad = embed(parts, inputs)
        bt = reducer.backtrack(parts, inputs, x, pad)
    return np.array([[int(k[i].sum()) for k in bt.keep] for i in range(x.shape[0])])


def cut_by_sets(keep, scores, slots) -> list[list[set[int]]]:
    """Per sample, top down: the next layer's kept set, then the rule's other tokens by score."""
    out = []
    for b in range(keep[0].shape[0]):
        kept = set(torch.nonzero(keep[-1][b]).flatten().tolist())
        sets = [kept]
        for layer in reversed(range(len(scores))):
            rule = set(torch.nonzero(keep[layer][b]).flatten().tolist())
            assert kept <= rule
            extra = sorted(rule - kept, key=lambda t: -float(scores[layer][b, t]))
            kept = kept | set(extra[: max(0, slots[layer] - len(kept))])
            sets.insert(0, kept)
        out.append(sets)
    return out


# ---- eager --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.5, 0.9, 1.0])
def test_slots_are_the_quantile_of_the_union_sizes_on_the_calibration_inputs(vit, union, quantile):
    calib = pixels(0)
    sizes = union_sizes(vit, union, calib)
    record = slots_mod.plan_slots(vit, union, calib, 17, "calibrated", quantile)
    bounds = [int(s) for s in topk_sizes(17, [0.3] * 3, 1, "union")]
    expected = [min(int(np.quantile(sizes[:, i], quantile, method="higher")), bounds[i]) for i in range(4)]
    for i in reversed(range(3)):  # never fewer slots than the layer above
        expected[i] = max(expected[i], expected[i + 1])
    assert record["sizes"] == expected and record["bounds"] == bounds
    assert record["quantile"] == quantile and record["calibration_samples"] == 16
    assert record["capped"] == [s < b for s, b in zip(expected[:-1], bounds[:-1], strict=True)]
    assert record["measured"]["max"] == sizes.max(axis=0).tolist()


def test_other_calibration_inputs_give_other_slots(vit, union):
    a = slots_mod.plan_slots(vit, union, pixels(0), 17, "calibrated", 0.5)["sizes"]
    b = slots_mod.plan_slots(vit, union, pixels(1), 17, "calibrated", 0.5)["sizes"]
    assert a != b
    bound = slots_mod.plan_slots(vit, union, pixels(0), 17, "bound")
    assert bound["sizes"] == [17, 13, 7, 1] and not any(bound["capped"]) and bound["quantile"] is None


def test_count_nesting_is_exact_and_not_calibrated(vit, union):
    count = SttabtReducer(union.approx, keep_ratio=0.3, nesting="count").eval()
    record = slots_mod.plan_slots(vit, count, pixels(0), 17, "calibrated")
    assert record["sizing"] == "exact" and record["sizes"] == [6, 6, 6, 1] and record["quantile"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_equals_a_per_sample_set_transcription(vit, union, seed):
    calib, other = pixels(seed), pixels(seed + 10, 24)
    record = slots_mod.plan_slots(vit, union, calib, 17, "calibrated", 0.5)
    parts = model_parts(vit)
    with torch.no_grad():
        x, pad = embed(parts, other)
        rule = union.backtrack(parts, other, x, pad)
        cut = slots_mod.SlotReducer(union, record["sizes"], record["capped"], static=True).backtrack(
            parts, other, x, pad
        )
    want = cut_by_sets(rule.keep, rule.scores, record["sizes"])
    got = [[set(torch.nonzero(k[b]).flatten().tolist()) for k in cut.keep] for b in range(x.shape[0])]
    assert got == want and cut.sizes == record["sizes"]
    counts = np.array([[len(s) for s in sets] for sets in got])
    assert (counts <= np.array(record["sizes"])).all()
    assert (counts < union_sizes(vit, union, other)).any()  # these inputs overflow somewhere: a real test
    for sets in got:  # nested, prefix in every layer
        assert all(a >= b for a, b in zip(sets, sets[1:], strict=False)) and 0 in sets[-1]


def test_reference_and_static_plans_compute_the_same_logits(vit, union):
    """Static slots with masked padding slots (the graph) = per-batch sizes (the reference)."""
    record = slots_mod.plan_slots(vit, union, pixels(0), 17, "calibrated", 0.5)
    other = pixels(5, 8)
    with torch.no_grad():
        a = SparseClassifier(vit, slots_mod.slot_reducer(union, record, static=True))(**other)
        b = SparseClassifier(vit, slots_mod.slot_reducer(union, record, static=False))(**other)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.equal(a.n_in, b.n_in)


def test_thresholds_are_calibrated_the_same_way(vit, union):
    th = SttabtReducer(union.approx, thresholds=ConcreteThresholds(3, init=0.0).eval()).eval()
    sizes = union_sizes(vit, th, pixels(0))
    record = slots_mod.plan_slots(vit, th, pixels(0), 17, "calibrated", 0.5)
    assert record["bounds"] == [17, 17, 17, 1]
    assert record["sizes"][:-1] == [int(np.quantile(sizes[:, i], 0.5, method="higher")) for i in range(3)]


def test_metadata_reference_cuts_only_what_the_sidecar_says(vit, union):
    record = slots_mod.plan_slots(vit, union, pixels(0), 17, "calibrated", 0.5)
    assert slots_mod.sidecar_reference({}, union) is union  # ONNX metadata: the rule itself
    assert (
        slots_mod.sidecar_reference({"tflite": {"slots": {**record, "capped": [False] * 3}}}, union) is union
    )
    ref = slots_mod.sidecar_reference({"tflite": {"slots": record}}, union)
    assert isinstance(ref, slots_mod.SlotReducer) and ref.sizes == record["sizes"] and not ref.static


# ---- converted files ----------------------------------------------------------------------------------


@pytest.mark.tflite
def test_calibrated_vit_parity_against_the_torch_slot_rule(tmp_path, vit, union):
    pytest.importorskip("litert_torch")
    from sttabt_edge.export.tflite import export_tflite, read_sidecar, verify_tflite
    from sttabt_edge.runtime import load
    from sttabt_edge.verify import reference_reducer

    sc = SparseClassifier(vit, union)
    approx = {"source": None, "init": "random", "factor": 4, "seed": 0, "heads": None}  # as built above
    path = export_tflite(
        sc, tmp_path / "cal.tflite", example_inputs=pixels(0), slot_quantile=0.5, metadata={"approx": approx}
    )
    side = read_sidecar(path)["tflite"]
    assert side["slots"]["sizing"] == "calibrated" and side["slots"]["calibration_samples"] == 16
    assert (
        side["kept_sizes"]
        == side["slots"]["sizes"]
        == slots_mod.plan_slots(vit, union, pixels(0), 17, "calibrated", 0.5)["sizes"]
    )
    assert side["slots"]["agreement_with_rule"]["kept_counts_equal"] is False  # the cut changed some sets
    other = pixels(7, 24)  # not the calibration inputs: overflows too
    report = verify_tflite(path, sc, other, atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4 and report["kept_counts_equal"] and report["top1_agreement"] == 1.0
    kept = np.array(load(path).run({"pixel_values": other["pixel_values"].numpy()})["kept_counts"])
    assert (kept <= np.array(side["kept_sizes"][:-1])).all()
    assert (kept < union_sizes(vit, union, other)[:, :-1]).any()
    rebuilt = reference_reducer(read_sidecar(path), vit)  # what `sttabt-edge verify` compares with
    assert isinstance(rebuilt, slots_mod.SlotReducer) and rebuilt.sizes == side["kept_sizes"]
    report = verify_tflite(path, SparseClassifier(vit, rebuilt.source), other, atol=1e-4)
    assert report["kept_counts_equal"] and report["max_abs_diff"] <= 1e-4


@pytest.mark.tflite
def test_calibrated_padded_text_and_thresholds_parity(tmp_path, tokenizer):
    pytest.importorskip("litert_torch")
    from sttabt_edge.export.tflite import export_tflite, read_sidecar, verify_tflite

    bert = tiny_bert()
    approx = build_approxnet(bert, 4, "random").eval()
    calib = padded_text([20, 16, 12, 9, 5, 20], 20)
    th = SttabtReducer(approx, thresholds=ConcreteThresholds(3, init=0.0).eval()).eval()
    sc = SparseClassifier(bert, th)
    path = export_tflite(
        sc,
        tmp_path / "th.tflite",
        example_inputs=calib,
        seq_len=24,
        tokenizer_file=tokenizer,
        slot_quantile=0.5,
    )
    side = read_sidecar(path)
    assert side["thresholds"] == [0.0] * 3 and side["tflite"]["slots"]["bounds"] == [24, 24, 24, 1]
    assert any(side["tflite"]["slots"]["capped"])
    other = padded_text([20, 18, 14, 7, 3], 20, seed=3)
    report = verify_tflite(path, sc, other, atol=1e-4)
    assert report["max_abs_diff"] <= 1e-4 and report["kept_counts_equal"]


def test_batch_one_row_gather_equals_the_general_gather():
    from sttabt_edge.method.tokens import batched_gather

    x, idx = torch.randn(2, 9, 4), torch.tensor([[3, 0, 8], [1, 1, 5]])
    rows = torch.cat([batched_gather(x[i : i + 1], idx[i : i + 1]) for i in range(2)])
    assert torch.equal(rows, batched_gather(x, idx)) and torch.equal(rows[1, 2], x[1, 5])


@pytest.mark.tflite
def test_computed_weight_products_become_delegated_batch_matmuls(tmp_path):
    """A one-head Q·Kᵀ converts to FULLY_CONNECTED on a computed weight, which XNNPACK does not run."""
    pytest.importorskip("litert_torch")
    from ai_edge_litert.interpreter import Interpreter
    from torch import nn

    from sttabt_edge.export.tflite_graph import convert
    from sttabt_edge.export.tflite_xnnpack import delegable_matmuls, xnnpack_coverage

    class QK(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return {"s": torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)}

    x = torch.randn(1, 12, 8)
    flat = convert(QK(), {"x": x}, delegable=False)
    new, count = delegable_matmuls(flat)
    assert count == 1 and delegable_matmuls(new)[1] == 0
    outs = []
    for i, data in enumerate((flat, new)):
        path = tmp_path / f"{i}.tflite"
        path.write_bytes(data)
        runner = Interpreter(model_path=str(path)).get_signature_runner()
        outs.append((xnnpack_coverage(path), runner(x=x.numpy())["s"]))
    (before, a), (after, b) = outs
    assert before["fallback"] == {"FULLY_CONNECTED:float32": 1} and before["partitions"] == 2
    assert after["fallback"] == {} and after["partitions"] == 1 and after["delegated"] == after["ops"]
    assert np.abs(a - b).max() <= 1e-6
