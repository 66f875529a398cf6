"""`train --config` / `--sparse-config` JSON files, checked up front as the options they stand for.

A config file is a set of options, so each of its fields gets an option's treatment before the
model loads: the file is one JSON object with no repeated and no unknown key; an integer field
holds an integer (not ``true``, not ``2.5``, not ``"32"``), a number field a finite number
(Python's json reads ``NaN`` and ``Infinity``; ``1e400`` is infinite) inside its range, a choice
one of its values. The same table checks the options a verb was given (``check_options``), so a
value is refused alike from the command line or from a file. A text model's ``max_length`` is
checked against its position table (``fit_max_length``). Every failure is an ``InputError`` (a
ValueError; the CLI prints one ``error:`` line, exit 2) naming the file or option and the key.
Torch-free; ``tests/cli/test_cli_config_checks.py`` checks that the tables name every field of
TrainConfig, SparseTrainConfig and AugmentConfig.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sttabt_edge.cli_common import MAX_BATCH, MAX_SEQ_LEN
from sttabt_edge.cli_train_checks import MAX_EPOCHS, MAX_LR, MAX_SEED, MAX_STEPS, MAX_WORKERS
from sttabt_edge.errors import InputError
from sttabt_edge.train.config import LEGACY_SPARSE_KEYS
from sttabt_edge.train.train_config import FLAT_TRAIN_KEYS

# a rule returns None for a good value, else what the value must be ("an integer in [1, 4096]")
Rule = Callable[[Any], str | None]
MAX_WEIGHT = 1e6  # loss weights and lr scales: far above any recipe, far below an overflow
MAX_TEMPERATURE = 1e3
MAX_THRESHOLD = 1e3  # a threshold logit (log importances are tens at most)
MIN_TEXT_TOKENS = 3  # [CLS], one word, [SEP]


def _bounds(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def integer(low: int, high: int) -> Rule:
    def rule(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        return None if ok else f"an integer in [{low}, {high}]"

    return rule


def number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            inside = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
            if inside:
                return None
        return f"a finite number in {_bounds(low, high, low_open, high_open)}"

    return rule


def flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def choice(*values: str) -> Rule:
    return lambda v: None if v in values else "one of " + ", ".join(repr(c) for c in values)


def pattern(regex: str, what: str) -> Rule:
    return lambda v: None if isinstance(v, str) and re.fullmatch(regex, v) else what


def an_object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "a JSON object"


def threshold_init(v: Any) -> str | None:
    """SparseTrainConfig.init: "calibrate" or the thresholds' start value (a number, or its text)."""
    if v == "calibrate":
        return None
    try:
        value = float(v) if isinstance(v, str) else v
    except ValueError:
        value = None
    ok = number(-MAX_THRESHOLD, MAX_THRESHOLD)(value) is None
    return None if ok else f"'calibrate' or a finite number in [{-MAX_THRESHOLD:g}, {MAX_THRESHOLD:g}]"


AUGMENT_RULES: dict[str, Rule] = {
    "randaug_n": integer(0, 100),
    "randaug_m": number(0.0, 10.0),
    "randaug_mstd": number(0.0, 100.0),
    "erasing": number(0.0, 1.0),
    "mixup": number(0.0, MAX_TEMPERATURE),
    "cutmix": number(0.0, MAX_TEMPERATURE),
    "switch_prob": number(0.0, 1.0),
    "smoothing": number(0.0, 1.0),
}


def augment(v: Any) -> str | None:
    """TrainConfig.augment: true, false, "strong", or a dict of AugmentConfig fields."""
    if isinstance(v, bool) or v == "strong":
        return None
    if not isinstance(v, dict):
        return 'true, false, "strong" or a JSON object of AugmentConfig fields'
    for key, value in v.items():
        rule = AUGMENT_RULES.get(key)
        if rule is None:
            return f"an object of AugmentConfig fields ({', '.join(AUGMENT_RULES)}); {key!r} is not one"
        if (want := rule(value)) is not None:
            return f"an object whose {key} is {want}"
    return None


def group(rules: Mapping[str, Rule], what: str) -> Rule:
    """A nested config (TrainConfig.optim, SparseTrainConfig.sttabt, ...): an object of ``what``'s fields, each in its rule."""

    def rule(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"a JSON object of {what} fields"
        for key, value in v.items():
            inner = rules.get(key)
            if inner is None:
                return f"an object of {what} fields ({', '.join(rules)}); {key!r} is not one"
            if (want := inner(value)) is not None:
                return f"an object whose {key} is {want}"
        return None

    return rule


OPTIM_RULES: dict[str, Rule] = {
    "lr": number(0.0, MAX_LR, low_open=True),
    "steps": integer(0, MAX_STEPS),
    "epochs": number(0.0, MAX_EPOCHS, low_open=True),
    "batch_size": integer(1, MAX_BATCH),
    "grad_accum": integer(1, MAX_BATCH),
    "warmup": number(0.0, float(MAX_STEPS)),
    "weight_decay": number(0.0, float(MAX_STEPS)),
    "grad_clip": number(0.0, float(MAX_STEPS)),
    "amp": choice("none", "bf16", "fp16"),
    "seed": integer(0, MAX_SEED),
}
DATA_RULES: dict[str, Rule] = {
    "max_length": integer(MIN_TEXT_TOKENS, MAX_SEQ_LEN),
    "bucket_batches": integer(1, 10**6),
    "augment": augment,
    "num_workers": integer(0, MAX_WORKERS),
}
EVAL_RULES: dict[str, Rule] = {
    "every": integer(0, MAX_STEPS),
    "batch_size": integer(1, MAX_BATCH),
    "max_samples": integer(0, MAX_STEPS),
}
RUN_RULES: dict[str, Rule] = {
    "log_every": integer(0, MAX_STEPS),
    "save_every": integer(0, MAX_STEPS),
    "keep_checkpoints": integer(1, 10**6),
    "stop_after": integer(0, MAX_STEPS),
    "progress": flag,
}
_TRAIN_GROUP_RULES = {"optim": OPTIM_RULES, "data": DATA_RULES, "eval": EVAL_RULES, "run": RUN_RULES}
TRAIN_RULES: dict[str, Rule] = {
    "optim": group(OPTIM_RULES, "OptimSettings"),
    "data": group(DATA_RULES, "DataSettings"),
    "eval": group(EVAL_RULES, "EvalSettings"),
    "run": group(RUN_RULES, "RunSettings"),
    "device": pattern("auto|cpu|cuda|mps", "'auto', 'cpu', 'cuda' or 'mps'"),  # train_config.Device
    # the flat form (recipes, run dirs and config files written before #27), read as the groups' fields
    **{key: _TRAIN_GROUP_RULES[g][name] for key, (g, name) in FLAT_TRAIN_KEYS.items()},
}


STTABT_RULES: dict[str, Rule] = {
    "concrete": choice("ste", "official"),
    "temperature": number(0.0, MAX_TEMPERATURE, low_open=True),
    "min_keep": integer(1, MAX_SEQ_LEN),
    "p": number(0.0, 1.0),
    "head_reduce": choice("mean", "max"),
}
LTP_RULES: dict[str, Rule] = {
    "temperature": number(0.0, MAX_TEMPERATURE, low_open=True),
    "min_keep": integer(0, MAX_SEQ_LEN),
}
_GROUP_RULES = {"sttabt": STTABT_RULES, "ltp": LTP_RULES}

SPARSE_RULES: dict[str, Rule] = {
    "target_retention": number(0.0, 1.0, low_open=True),
    "task_weight": number(0.0, MAX_WEIGHT),
    "kd_weight": number(0.0, MAX_WEIGHT),
    "kd_temperature": number(0.0, MAX_TEMPERATURE, low_open=True),
    "retention_weight": number(0.0, MAX_WEIGHT),
    "retention_control": choice("penalty", "lagrangian"),
    "retention_dual_lr": number(0.0, MAX_WEIGHT),
    "main_params": choice("all", "norms_biases"),
    "threshold_lr": number(0.0, MAX_LR),
    "approx_lr_scale": number(0.0, MAX_WEIGHT),
    "train_approx": flag,
    "freeze_main": flag,
    "hard_frac": number(0.0, 1.0, high_open=True),
    "snap": flag,
    "init": threshold_init,
    "init_schedule": choice("constant", "union", "shared"),
    "calib_samples": integer(1, 10**6),
    "sttabt": group(STTABT_RULES, "SttabtSettings"),
    "ltp": group(LTP_RULES, "LtpSettings"),
    "schedule": choice("geometric", "constant"),
    "extra": an_object,
    # the old flat form of the groups' fields (config files written before #27), read as the groups'
    **{key: _GROUP_RULES[g][name] for key, (g, name) in LEGACY_SPARSE_KEYS.items()},
}


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else f"{value:g}"
    return text if len(text) <= 60 else text[:57] + "..."


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if repeated := sorted({k for k in keys if keys.count(k) > 1}):
        raise ValueError(f"key {repeated[0]!r} appears more than once")
    return dict(pairs)


def read_config(option: str, path: Path, rules: Mapping[str, Rule], what: str) -> dict[str, Any]:
    """The JSON object in ``path`` with every key known and every value inside its rule; else an
    InputError naming ``option``, the file and the key. ``what``: the config's name."""
    where = f"{option} {path}"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_repeats)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{where}: not a readable JSON file ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise InputError(f"{where}: must be a JSON object of {what} fields, got {type(data).__name__}")
    if unknown := sorted(set(data) - set(rules)):
        raise InputError(f"{where}: unknown {what} keys {unknown}; expected a subset of {sorted(rules)}")
    for key, value in data.items():
        if (want := rules[key](value)) is not None:
            raise InputError(f"{where}: {key} must be {want}, got {_shown(value)}")
    return data


def check_options(rules: Mapping[str, Rule], given: Mapping[str, Any]) -> None:
    """The values a verb was given on its command line (None: not given), by the same rules."""
    for key, value in given.items():
        rule = rules.get(key)
        if value is None or rule is None:
            continue
        if hasattr(value, "value"):  # an Enum option arrives as its member
            value = value.value
        if isinstance(value, int) and not isinstance(value, bool) and rule(value) is not None:
            value = float(value)  # a number option typed as an integer (--lr 1)
        if (want := rule(value)) is not None:
            raise InputError(f"--{key.replace('_', '-')} must be {want}, got {_shown(value)}")


def fit_max_length(max_length: int, positions: int | None, where: str | None) -> int:
    """A text model reads at most ``positions`` tokens (config.json's max_position_embeddings).
    ``where``: the file that set ``max_length`` (over the limit: an error); None, the verb's default,
    which is cut to the limit (a 64-position model trains on 64 tokens, not the default 128)."""
    if positions is None or max_length <= positions:
        return max_length
    if where is not None:
        raise InputError(
            f"{where}: max_length {max_length} is over the model's {positions} positions "
            "(max_position_embeddings in its config.json)"
        )
    return positions
