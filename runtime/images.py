"""Bounded image decoding for the runtime: whatever a file claims, memory and time stay bounded.

A 99-byte PNG can claim 1 x 100000 pixels, and the eval resize (shorter side to 256) would
turn it into a 256 x 25.6M image. So the header is checked before any pixel is decoded:
the size, the aspect ratio and, by the caller (:class:`ImagePreprocess`), the resized size.
16-bit images are scaled to 8 bits (Pillow's own conversion saturates them), and 32-bit
integer or float images, which have no defined intensity range, are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from sttabt_edge.errors import InputError, InputNotFoundError

if TYPE_CHECKING:  # pragma: no cover - typing only, keeps the pillow import lazy
    from PIL import Image

# Decoded pixels one image may have (Pillow holds RGB in 4 bytes a pixel: 64 MB); larger JPEGs are
# decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), anything else larger is refused.
MAX_IMAGE_PIXELS = 16_000_000
# Longer side / shorter side; beyond it the centre crop sees under 1/32 of the image.
MAX_ASPECT_RATIO = 32
# The image after "shorter side to resize_size", before the crop (a 1 x 3000 PNG would be 256 x 768000).
MAX_RESIZED_PIXELS = 16_000_000
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(
    path: str | os.PathLike[str], check: Callable[[tuple[int, int], str], None] | None = None
) -> Image.Image:
    """Open, bound (``check(size, name)`` on the header, then the pixel limit) and decode an image.

    Errors name the file: PIL decodes lazily and its own messages do not."""
    from PIL import Image

    name = os.fspath(path)
    try:
        with Image.open(path) as im:
            if check is not None:
                check(im.size, name)
            bound_pixels(im, name)
            im.load()
            return to_rgb(im, name)
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputNotFoundError(f"image file not found: {name}") from e
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: over {MAX_IMAGE_PIXELS:,} pixels ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"cannot read image {name}: not a valid or complete image ({e})") from e


def bound_pixels(im: Image.Image, name: str, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Keep the decode under ``limit`` pixels: JPEGs decode at 1/2, 1/4 or 1/8 scale, others are refused."""
    w, h = im.size
    if w * h <= limit:
        return
    scale = next((k for k in (2, 4, 8) if -(-w // k) * -(-h // k) <= limit), None)
    if im.format == "JPEG" and scale is not None:
        im.draft(im.mode, (-(-w // scale), -(-h // scale)))
        if im.size[0] * im.size[1] <= limit:
            return
    raise InputError(
        f"{name} is {w}x{h} = {w * h:,} pixels, over the {limit:,}-pixel limit; downscale it first"
    )


def to_rgb(im: Image.Image, name: str) -> Image.Image:
    """8-bit RGB. 16-bit pixels keep their top 8 bits (as Pillow does for 16-bit RGB); Pillow's own
    conversion would clip them at 255 and make a 16-bit photo all white."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG"):  # older Pillow: 16-bit PNG as "I"
        x = np.asarray(im).astype(np.int64)
        if x.min() < 0 or x.max() > 65535:
            raise InputError(f"{name}: {im.mode} pixels outside the 16-bit range")
        return Image.fromarray((x >> 8).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        raise InputError(
            f"{name}: mode {im.mode} (32-bit {'integer' if im.mode == 'I' else 'float'} pixels) has no defined "
            "0-255 range; convert it to 8-bit RGB first"
        )
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise InputError(f"{name}: cannot convert mode {im.mode} to RGB ({e})") from e
