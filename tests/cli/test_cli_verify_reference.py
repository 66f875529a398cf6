"""Issue #28, class 3: `verify` checks a file against the reference model's own preprocessing and
labels, so a file whose mean/std or labels were edited (and sealed again) fails with exit 1; its
tolerances must be finite and in range."""

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny import WORDS, save_tiny_text_model, tiny_vit, write_image_dir, write_sst2_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.errors import InputError
from sttabt_edge.export.metadata import read_metadata, set_metadata
from sttabt_edge.verify import Tolerance

runner = CliRunner()
FAST = ["--method", "dense", "--calib-samples", "4", "--latency-runs", "0", "--no-simplify"]


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-ref")
    tiny_vit().save_pretrained(root / "vit")
    images = write_image_dir(root / "images", per_class=3, hw=(40, 40), seed=0)
    out = root / "vit.onnx"
    res = runner.invoke(
        app, ["export", "--model", str(root / "vit"), "--out", str(out), "--calib", str(images), *FAST]
    )
    assert res.exit_code == 0, res.output
    return root / "vit", images, out


def edited(out, tmp_path, name, change=None, graph_change=None):
    """A copy of ``out`` whose metadata ``change`` (or graph: ``graph_change``) edits, sealed again
    as the exporter would."""
    proto = onnx.load(out)
    meta = {k: v for k, v in read_metadata(out).items() if k != "digest"}
    if change is not None:
        change(meta)
    if graph_change is not None:
        graph_change(proto)
    set_metadata(proto, meta)
    path = tmp_path / name
    onnx.save(proto, path)
    return path


def verify(model, reference, data, *extra):
    return runner.invoke(
        app, ["verify", str(model), "--reference", str(reference), "--data", str(data), *extra]
    )


def test_the_unedited_file_passes(image_export):
    model_dir, images, out = image_export
    res = verify(out, model_dir, images)
    assert res.exit_code == 0, res.output


def test_edited_mean_and_std_fail(image_export, tmp_path):
    """Both sides used to preprocess with the file's own mean/std, so they agreed and it passed."""
    model_dir, images, out = image_export

    def neutral(meta):
        meta["preprocess"]["image"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])

    res = verify(edited(out, tmp_path, "meanstd.onnx", neutral), model_dir, images)
    assert res.exit_code == 1, res.output
    assert "verify FAILED" in res.output and "max abs logit diff" in res.output


def test_swapped_labels_fail(image_export, tmp_path):
    model_dir, images, out = image_export

    def swap(meta):
        meta["labels"] = meta["labels"][1:] + meta["labels"][:1]

    res = verify(edited(out, tmp_path, "labels.onnx", swap), model_dir, images)
    assert res.exit_code == 1, res.output
    assert "labels differ from the reference model's" in res.output


def test_text_reference_uses_its_own_tokenizer(tmp_path):
    """A text export verifies with the reference dir's tokenizer.json (its position table as the limit)."""
    model_dir = save_tiny_text_model(tmp_path / "bert", WORDS)
    sst2 = write_sst2_dir(tmp_path / "SST-2", n_train=4, n_dev=6, seed=0)
    out = tmp_path / "bert.onnx"
    res = runner.invoke(
        app, ["export", "--model", str(model_dir), "--out", str(out), "--calib", str(sst2 / "dev.tsv"), *FAST]
    )
    assert res.exit_code == 0, res.output
    res = verify(out, model_dir, sst2 / "dev.tsv")
    assert res.exit_code == 0, res.output
    (model_dir / "tokenizer.json").unlink()
    res = verify(out, model_dir, sst2 / "dev.tsv")
    assert res.exit_code == 2 and "no tokenizer.json" in res.output, res.output


@pytest.mark.parametrize(
    "bad",
    [
        {"max_abs_logit": math.nan},
        {"max_abs_logit": math.inf},
        {"max_abs_logit": -1.0},
        {"min_top1_agreement": math.nan},
        {"min_top1_agreement": -1.0},
        {"min_top1_agreement": math.inf},
        {"min_kept_agreement": math.nan},
        {"min_kept_agreement": 1.5},
    ],
)
def test_tolerances_are_finite_and_in_range(bad):
    with pytest.raises(InputError, match="tolerance out of range"):
        Tolerance(**bad)


def test_nan_tolerances_no_longer_pass_an_altered_file(image_export, tmp_path):
    """The issue's example: NaN bounds made a file with altered weights pass; now the CLI refuses
    them, and the same file fails under the defaults."""
    model_dir, images, out = image_export

    def alter_weights(proto):
        biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * -1.5, biggest.name))

    altered = edited(out, tmp_path, "weights.onnx", graph_change=alter_weights)
    nan = ["--max-abs-logit", "nan", "--min-top1-agreement", "nan", "--min-kept-agreement", "nan"]
    res = verify(altered, model_dir, images, *nan)
    assert res.exit_code == 2 and res.output.startswith("error: --max-abs-logit"), res.output
    assert verify(altered, model_dir, images).exit_code == 1
