"""Pictures of which tokens each layer keeps: patch grids for images, highlighted text.

Pure functions over numpy arrays and keep masks (``SparseOutput.keep``: L+1 masks over
the original token positions), so they work for any reducer.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def patch_overlay(image: np.ndarray, keep: np.ndarray, patch: int, num_prefix_tokens: int = 1) -> np.ndarray:
    """Grey out and darken the patches a layer dropped.

    image (H, W, 3) uint8 at model resolution; keep (N,) bool over prefix + patch tokens.
    """
    h, w, _ = image.shape
    gh, gw = h // patch, w // patch
    grid = keep[num_prefix_tokens:].reshape(gh, gw)  # (gh, gw)
    mask = np.kron(grid, np.ones((patch, patch), dtype=bool))[..., None]  # (H, W, 1)
    grey = image.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.35 + 40
    return np.where(mask, image, grey).astype(np.uint8)


def layer_grid(
    image: np.ndarray,
    keep: Sequence[np.ndarray],
    patch: int,
    num_prefix_tokens: int = 1,
    cols: int = 4,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """One overlay per layer in a grid PNG, each titled with its kept patch count."""
    tiles = [patch_overlay(image, k, patch, num_prefix_tokens) for k in keep]
    h, w, _ = image.shape
    rows = math.ceil(len(tiles) / cols)
    pad = 18
    canvas = Image.new("RGB", (cols * (w + 4), rows * (h + pad + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        x, y = (i % cols) * (w + 4), (i // cols) * (h + pad + 4)
        canvas.paste(Image.fromarray(tile), (x, y + pad))
        kept = int(keep[i][num_prefix_tokens:].sum())
        total = keep[i].shape[0] - num_prefix_tokens
        label = titles[i] if titles else f"layer {i}"
        draw.text((x + 2, y + 3), f"{label}: {kept}/{total}", fill="black")
    return canvas


def text_html(tokens: Sequence[str], keep: Sequence[np.ndarray], title: str = "") -> str:
    """An HTML table: one row per layer, kept tokens highlighted, dropped ones struck out."""
    rows = []
    for layer, k in enumerate(keep):
        cells = "".join(
            f'<span class="{"k" if kept else "d"}">{html.escape(tok)}</span> '
            for tok, kept in zip(tokens, k, strict=False)
        )
        rows.append(f"<tr><td>layer {layer} ({int(np.sum(k))}/{len(tokens)})</td><td>{cells}</td></tr>")
    style = (
        "body{font-family:sans-serif} td{padding:3px 8px;vertical-align:top} "
        ".k{background:#ffe08a;padding:1px 2px} .d{color:#aaa;text-decoration:line-through}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><table>{''.join(rows)}</table></body></html>"
    )


def denormalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalized float -> (H, W, 3) uint8 for display."""
    x = pixels.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
