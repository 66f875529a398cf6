"""`sttabt-edge eval`: a model's task metric, retention, occupancy and FLOPs under a token reducer."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sttabt_edge.cli_common import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    approx_choice,
    check_at_least,
    check_exists,
    check_fraction,
    error_line,
    fail,
)
from sttabt_edge.cli_inputs import check_data_kind, check_model, loaded_family, model_family
from sttabt_edge.cli_options import KEEP_RATIO_HELP, ORACLE, MinKeepOpt, Nesting, NestingOpt
from sttabt_edge.cli_outputs import check_output_file, write_text_output
from sttabt_edge.defaults import default_keep_ratio
from sttabt_edge.model_info import is_trained_dir, model_files

if TYPE_CHECKING:
    from sttabt_edge.runtime import ImagePreprocess, TextPreprocess
    from sttabt_edge.sparse_model import SparseClassifier


class Method(str, Enum):
    dense = "dense"
    sttabt = "sttabt"
    topk = "topk"
    ltp = "ltp"
    tome = "tome"


def eval_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")],
    data: Annotated[Path, typer.Option(help="image folder, or a GLUE TSV file (e.g. SST-2/dev.tsv)")],
    method: Annotated[Method, typer.Option(help="token reducer")] = Method.dense,
    keep_ratio: Annotated[float | None, typer.Option(help=KEEP_RATIO_HELP)] = None,
    approx: Annotated[
        str | None,
        typer.Option(
            help="sttabt: ApproxNet DIR (from `train approx`), or 'oracle' (the model's own attention)"
        ),
    ] = None,
    batch_size: int = 32,
    max_samples: Annotated[int | None, typer.Option(help="evaluate only the first N examples")] = None,
    nesting: NestingOpt = Nesting.union,
    min_keep: MinKeepOpt = 4,
    occupancy_length: Annotated[
        int | None,
        typer.Option(
            help="padded length T of the paper's occupancy (default: text: the longest example; images: N)"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
) -> None:
    """Task metric, retention, occupancy and analytic FLOPs of a model under a token reducer."""
    keep_ratio = default_keep_ratio(method.value) if keep_ratio is None else keep_ratio
    check_model(model)
    check_exists("--data", data)
    check_fraction("--keep-ratio", keep_ratio)
    check_at_least("--batch-size", batch_size, 1, MAX_BATCH)
    check_at_least("--max-samples", max_samples, 1)
    check_at_least("--occupancy-length", occupancy_length, 1, MAX_SEQ_LEN)
    check_data_kind(model_family(model), data)
    trained = is_trained_dir(model)  # from `train concrete|baseline`: has its reducer
    approx_dir = _eval_approx(approx, method, trained)
    if json_out is not None:
        check_output_file(
            "--json", json_out, [("--model", model), ("--data", data), ("--approx", approx_dir)]
        )
    import torch

    from sttabt_edge.data import glue_tsv, image_folder, image_preprocess_for, model_class_names
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.evaluate import evaluate
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.factory import build
    from sttabt_edge.reducers.spec import ReducerOptions, spec_from_options
    from sttabt_edge.runtime import TextPreprocess
    from sttabt_edge.sparse_model import SparseClassifier

    try:
        if trained:
            from sttabt_edge.train.artifacts import load_sttabt

            sc = load_sttabt(model)
            model = str(model_files(model))  # tokenizer.json / synsets.json sit beside the weights
        else:
            net = load_model(model)
            layers = int(net.config.num_hidden_layers)
            options = ReducerOptions(keep_ratio, nesting.value, min_keep, num_layers=layers)
            approx_net = None
            if approx_dir is not None:
                from sttabt_edge.method.approxnet import ApproxNet

                approx_net = ApproxNet.load(approx_dir)
            sc = SparseClassifier(net, build(spec_from_options(method.value, options), approx_net))
        check_data_kind(loaded_family(sc.model), data)  # an alias or hub id: known once loaded
        image_pre: ImagePreprocess | None = None
        text_pre: TextPreprocess | None = None
        if data.is_dir():
            examples = image_folder(data, model_class_names(model) if Path(model).is_dir() else None)
            image_pre, task = image_preprocess_for(sc.model), None
        else:
            examples = glue_tsv(data)
            text_pre, task = TextPreprocess.from_file(Path(model)), data.parent.name
        examples = examples[:max_samples] if max_samples else examples
        if occupancy_length is None and text_pre is not None:
            from sttabt_edge.data import longest_length

            occupancy_length = longest_length(examples, text_pre)
        if not trained:
            _calibrate_untrained(sc, examples, batch_size, image_pre, text_pre, keep_ratio)
        with torch.inference_mode():
            name = f"{sc.reducer.name}-trained" if trained else method.value
            res = evaluate(
                sc,
                examples,
                image_pre,
                text_pre,
                batch_size=batch_size,
                task=task,
                name=name,
                occupancy_length=occupancy_length,
            )
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))
    text = json.dumps(res.to_dict(), indent=2)
    typer.echo(text)
    if json_out:
        write_text_output(json_out, text)


def _calibrate_untrained(
    sc: SparseClassifier,
    examples: list,
    batch_size: int,
    image_pre: ImagePreprocess | None,
    text_pre: TextPreprocess | None,
    keep_ratio: float,
) -> None:
    """Untrained LTP thresholds (they start keeping everything) set on the first batch to keep
    ``keep_ratio`` of the tokens; other reducers need no data."""
    import torch

    from sttabt_edge.data import batches
    from sttabt_edge.reducers.ltp import LtpReducer

    if not isinstance(sc.reducer, LtpReducer):
        return
    first, _ = next(batches(examples, batch_size, image_pre, text_pre))
    with torch.inference_mode():
        sc.reducer.calibrate(sc.parts, {k: torch.from_numpy(v) for k, v in first.items()}, keep_ratio)


def _eval_approx(approx: str | None, method: Method, trained: bool) -> Path | None:
    """sttabt needs an explicit ApproxNet: a trained DIR or 'oracle' (never a silent default)."""
    if trained or method != Method.sttabt:
        if approx is not None:
            fail("--approx applies to --method sttabt on a dense model (a trained dir brings its own)")
        return None
    return approx_choice(approx, "oracle", "eval --method sttabt", ORACLE)


def register(app: typer.Typer) -> None:
    app.command("eval", short_help="Accuracy, retention, occupancy and FLOPs under a reducer.")(eval_cmd)
