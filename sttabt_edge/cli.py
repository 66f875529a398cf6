"""`sttabt-edge` command line. Each command is a thin shell over a tested Python function."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="STTABT token pruning for edge CPUs.")


class Method(str, Enum):
    dense = "dense"
    sttabt = "sttabt"
    topk = "topk"
    ltp = "ltp"
    tome = "tome"


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def info(model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")]) -> None:
    """Show what sttabt-edge sees in a model: family, layers, heads, prefix tokens."""
    from sttabt_edge.compat import model_parts
    from sttabt_edge.models.loading import load_model

    parts = model_parts(load_model(model))
    typer.echo(json.dumps({
        "family": parts.family, "layers": len(parts.layers), "heads": parts.num_heads,
        "hidden": parts.hidden_size, "intermediate": parts.intermediate_size,
        "num_prefix_tokens": parts.num_prefix_tokens,
    }, indent=2))


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory, timm file or alias")],
    data: Annotated[Path, typer.Option(help="image folder, or a GLUE TSV file (e.g. SST-2/dev.tsv)")],
    method: Annotated[Method, typer.Option(help="token reducer")] = Method.dense,
    keep_ratio: Annotated[float, typer.Option(help="fraction of real tokens each layer keeps")] = 0.5,
    approx: Annotated[Path | None, typer.Option(help="ApproxNet dir for sttabt (default: oracle)")] = None,
    batch_size: int = 32,
    max_samples: Annotated[int | None, typer.Option(help="evaluate only the first N examples")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
) -> None:
    """Task metric, retention and analytic FLOPs of a model under a token reducer."""
    import torch

    from sttabt_edge.data import glue_tsv, image_folder, image_preprocess_for, model_class_names
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.evaluate import evaluate
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.factory import make_reducer
    from sttabt_edge.runtime import TextPreprocess

    try:
        net = load_model(model)
        kwargs: dict = {} if method in (Method.dense, Method.ltp) else {"keep_ratio": keep_ratio}
        if method == Method.ltp:
            kwargs["num_layers"] = net.config.num_hidden_layers
        if method == Method.sttabt and approx is not None:
            from sttabt_edge.method.approxnet import ApproxNet

            kwargs["approx"] = ApproxNet.load(approx)
        reducer = make_reducer(method.value, **kwargs)
        if data.is_dir():
            examples = image_folder(data, model_class_names(model) if Path(model).is_dir() else None)
            pre = {"image": image_preprocess_for(net)}
            task = None
        else:
            examples = glue_tsv(data)
            pre = {"text": TextPreprocess.from_file(Path(model))}
            task = data.parent.name
        examples = examples[:max_samples] if max_samples else examples
        if method == Method.ltp:  # untrained LTP: thresholds set on the first batch to reach keep_ratio
            from sttabt_edge.compat import model_parts
            from sttabt_edge.data import batches

            first, _ = next(batches(examples, batch_size, **pre))
            with torch.inference_mode():
                reducer.calibrate(model_parts(net), {k: torch.from_numpy(v) for k, v in first.items()}, keep_ratio)
        with torch.inference_mode():
            res = evaluate(net, reducer, examples, batch_size=batch_size, task=task, name=method.value, **pre)
    except (SttabtError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(json.dumps(res.to_dict(), indent=2))
    if json_out:
        json_out.write_text(json.dumps(res.to_dict(), indent=2))


def _register_subcommands() -> None:
    from sttabt_edge.cli_runtime import register

    register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
