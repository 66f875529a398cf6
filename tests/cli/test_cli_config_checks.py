"""Issue #28 leftover 2: `train --config` / `--sparse-config` JSON fields are checked up front as the
options are: finite, in range, of their type, a text model's max_length within its positions. Each
bad file is one `error:` line and exit 2 before the model loads (the trainer is never reached)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import WORDS, save_tiny_text_model, write_sst2_dir
from typer.testing import CliRunner

from sttabt_edge.cli import app
from sttabt_edge.cli_config_checks import (
    AUGMENT_RULES,
    DATA_RULES,
    EVAL_RULES,
    LTP_RULES,
    OPTIM_RULES,
    RUN_RULES,
    SPARSE_RULES,
    STTABT_RULES,
    TRAIN_RULES,
    read_config,
)
from sttabt_edge.errors import InputError
from sttabt_edge.train.augment import AugmentConfig
from sttabt_edge.train.config import (
    LEGACY_SPARSE_KEYS,
    LtpSettings,
    SparseTrainConfig,
    SttabtSettings,
    TrainConfig,
)
from sttabt_edge.train.train_config import (
    FLAT_TRAIN_KEYS,
    DataSettings,
    EvalSettings,
    OptimSettings,
    RunSettings,
)

runner = CliRunner()
RECIPES = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes"


class Reached(Exception):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny BERT (64 positions) saved as a model dir, and SST-2 rows it can read."""
    root = tmp_path_factory.mktemp("cfg")
    save_tiny_text_model(root / "bert", WORDS)
    (root / "approx").mkdir()
    (root / "approx" / "approxnet.json").write_text("{}")  # an ApproxNet folder as the CLI recognises one
    write_sst2_dir(root / "SST-2", n_train=4, n_dev=2, seed=0)
    return root


@pytest.fixture()
def stub(monkeypatch):
    """The trainer's data loading: reached only once every check passed."""

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("sttabt_edge.cli_train._load_training", reached)


def one_error(res, *needles):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), res.output


def test_the_tables_name_every_field():
    """A new config field cannot slip in unchecked: each dataclass field has a rule, and no rule is stale."""
    for cls, rules in (
        (TrainConfig, {k: r for k, r in TRAIN_RULES.items() if k not in FLAT_TRAIN_KEYS}),
        (OptimSettings, OPTIM_RULES),
        (DataSettings, DATA_RULES),
        (EvalSettings, EVAL_RULES),
        (RunSettings, RUN_RULES),
        (SparseTrainConfig, {k: r for k, r in SPARSE_RULES.items() if k not in LEGACY_SPARSE_KEYS}),
        (SttabtSettings, STTABT_RULES),
        (LtpSettings, LTP_RULES),
        (AugmentConfig, AUGMENT_RULES),
    ):
        assert {f.name for f in dataclasses.fields(cls)} == set(rules), cls.__name__


def test_the_defaults_and_every_recipe_pass():
    for cls, rules in (
        (TrainConfig, TRAIN_RULES),
        (SparseTrainConfig, SPARSE_RULES),
        (AugmentConfig, AUGMENT_RULES),
    ):
        for key, value in dataclasses.asdict(cls()).items():
            if not (cls is TrainConfig and key == "augment"):  # asdict turns the recipe into a dict
                assert rules[key](value) is None, (cls.__name__, key, value)
    for recipe in sorted(RECIPES.glob("*.json")):
        keys = set(json.loads(recipe.read_text()))
        rules, what = (TRAIN_RULES, "TrainConfig") if keys <= set(TRAIN_RULES) else (SPARSE_RULES, "S")
        read_config("--config", recipe, rules, what)


TRAIN_BAD = [
    ({"max_length": 100}, "max_length 100 is over the model's 64 positions"),  # the model's, from config.json
    ({"max_length": 100000}, "max_length must be an integer in [3, 65536], got 100000"),
    ({"max_length": 0}, "max_length must be an integer"),
    ({"lr": float("nan")}, "lr must be a finite number in (0, 10], got nan"),
    ({"epochs": float("inf"), "steps": 0}, "epochs must be a finite number in (0, 10000], got inf"),
    ({"steps": "10"}, 'steps must be an integer in [0, 1000000000], got "10"'),  # was a TypeError traceback
    ({"steps": True}, "steps must be an integer"),
    ({"batch_size": 1.5}, "batch_size must be an integer in [1, 4096], got 1.5"),  # was a TypeError traceback
    ({"batch_size": 100000}, "batch_size must be an integer in [1, 4096]"),
    ({"eval_every": -5}, "eval_every must be an integer in [0, "),  # was accepted
    ({"keep_checkpoints": -1}, "keep_checkpoints must be"),
    ({"bucket_batches": 0}, "bucket_batches must be"),
    ({"stop_after": -1}, "stop_after must be"),
    ({"warmup": 1e308}, "warmup must be a finite number"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295]"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu'"),
    ({"amp": "int4"}, "amp must be one of 'none', 'bf16', 'fp16'"),
    ({"progress": "yes"}, "progress must be true or false"),
    ({"augment": 5}, 'augment must be true, false, "strong"'),
    ({"augment": {"mixup": float("nan")}}, "augment must be an object whose mixup is a finite number"),
    ({"augment": {"mixpu": 0.8}}, "'mixpu' is not one"),
    ({"lrr": 1e-3}, "unknown TrainConfig keys ['lrr']"),
]


@pytest.mark.parametrize(("config", "needle"), TRAIN_BAD, ids=[n.split(" ")[0] for _, n in TRAIN_BAD])
def test_bad_train_config_is_one_line_before_any_work(root, tmp_path, stub, config, needle):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))  # json.dumps writes NaN / Infinity as Python's reader takes them
    args = ["train", "approx", "--model", str(root / "bert"), "--data", str(root / "SST-2" / "train.tsv")]
    start = time.perf_counter()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--config", str(path)])
    one_error(res, f"--config {path}: ", needle)
    assert time.perf_counter() - start < 5  # nothing heavy ran
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"lr": 1e400}', "lr must be a finite number"),  # json reads 1e400 as inf
        ('{"lr": 1e-3, "lr": 5}', "key 'lr' appears more than once"),
        ("[1, 2]", "must be a JSON object of TrainConfig fields, got list"),
        ("{not json", "not a readable JSON file"),
        (b"\xff\xfe{}", "not a readable JSON file"),
    ],
)
def test_unreadable_or_odd_config_files(root, tmp_path, stub, text, needle):
    path = tmp_path / "c.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["train", "approx", "--model", str(root / "bert"), "--data", str(root / "SST-2" / "train.tsv")]
    one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--config", str(path)]), needle)


SPARSE_BAD = [
    ({"temperature": 0}, "temperature must be a finite number in (0, 1000], got 0"),  # a division by zero
    ({"kd_temperature": -1}, "kd_temperature must be"),
    ({"ltp_temperature": float("inf")}, "ltp_temperature must be"),
    ({"p": 2}, "p must be a finite number in [0, 1], got 2"),
    ({"calib_samples": 0}, "calib_samples must be an integer in [1, "),
    ({"min_keep": 0}, "min_keep must be"),
    ({"init": float("nan")}, "init must be 'calibrate' or a finite number"),
    ({"init": "nan"}, "init must be 'calibrate' or a finite number"),
    ({"target_retention": 1.5}, "target_retention must be"),
    ({"hard_frac": 1.0}, "hard_frac must be a finite number in [0, 1)"),
    ({"task_weight": 1e300}, "task_weight must be a finite number in [0, 1e+06]"),
    ({"schedule": "cosine"}, "schedule must be one of"),
    ({"head_reduce": "sum"}, "head_reduce must be one of 'mean', 'max'"),
    ({"freeze_main": 1}, "freeze_main must be true or false"),
    ({"extra": [1]}, "extra must be a JSON object"),
    ({"sttabt": {"p": 2}}, "sttabt must be an object whose p is a finite number in [0, 1], got"),
    ({"sttabt": {"min_kep": 2}}, "sttabt must be an object of SttabtSettings fields (concrete, "),
    ({"ltp": [1]}, "ltp must be a JSON object of LtpSettings fields"),
    ({"ltp": {"temperature": 0}}, "ltp must be an object whose temperature is a finite number in (0, 1000]"),
    ({"p": 0.2, "sttabt": {"p": 0.3}}, "p is given twice: flat (the old form) and as sttabt.p"),
]


@pytest.mark.parametrize(("config", "needle"), SPARSE_BAD, ids=[n.split(" ")[0] for _, n in SPARSE_BAD])
def test_bad_sparse_config_is_one_line_before_any_work(root, tmp_path, stub, config, needle):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(config))
    args = ["train", "baseline", "--method", "ltp", "--model", str(root / "bert")]
    args += ["--data", str(root / "SST-2" / "train.tsv"), "--out", str(tmp_path / "o")]
    one_error(runner.invoke(app, [*args, "--sparse-config", str(path)]), f"--sparse-config {path}: ", needle)


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--task-weight", "1e300", "--task-weight must be a finite number in [0, 1e+06]"),
        ("--threshold-lr", "inf", "--threshold-lr must be a finite number in [0, 10]"),
        ("--kd-weight", "nan", "--kd-weight must be a finite number"),
        ("--hard-frac", "-0.5", "--hard-frac must be a finite number in [0, 1)"),
    ],
)
def test_sparse_options_are_checked_by_the_same_rules(root, tmp_path, stub, option, value, needle):
    args = ["train", "concrete", "--model", str(root / "bert"), "--approx", str(root / "approx")]
    args += ["--data", str(root / "SST-2" / "train.tsv"), "--out", str(tmp_path / "o")]
    one_error(runner.invoke(app, [*args, option, value]), needle)


def test_max_length_default_is_cut_to_the_model_and_a_good_file_is_used(root, tmp_path):
    """Not in the file: the default 128 is cut to the model's 64 positions (a long text used to fail
    late in the embeddings); in the file and within the limit: kept; options still override."""
    from sttabt_edge.cli_train import _train_config

    options = {"model": str(root / "bert"), "lr": None, "steps": 3}
    cfg = _train_config(None, {"lr": 2e-5, "steps": 500}, options)
    assert (cfg.data.max_length, cfg.optim.steps, cfg.optim.lr) == (64, 3, 2e-5)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"max_length": 32, "lr": 1e-3, "augment": {"mixup": 0.2}}))
    cfg = _train_config(path, {}, options)
    assert (cfg.data.max_length, cfg.optim.lr, cfg.data.augment.mixup) == (32, 1e-3, 0.2)


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(sorted(TRAIN_RULES)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.booleans(),
        st.text(max_size=8),
        st.none(),
    ),
)
def test_fuzz_any_value_is_taken_or_refused_in_one_line(tmp_path_factory, key, value):
    """Any JSON value for any TrainConfig field: read_config refuses it with an InputError naming
    the key, or TrainConfig takes it without another error."""
    path = tmp_path_factory.mktemp("fz") / "c.json"
    path.write_text(json.dumps({key: value}))
    try:
        data = read_config("--config", path, TRAIN_RULES, "TrainConfig")
    except InputError as e:
        assert f": {key} must be " in str(e) and "\n" not in str(e)
        return
    try:
        TrainConfig.from_dict(data)
    except ValueError as e:  # a cross-field rule of TrainConfig itself (steps 0 needs epochs > 0)
        assert "\n" not in str(e)
