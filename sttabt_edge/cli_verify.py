"""`sttabt-edge verify`: an exported file against the PyTorch model it came from; exit 1 beyond tolerance.

The reference side is the reference model's own: its preprocessing (image size and normalisation,
or its tokenizer), its labels and its weights; only the reducer configuration comes from the file.
So a file whose preprocessing or labels were edited after export fails, instead of agreeing with
itself. Tolerances are checked before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sttabt_edge.cli_common import (
    MAX_BATCH,
    check_at_least,
    check_exists,
    check_range,
    error_line,
    fail,
    require_torch,
)
from sttabt_edge.cli_inputs import (
    KIND,
    check_data_kind,
    check_model,
    model_family,
    predictor_family,
)
from sttabt_edge.cli_options import NoVerifyDigest
from sttabt_edge.cli_outputs import InputPath, check_output_file, with_companions, write_text_output
from sttabt_edge.cli_stderr import quiet_litert

if TYPE_CHECKING:
    from sttabt_edge.runtime import Predictor
    from sttabt_edge.verify import VerifyReport

Tolerances = tuple[float, float, float]  # max |dlogit|, min top-1 agreement, min kept-count agreement


def verify_cmd(
    model: Annotated[Path, typer.Argument(metavar="FILE", help="exported .onnx or .tflite file")],
    reference: Annotated[str, typer.Option(help="the PyTorch checkpoint it was exported from")],
    data: Annotated[Path, typer.Option(help="image folder or GLUE TSV")],
    approx: Annotated[
        Path | None, typer.Option(help="ApproxNet dir, if not recorded in the metadata")
    ] = None,
    max_samples: Annotated[int | None, typer.Option(help="first N examples only")] = None,
    batch_size: int = 16,
    max_abs_logit: Annotated[float, typer.Option(help="tolerance on |logit diff|, >= 0")] = 1e-3,
    min_top1_agreement: Annotated[float, typer.Option(help="in [0, 1]")] = 0.999,
    min_kept_agreement: Annotated[float, typer.Option(help="in [0, 1]")] = 0.99,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    no_verify_digest: NoVerifyDigest = False,
) -> None:
    """PyTorch vs exported parity on a dataset; exits 1 beyond tolerance (the CI check)."""
    check_exists("model", model, "file")
    check_model(reference)
    check_exists("--data", data)
    check_exists("--approx", approx, "dir")
    check_at_least("--batch-size", batch_size, 1, MAX_BATCH)
    check_at_least("--max-samples", max_samples, 1)
    check_range("--max-abs-logit", max_abs_logit, 0.0, 1e6)
    check_range("--min-top1-agreement", min_top1_agreement, 0.0, 1.0)
    check_range("--min-kept-agreement", min_kept_agreement, 0.0, 1.0)
    family = model_family(reference)
    check_data_kind(family, data)
    inputs: list[tuple[str, InputPath]] = [
        *with_companions("model", model),
        ("--reference", reference),
        ("--data", data),
        ("--approx", approx),
    ]
    if json_out is not None:
        check_output_file("--json", json_out, inputs)
    require_torch("verify")
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.runtime import load

    try:
        with quiet_litert():
            pred = load(model, verify_digest=not no_verify_digest)
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))
    if family is not None and predictor_family(pred) != family:
        fail(f"{model.name} is {KIND[predictor_family(pred)]} but --reference {reference} is {KIND[family]}")
    tolerance = (max_abs_logit, min_top1_agreement, min_kept_agreement)
    report = _verify(pred, reference, data, approx, max_samples, batch_size, tolerance)
    text = json.dumps(report.to_dict(), indent=2)
    typer.echo(text)
    if json_out:
        write_text_output(json_out, text)
    if not report.passed:
        typer.secho("verify FAILED: " + "; ".join(report.failures), fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.secho(f"verify passed on {report.samples} samples", fg=typer.colors.GREEN, err=True)


def _verify(
    pred: Predictor,
    reference: str,
    data: Path,
    approx: Path | None,
    max_samples: int | None,
    batch_size: int,
    tolerance: Tolerances,
) -> VerifyReport:
    """The reference model (its weights, preprocessing and labels) against ``pred`` on ``data``."""
    from sttabt_edge.data import glue_tsv, image_folder, model_class_names
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.model_info import is_trained_dir, model_files
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.sparse_model import SparseClassifier
    from sttabt_edge.train.artifacts import load_sttabt
    from sttabt_edge.verify import Tolerance, reference_preprocess, reference_reducer, verify

    try:
        if is_trained_dir(reference):  # a train concrete|baseline output: its fine-tuned model
            net = load_sttabt(reference).model
        else:
            net = load_model(reference)
        files = model_files(reference)  # synsets.json and tokenizer.json sit beside the weights
        reducer = reference_reducer(pred.metadata.raw, net, approx)
        if data.is_dir():
            examples = image_folder(data, model_class_names(files) if files.is_dir() else None)
            task = None
        else:
            examples, task = glue_tsv(data), data.parent.name
        examples = examples[:max_samples] if max_samples else examples
        local = files if files.is_dir() else None  # None: an alias or hub id
        if local is None and pred.text is not None:
            typer.secho(
                "WARNING: --reference is not a local folder, so its tokenizer.json is not at hand: texts "
                "are tokenized with the file's own tokenizer, which verify therefore does not check",
                fg="yellow",
                err=True,
            )
        pre = (
            None
            if local is None and pred.text is not None
            else reference_preprocess(net, local, pred.max_length)
        )
        return verify(
            pred,
            SparseClassifier(net, reducer),
            examples,
            batch_size,
            Tolerance(*tolerance),
            task,
            reference=pre,
        )
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))


def register(app: typer.Typer) -> None:
    app.command("verify", short_help="Check an exported file against PyTorch; exit 1 if off.")(verify_cmd)
