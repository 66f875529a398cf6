"""train/sources.py: the fixed held-out half, unlabeled sources and GLUE test files, datasets' save_to_disk."""

from __future__ import annotations

import sys
import types

import pytest

from sttabt_edge.errors import InputError
from sttabt_edge.train.sources import hf_examples, load_splits, read_hf_disk, split_half

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_split_half_is_fixed_and_order_free(image_dir):
    from sttabt_edge.data import image_folder

    examples = image_folder(image_dir)
    train, held = split_half(examples)
    assert len(train) == len(held) == 8
    assert {e.inputs for e in train}.isdisjoint({e.inputs for e in held})
    again, _ = split_half(list(reversed(examples)))
    assert {e.inputs for e in again} == {e.inputs for e in train}
    assert {e.inputs for e in split_half(examples, seed=1)[0]} != {e.inputs for e in train}


def test_unlabeled_sources_and_glue_test_files(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "test.tsv").write_text("index\tsentence\n0\ta film\n1\tthe plot\n")
    (tmp_path / "lines.txt").write_text("a film\n\nthe plot\n")
    for path in (tmp_path / "SST-2" / "test.tsv", tmp_path / "lines.txt"):
        s = load_splits(path)
        assert [e.inputs for e in s.train] == ["a film", "the plot"] and s.train[0].label is None


def test_save_to_disk_needs_datasets(tmp_path, monkeypatch):
    (tmp_path / "dataset_dict.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError, match="pip install datasets"):
        read_hf_disk(tmp_path, "train")

    class FakeDS:  # the slice of datasets.Dataset we use
        column_names = ["sentence1", "sentence2", "label"]
        cols = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, -1]}

        def __len__(self):
            return 2

        def __getitem__(self, key):
            return self.cols[key]

    fake = types.SimpleNamespace(load_from_disk=lambda p: {"train": FakeDS(), "validation": FakeDS()})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    got = read_hf_disk(tmp_path, "validation")
    assert [(e.inputs, e.label) for e in got] == [(("a", "c"), 1), (("b", "d"), None)]
    with pytest.raises(InputError, match="splits"):
        hf_examples({"train": FakeDS()}, "test", "x")
