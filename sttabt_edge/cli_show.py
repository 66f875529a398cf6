"""`sttabt-edge show`: which tokens each layer keeps, as a patch-grid PNG (images) or HTML (texts)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from sttabt_edge.cli_common import (
    approx_choice,
    check_exists,
    check_fraction,
    error_line,
    fail,
    require_torch,
)
from sttabt_edge.cli_inputs import (
    check_input_kind,
    check_model,
    check_texts,
    loaded_family,
    model_family,
)
from sttabt_edge.cli_options import ORACLE
from sttabt_edge.cli_outputs import check_output_file, write_output, write_text_output


class ShowMethod(str, Enum):
    sttabt = "sttabt"
    topk = "topk"
    tome = "tome"
    ltp = "ltp"


IMAGE_SUFFIXES = (".png",)
TEXT_SUFFIXES = (".html", ".htm")


def show_cmd(
    model: Annotated[str, typer.Option(help="checkpoint directory (PyTorch)")],
    out: Annotated[Path, typer.Option(help="output .png (image) or .html (text)")],
    image: Annotated[Path | None, typer.Option(help="an image")] = None,
    text: Annotated[str | None, typer.Option(help="a text")] = None,
    method: Annotated[ShowMethod, typer.Option(help="token reducer")] = ShowMethod.sttabt,
    keep_ratio: Annotated[
        float | None,
        typer.Option(
            help="keep ratio (default per method: sttabt 0.15, topk / tome 0.5; see sttabt_edge/defaults.py)"
        ),
    ] = None,
    approx: Annotated[
        str | None,
        typer.Option(help="sttabt: ApproxNet DIR, or 'oracle' (the model's own attention: an upper bound)"),
    ] = None,
) -> None:
    """Render which tokens each layer keeps: a patch grid PNG or highlighted-text HTML."""
    from sttabt_edge.defaults import default_keep_ratio

    keep_ratio = default_keep_ratio(method.value) if keep_ratio is None else keep_ratio
    if (image is None) == (text is None):
        fail("give exactly one of --image or --text")
    check_model(model)
    check_exists("--image", image, "file")
    if text is not None:
        check_texts([text])
    check_fraction("--keep-ratio", keep_ratio)
    check_input_kind(model_family(model), image is not None, text is not None, f"--model {model}")
    approx_dir = _show_approx(approx, method)
    suffixes = IMAGE_SUFFIXES if image is not None else TEXT_SUFFIXES
    inputs = [("--model", model), ("--image", image), ("--approx", approx_dir)]
    check_output_file("--out", out, inputs, suffixes=suffixes)
    require_torch("show")
    import numpy as np
    import torch

    from sttabt_edge.data import image_preprocess_for
    from sttabt_edge.errors import SttabtError
    from sttabt_edge.export.metadata import labels
    from sttabt_edge.models.loading import load_model
    from sttabt_edge.reducers.factory import build
    from sttabt_edge.reducers.spec import ReducerOptions, spec_from_options
    from sttabt_edge.runtime import TextPreprocess
    from sttabt_edge.sparse_model import SparseClassifier
    from sttabt_edge.visualize import denormalize, layer_grid, text_html

    try:
        net = load_model(model)
        check_input_kind(loaded_family(net), image is not None, text is not None, f"--model {model}")
        spec = spec_from_options(method.value, ReducerOptions(keep_ratio=keep_ratio))
        approx_net = None
        if approx_dir is not None:
            from sttabt_edge.method.approxnet import ApproxNet

            approx_net = ApproxNet.load(approx_dir)
        sc = SparseClassifier(net, build(spec, approx_net))
        parts = sc.parts
        if image is not None:
            pre = image_preprocess_for(net)
            px = pre([image])
            with torch.no_grad():
                res = sc(pixel_values=torch.from_numpy(px))
            keep = [k[0].numpy() for k in res.keep[:-1]]
            patch = int(net.config.patch_size)
            label = labels(net)[int(res.logits.argmax())]
            grid = layer_grid(denormalize(px[0], pre.mean, pre.std), keep, patch, parts.num_prefix_tokens)
            write_output(out, lambda tmp: grid.save(tmp, format="PNG"))
        elif text is not None:  # exactly one of the two (checked above)
            tok = TextPreprocess.from_file(Path(model))
            enc = tok([text])
            with torch.no_grad():
                res = sc(**{k: torch.from_numpy(v) for k, v in enc.items()})
            tokens = [
                tok.tokenizer.id_to_token(int(i)) or "[?]" for i in enc["input_ids"][0]
            ]  # None: not in vocab
            keep = [np.asarray(k[0]) for k in res.keep[:-1]]
            label = labels(net)[int(res.logits.argmax())]
            write_text_output(
                out, text_html(tokens, keep, f"{method.value} r={keep_ratio}: predicted {label}")
            )
        typer.echo(f"predicted {label!r}; retention {float(res.retention.mean()):.3f}; wrote {out}")
    except (SttabtError, ValueError, FileNotFoundError) as e:
        fail(error_line(str(e)))


def _show_approx(approx: str | None, method: ShowMethod) -> Path | None:
    """sttabt's attention source: an ApproxNet DIR or 'oracle' (never a silent default)."""
    if method != ShowMethod.sttabt:
        return None
    return approx_choice(approx, "oracle", "show --method sttabt", ORACLE)


def register(app: typer.Typer) -> None:
    app.command("show", short_help="Which tokens each layer keeps, as a PNG or HTML page.")(show_cmd)
